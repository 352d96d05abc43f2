package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/artifact"
	"github.com/plakar-oci/ocistore/host/artifact/artifacttest"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

func ociplugin(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

var pinned = regexp.MustCompile(`^(\S+)@(sha256:[0-9a-f]{64})\n$`)

func TestPushPullInspect(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{})
	repo := reg.Host + "/plugins/ociplugin"
	dir := t.TempDir()

	code, out, errOut := ociplugin(t, "", "push", "-annotation", "org.opencontainers.image.version=0.1.0", repo+":v1")
	if code != 0 {
		t.Fatalf("push: %d %s", code, errOut)
	}
	m := pinned.FindStringSubmatch(out)
	if m == nil || m[1] != repo {
		t.Fatalf("push printed %q, want %s@sha256:…", out, repo)
	}
	ref, digest := strings.TrimSpace(out), m[2]
	_, _, built, _ := artifact.Build(host.EmbeddedGuest(), artifact.Options{
		Annotations: map[string]string{"org.opencontainers.image.version": "0.1.0"},
	})
	if digest != built {
		t.Errorf("push printed %s, the artifact is %s", digest, built)
	}

	file := filepath.Join(dir, "guest.wasm")
	if code, out, errOut := ociplugin(t, "", "pull", "-o", file, ref); code != 0 || out != ref+"\n" {
		t.Fatalf("pull: %d %q %s", code, out, errOut)
	}
	if b, err := os.ReadFile(file); err != nil || !bytes.Equal(b, host.EmbeddedGuest()) {
		t.Errorf("the pulled module differs from the embedded guest (%v)", err)
	}

	// Tags need -allow-tag.
	if code, _, errOut := ociplugin(t, "", "pull", "-o", file, repo+":v1"); code != 1 || !strings.Contains(errOut, "not pinned by digest") {
		t.Errorf("pull by tag: %d %s", code, errOut)
	}
	if code, out, errOut := ociplugin(t, "", "pull", "-allow-tag", "-o", file, repo+":v1"); code != 0 || out != ref+"\n" {
		t.Errorf("pull -allow-tag: %d %q %s", code, out, errOut)
	}

	code, out, errOut = ociplugin(t, "", "inspect", repo+":v1")
	if code != 0 {
		t.Fatalf("inspect: %d %s", code, errOut)
	}
	for _, want := range []string{
		"digest:      " + digest,
		"world:       " + abi.World,
		"abi version: " + abi.Version,
		"compatible:  yes",
		"annotation:  org.opencontainers.image.version=0.1.0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect does not say %q:\n%s", want, out)
		}
	}
	code, out, errOut = ociplugin(t, "", "inspect", "-json", ref)
	var doc struct {
		Digest   string         `json:"digest"`
		Manifest map[string]any `json:"manifest"`
		Config   map[string]any `json:"config"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || doc.Digest != digest || doc.Config["architecture"] != "wasm" {
		t.Errorf("inspect -json: %d %s %s", code, out, errOut)
	}

	// A module of another ABI version: pushed from a file, flagged by
	// inspect, refused by pull unless -any-abi.
	stub := filepath.Join(dir, "v9.wasm")
	if err := os.WriteFile(stub, artifacttest.StubModule("9.9.9"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = ociplugin(t, "", "push", "-module", stub, "-title", "v9.wasm", repo+":v9")
	if code != 0 {
		t.Fatalf("push -module: %d %s", code, errOut)
	}
	v9 := strings.TrimSpace(out)
	if _, out, _ := ociplugin(t, "", "inspect", v9); !strings.Contains(out, "compatible:  no") || !strings.Contains(out, "v9.wasm") {
		t.Errorf("inspect of a 9.9.9 plugin:\n%s", out)
	}
	if code, _, errOut := ociplugin(t, "", "pull", "-o", file, v9); code != 1 || !strings.Contains(errOut, "ABI version mismatch") {
		t.Errorf("pull of a 9.9.9 plugin: %d %s", code, errOut)
	}
	if code, _, errOut := ociplugin(t, "", "pull", "-any-abi", "-o", file, v9); code != 0 {
		t.Errorf("pull -any-abi: %d %s", code, errOut)
	}

	// Usage errors.
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"push"},
		{"pull", ref},
		{"push", "-use-tls", "maybe", repo + ":v1"},
	} {
		if code, _, _ := ociplugin(t, "", args...); code == 0 {
			t.Errorf("ociplugin %q succeeded", args)
		}
	}
	// Plain HTTP is not used when TLS is asked for.
	if code, _, _ := ociplugin(t, "", "inspect", "-use-tls", "true", ref); code != 1 {
		t.Errorf("inspect over TLS of a plain HTTP registry: %d", code)
	}
}

func TestRepository(t *testing.T) {
	for ref, want := range map[string]string{
		"127.0.0.1:5000/a/b:v1":           "127.0.0.1:5000/a/b",
		"127.0.0.1:5000/a/b@sha256:00":    "127.0.0.1:5000/a/b",
		"oci://registry.example.com/a/b":  "registry.example.com/a/b",
		"registry.example.com:443/a/b:v2": "registry.example.com:443/a/b",
	} {
		if got := repository(ref); got != want {
			t.Errorf("repository(%q) = %q, want %q", ref, got, want)
		}
	}
}
