package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/plakar-oci/ocistore/host"
)

// TestManifest checks manifest.yaml against what Plakar's package loader
// reads (PlakarKorp/pkg's Manifest) and its validator requires.
func TestManifest(t *testing.T) {
	b, err := os.ReadFile("manifest.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Name        string   `yaml:"name"`
		DisplayName string   `yaml:"display_name"`
		Description string   `yaml:"description"`
		Homepage    string   `yaml:"homepage"`
		License     string   `yaml:"license"`
		Tags        []string `yaml:"tags"`
		APIVersion  string   `yaml:"api_version"`
		Connectors  []struct {
			Type       string   `yaml:"type"`
			Class      string   `yaml:"class"`
			Validator  string   `yaml:"validator"`
			Protocols  []string `yaml:"protocols"`
			Executable string   `yaml:"executable"`
		} `yaml:"connectors"`
	}
	if err := yaml.UnmarshalStrict(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Name == "" || m.DisplayName == "" || m.Description == "" {
		t.Errorf("name, display_name and description are required: %+v", m)
	}
	// plakar reads the major version: v1 is the gRPC protocol of
	// go-kloset-sdk v1 and integration-grpc v1.
	if !strings.HasPrefix(m.APIVersion, "v1.") {
		t.Errorf("api_version %q, want v1.x", m.APIVersion)
	}
	if len(m.Connectors) != 1 {
		t.Fatalf("%d connectors", len(m.Connectors))
	}
	c := m.Connectors[0]
	if c.Type != "storage" || !slices.Equal(c.Protocols, []string{"oci"}) || c.Executable != "ocistore-storage" {
		t.Errorf("connector %+v", c)
	}
	if !filepath.IsLocal(c.Validator) {
		t.Errorf("validator %q must be inside the package", c.Validator)
	}
	if _, err := os.Stat(c.Validator); err != nil {
		t.Errorf("validator: %v", err)
	}
}

// TestSchema checks schema.json against the store's own validation,
// which is what Plakar users meet (Plakar v1.1.4 does not validate against
// the schema): the same keys, each with a type and a description; each
// default the one the store applies; and a bad value of each type refused
// with an error that names the key and what the schema allows.
func TestSchema(t *testing.T) {
	b, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	type property struct {
		Type        string          `json:"type"`
		Description string          `json:"description"`
		Default     json.RawMessage `json:"default"`
		Minimum     *int            `json:"minimum"`
		Maximum     *int            `json:"maximum"`
		Pattern     string          `json:"pattern"`
	}
	var s struct {
		Required             []string            `json:"required"`
		AdditionalProperties bool                `json:"additionalProperties"`
		Properties           map[string]property `json:"properties"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Required, []string{"location"}) || s.AdditionalProperties {
		t.Errorf("required %q, additionalProperties %v", s.Required, s.AdditionalProperties)
	}
	keys := slices.Sorted(maps.Keys(s.Properties))
	if !slices.Equal(keys, host.ConfigKeys()) {
		t.Fatalf("schema.json describes %q; the store accepts %q", keys, host.ConfigKeys())
	}

	// A location on a remote registry: use_tls defaults to true there, as
	// the schema says.
	base := map[string]string{"location": "oci://registry.example.com/schema/test"}
	with := func(kv ...string) map[string]string {
		c := maps.Clone(base)
		for i := 0; i+1 < len(kv); i += 2 {
			c[kv[i]] = kv[i+1]
		}
		return c
	}
	plain, err := host.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range keys {
		p := s.Properties[key]
		if p.Type == "" || len(p.Description) < 20 {
			t.Errorf("%s: type %q, description %q: both are required", key, p.Type, p.Description)
		}
		if p.Default != nil && key != host.PluginKey { // plugin is read by host.New
			var def any
			if err := json.Unmarshal(p.Default, &def); err != nil {
				t.Fatalf("%s: default %s: %v", key, p.Default, err)
			}
			c, err := host.ParseConfig(with(key, fmt.Sprint(def)))
			if err != nil {
				t.Errorf("%s=%v, the schema's default, is refused: %v", key, def, err)
			} else if c.String() != plain.String() {
				t.Errorf("%s=%v, the schema's default, differs from the store's: %v, want %v", key, def, c, plain)
			}
		}
		var bad []string
		var allowed string
		switch {
		case p.Type == "boolean":
			bad, allowed = []string{"yes", "2"}, "true or false"
		case p.Type == "integer":
			if p.Minimum == nil || p.Maximum == nil {
				t.Errorf("%s: an integer without minimum and maximum", key)
				continue
			}
			bad = []string{"many", strconv.Itoa(*p.Minimum - 1), strconv.Itoa(*p.Maximum + 1)}
			allowed = fmt.Sprintf("%d to %d", *p.Minimum, *p.Maximum)
		case strings.HasSuffix(key, "_timeout"):
			var def string
			json.Unmarshal(p.Default, &def)
			if p.Pattern == "" || !regexp.MustCompile(p.Pattern).MatchString(def) {
				t.Errorf("%s: pattern %q does not match its default %s", key, p.Pattern, p.Default)
			}
			bad, allowed = []string{"soon", "0s", "-5s"}, "duration"
		}
		for _, v := range bad {
			_, err := host.ParseConfig(with(key, v))
			if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), allowed) {
				t.Errorf("%s=%s: %v; want an error naming %s and saying %q", key, v, err, key, allowed)
			}
		}
	}
	_, err = host.ParseConfig(with("passwd", "x"))
	if err == nil || !strings.Contains(err.Error(), "passwd") || !strings.Contains(err.Error(), "password") {
		t.Errorf("an unknown key: %v; want an error naming it and the keys the store knows", err)
	}
}
