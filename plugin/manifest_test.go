package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
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

// TestSchema checks that schema.json declares keys the store accepts, with
// location required.
func TestSchema(t *testing.T) {
	b, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Required             []string                   `json:"required"`
		AdditionalProperties bool                       `json:"additionalProperties"`
		Properties           map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Required, []string{"location"}) || s.AdditionalProperties {
		t.Errorf("required %q, additionalProperties %v", s.Required, s.AdditionalProperties)
	}
	values := map[string]map[string]string{
		"username":               {"username": "u", "password": "p"},
		"password":               {"username": "u", "password": "p"},
		"use_tls":                {"use_tls": "true"},
		"tls_insecure_no_verify": {"tls_insecure_no_verify": "false"},
		"concurrency":            {"concurrency": "4"},
		"readahead_cache_size":   {"readahead_cache_size": "1GiB"},
	}
	for key := range s.Properties {
		if key == host.PluginKey {
			continue // read by host.New, not by the store's parser
		}
		config := map[string]string{"location": "oci://127.0.0.1:5000/schema/test"}
		if v, ok := values[key]; ok {
			for k, v := range v {
				config[k] = v
			}
		} else if key != "location" {
			config[key] = "value"
		}
		if _, err := host.ParseConfig(config); err != nil && strings.Contains(err.Error(), key) && strings.Contains(err.Error(), "unknown") {
			t.Errorf("schema key %s is unknown to the store: %v", key, err)
		}
	}
	for _, key := range []string{"location", "username", "password", "use_tls", "tls_insecure_no_verify", "ca_file", "repository_prefix", "concurrency", "plugin", "readahead_cache_size", "readahead_cache_dir"} {
		if _, ok := s.Properties[key]; !ok {
			t.Errorf("schema.json does not describe %s", key)
		}
	}
}
