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

// schemaProperty is what the tests read of a key in schema.json.
type schemaProperty struct {
	Type        string          `json:"type"`
	Description string          `json:"description"`
	Default     json.RawMessage `json:"default"`
	Minimum     *int            `json:"minimum"`
	Maximum     *int            `json:"maximum"`
	Pattern     string          `json:"pattern"`
}

// schemaConditional is an if or an else of schema.json.
type schemaConditional struct {
	Required   []string                  `json:"required"`
	Properties map[string]schemaProperty `json:"properties"`
}

type schema struct {
	Required             []string                  `json:"required"`
	AdditionalProperties bool                      `json:"additionalProperties"`
	Properties           map[string]schemaProperty `json:"properties"`
	If                   schemaConditional         `json:"if"`
	Else                 schemaConditional         `json:"else"`
}

func readSchema(t *testing.T) schema {
	t.Helper()
	b, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSchema checks schema.json against the store's own validation,
// which is what Plakar users meet (Plakar v1.1.4 does not validate against
// the schema): the same keys, each with a type and a description; each
// default the one the store applies; and a bad value of each type refused
// with an error that names the key and what the schema allows.
func TestSchema(t *testing.T) {
	s := readSchema(t)
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
	// A store configuration made for Plakar's upstream oci plugin.
	_, err = host.ParseConfig(with("insecure", "true"))
	if err == nil || !strings.Contains(err.Error(), "insecure") || !strings.Contains(err.Error(), "use_tls=false") {
		t.Errorf("the upstream plugin's insecure key: %v; want an error saying to use use_tls=false", err)
	}
}

// TestSchemaValues holds schema.json's patterns to what the store accepts,
// value by value: a value the schema allows is accepted, one it refuses is
// refused with an error naming the key. The few limits a pattern does not
// carry (ranges, lengths) are refused by the store and stated in the
// key's description. A location's path may be left out only with a
// repository_prefix: the schema's if/else says so.
func TestSchemaValues(t *testing.T) {
	s := readSchema(t)
	pattern := func(p schemaProperty) *regexp.Regexp {
		if p.Pattern == "" {
			return nil
		}
		return regexp.MustCompile(p.Pattern)
	}
	// allows is the schema's verdict on config.
	allows := func(config map[string]string) bool {
		for k, v := range config {
			if re := pattern(s.Properties[k]); re != nil && !re.MatchString(v) {
				return false
			}
		}
		cond := len(s.If.Required) > 0
		for _, k := range s.If.Required {
			v, ok := config[k]
			cond = cond && ok && (pattern(s.If.Properties[k]) == nil || pattern(s.If.Properties[k]).MatchString(v))
		}
		if !cond {
			for k, p := range s.Else.Properties {
				if v, ok := config[k]; ok && !pattern(p).MatchString(v) {
					return false
				}
			}
		}
		return true
	}

	const base = "oci://registry.example.com/schema/test"
	tests := []struct {
		key, prefix string
		accepted    []string
		refused     []string
		// described: refused by the store, allowed by the pattern, and
		// the description says why (value: a phrase of it).
		described map[string]string
	}{
		{key: "location",
			accepted: []string{base, "oci://reg/a", "oci://reg:5000/a/b", "oci://[::1]:5000/a", "oci://127.0.0.1/a",
				"oci://reg/a__b/c.d-e---f", "oci://reg//a/", "OCI://reg/a", "oci://Reg.Example.com/a"},
			refused: []string{"oci://reg", "oci://reg/", "oci://reg/My", "oci://reg/team/Backups", "oci://reg/a..b",
				"oci://reg/a___b", "oci://reg/a//b", "oci://reg/a b", "oci://reg/-a", "oci://reg/a?x=1", "oci://reg/a#f",
				"oci://u:p@reg/a", "http://reg/a", "reg/a", "oci:///a", "oci://reg:0/a", "oci://reg:/a", "oci://reg:http/a",
				"oci://::1/a", "oci://[::1/a", "oci://re_g/a", "oci://-reg/a", "oci://reg./a"},
			described: map[string]string{
				"oci://reg:65536/a":                       "65535",
				"oci://reg/" + strings.Repeat("a", 252):   "255",
				"oci://" + strings.Repeat("r", 64) + "/a": "63",
			}},
		{key: "location", prefix: "team",
			accepted: []string{"oci://reg", "oci://reg/", "oci://reg/x"},
			refused:  []string{"oci://reg/X", "oci://reg/a//b"}},
		{key: "repository_prefix",
			accepted: []string{"team", "/team/", "a/b-c", ""},
			refused:  []string{"Team", "a//b", "a b", "-a", "a..b"}},
		{key: "idle_timeout",
			accepted:  []string{"30s", "1m", "1m30s", "1.5s", "500ms", "+5s", ".5s", "5.s", "1us", "1µs", "1μs"},
			refused:   []string{"soon", "5", "-5s", "5 s", "s", "5d", "1h-5m"},
			described: map[string]string{"0s": "above 0", "25h": "24h"}},
		{key: "stall_timeout",
			accepted:  []string{"90s", "2m", "+100s", "100.s", "24h"},
			refused:   []string{"soon", "-5s", "5 s", "90"},
			described: map[string]string{"25h": "24h", "10s": "idle_timeout"}},
		{key: "readahead_cache_size",
			accepted:  []string{"0", "100", "100B", "64 KiB", "512MiB", "4GiB", "1TiB"},
			refused:   []string{"4GB", "4gib", "4 ", " 4", "+4GiB", "-1", "-0", "4.5GiB", "4  GiB", "4\tGiB", "GiB", "lots"},
			described: map[string]string{"99999999999TiB": "4 EiB"}},
	}
	for _, tt := range tests {
		config := func(v string) map[string]string {
			c := map[string]string{"location": base}
			if tt.prefix != "" {
				c["repository_prefix"] = tt.prefix
			}
			c[tt.key] = v
			return c
		}
		for _, v := range tt.accepted {
			if !allows(config(v)) {
				t.Errorf("%s=%q (prefix %q): the schema refuses it, the store accepts it", tt.key, v, tt.prefix)
			}
			if _, err := host.ParseConfig(config(v)); err != nil {
				t.Errorf("%s=%q (prefix %q): %v", tt.key, v, tt.prefix, err)
			}
		}
		for _, v := range tt.refused {
			if allows(config(v)) {
				t.Errorf("%s=%q (prefix %q): the schema allows it, the store refuses it", tt.key, v, tt.prefix)
			}
			if _, err := host.ParseConfig(config(v)); err == nil || !strings.Contains(err.Error(), tt.key) && !strings.Contains(err.Error(), "location") {
				t.Errorf("%s=%q (prefix %q): %v; want it refused, naming the key", tt.key, v, tt.prefix, err)
			}
		}
		for v, phrase := range tt.described {
			if !allows(config(v)) {
				t.Errorf("%s=%q: listed as a limit the pattern does not carry, yet it refuses it", tt.key, v)
			}
			if _, err := host.ParseConfig(config(v)); err == nil {
				t.Errorf("%s=%q: accepted", tt.key, v)
			}
			if !strings.Contains(s.Properties[tt.key].Description, phrase) {
				t.Errorf("%s: the description does not say %q, the limit that refuses %q", tt.key, phrase, v)
			}
		}
	}
}
