package artifact_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/artifact"
	"github.com/plakar-oci/ocistore/host/artifact/artifacttest"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

func TestInspectModule(t *testing.T) {
	guest := host.EmbeddedGuest()

	info, err := artifact.CheckModule(guest)
	if err != nil {
		t.Fatalf("the embedded guest: %v", err)
	}
	if info.World != abi.World || info.ABIVersion != abi.Version || info.From != "exports" {
		t.Errorf("the embedded guest: %+v, want %s from its exports", info, abi.World)
	}

	stamped := artifact.AppendWorldSection(guest, abi.World)
	if info, err := artifact.CheckModule(stamped); err != nil || info.From != "custom section" || info.World != abi.World {
		t.Errorf("guest with a %s section: %+v, %v", artifact.WorldSection, info, err)
	}

	refused := map[string][]byte{
		"section disagrees with exports": artifact.AppendWorldSection(guest, "plakar:storage/plugin@9.9.9"),
		"section names another world":    artifact.AppendWorldSection(guest, "wasi:http/proxy@0.2.0"),
		"two sections": artifact.AppendWorldSection(
			artifact.AppendWorldSection(artifacttest.StubModule(abi.Version), abi.World), abi.World),
		"exports of another version": artifacttest.StubModule("9.9.9"),
		"exports of two versions": artifacttest.Module(
			"plakar:storage/store@0.1.0#open", "plakar:storage/store@0.3.0#open"),
		"no store exports": artifacttest.Module("_initialize", "cabi_realloc"),
	}
	for name, wasm := range refused {
		_, err := artifact.CheckModule(wasm)
		if !errors.Is(err, artifact.ErrABIMismatch) {
			t.Errorf("%s: %v, want ErrABIMismatch", name, err)
		}
	}
	if info, err := artifact.InspectModule(artifacttest.StubModule("9.9.9")); err != nil || info.ABIVersion != "9.9.9" {
		t.Errorf("InspectModule(stub 9.9.9) = %+v, %v", info, err)
	}
	if _, err := artifact.CheckModule(artifacttest.StubModule("9.9.9")); err == nil ||
		!strings.Contains(err.Error(), "plakar:storage/plugin@9.9.9") || !strings.Contains(err.Error(), abi.World) {
		t.Errorf("the mismatch error should name both worlds: %v", err)
	}

	notModules := map[string][]byte{
		"empty":      nil,
		"text":       []byte("#!/bin/sh\necho not wasm\n"),
		"component":  []byte("\x00asm\x0d\x00\x01\x00"),
		"truncated":  guest[:len(guest)/2],
		"bad length": append([]byte("\x00asm\x01\x00\x00\x00\x07"), 0xff, 0xff, 0xff, 0xff, 0x0f),
	}
	for name, b := range notModules {
		if _, err := artifact.InspectModule(b); !errors.Is(err, artifact.ErrNotModule) {
			t.Errorf("%s: %v, want ErrNotModule", name, err)
		}
	}
}

// TestLayout checks the artifact against the CNCF wasm layout, and that
// building it is reproducible.
func TestLayout(t *testing.T) {
	guest := host.EmbeddedGuest()
	manifest, config, digest, err := artifact.Build(guest, artifact.Options{
		Annotations: map[string]string{"org.opencontainers.image.source": "https://example.com/ocistore"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
			Size      int    `json:"size"`
		} `json:"config"`
		Layers []struct {
			MediaType   string            `json:"mediaType"`
			Digest      string            `json:"digest"`
			Size        int               `json:"size"`
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest %d %q", m.SchemaVersion, m.MediaType)
	}
	if m.Config.MediaType != "application/vnd.wasm.config.v0+json" || m.Config.Size != len(config) ||
		m.Config.Digest != artifact.ModuleDigest(config) {
		t.Errorf("config descriptor %+v", m.Config)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("%d layers", len(m.Layers))
	}
	l := m.Layers[0]
	if l.MediaType != "application/wasm" || l.Size != len(guest) || l.Digest != artifact.ModuleDigest(guest) ||
		l.Annotations["org.opencontainers.image.title"] != artifact.DefaultTitle {
		t.Errorf("layer %+v", l)
	}
	want := map[string]string{
		"org.opencontainers.image.title":    artifact.DefaultTitle,
		"org.opencontainers.image.source":   "https://example.com/ocistore",
		"com.github.plakar-oci.wit-world":   abi.World,
		"com.github.plakar-oci.abi-version": abi.Version,
	}
	for k, v := range want {
		if m.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, m.Annotations[k], v)
		}
	}
	var c map[string]any
	if err := json.Unmarshal(config, &c); err != nil {
		t.Fatal(err)
	}
	if c["architecture"] != "wasm" || c["os"] != "wasip1" || c["created"] != "1970-01-01T00:00:00Z" {
		t.Errorf("config %s", config)
	}
	if ld, _ := c["layerDigests"].([]any); len(ld) != 1 || ld[0] != l.Digest {
		t.Errorf("config layerDigests %v, want [%s]", c["layerDigests"], l.Digest)
	}

	_, _, again, err := artifact.Build(bytes.Clone(guest), artifact.Options{
		Annotations: map[string]string{"org.opencontainers.image.source": "https://example.com/ocistore"},
	})
	if err != nil || again != digest {
		t.Errorf("building twice: %s then %s (%v)", digest, again, err)
	}

	if _, _, _, err := artifact.Build(guest, artifact.Options{Annotations: map[string]string{artifact.AnnotationABIVersion: abi.Version}}); err == nil {
		t.Error("an ABI version annotation set by hand was accepted")
	}
	if _, _, _, err := artifact.Build([]byte("not wasm"), artifact.Options{}); !errors.Is(err, artifact.ErrNotModule) {
		t.Errorf("building from bytes that are not wasm: %v", err)
	}
}

func TestPushPull(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	ctx := context.Background()
	guest := host.EmbeddedGuest()
	repo := reg.Host + "/plugins/ocistore"

	digest, err := artifact.Push(ctx, repo+":v1", guest, artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, _, built, _ := artifact.Build(guest, artifact.Options{})
	if digest != built {
		t.Errorf("pushed %s, Build says %s", digest, built)
	}

	// What the registry serves is the artifact, with the OCI media type.
	req, _ := http.NewRequest(http.MethodGet, reg.URL+"/v2/plugins/ocistore/manifests/"+digest, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" ||
		!strings.Contains(string(body), `"application/vnd.wasm.config.v0+json"`) {
		t.Fatalf("GET manifest: %s %s\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}

	a, err := artifact.Pull(ctx, repo+"@"+digest, artifact.Options{RequireABI: abi.Version})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Module, guest) || a.Digest != digest || a.Ref != repo+"@"+digest ||
		a.World != abi.World || a.ABIVersion != abi.Version || a.Title != artifact.DefaultTitle {
		t.Errorf("pulled %s %s %s %s %s (%d bytes)", a.Ref, a.Digest, a.World, a.ABIVersion, a.Title, len(a.Module))
	}

	// A tag is followed only when allowed.
	if _, err := artifact.Pull(ctx, repo+":v1", artifact.Options{}); !errors.Is(err, artifact.ErrNotPinned) {
		t.Errorf("pull by tag: %v, want ErrNotPinned", err)
	}
	if a, err := artifact.Pull(ctx, "oci://"+repo+":v1", artifact.Options{AllowTag: true}); err != nil || a.Digest != digest {
		t.Errorf("pull by tag, allowed: %v", err)
	}
	if _, err := artifact.Pull(ctx, repo, artifact.Options{AllowTag: true}); err == nil {
		t.Error("a reference with neither tag nor digest was accepted")
	}

	// Inspect reads the manifest and config, not the module.
	a, err = artifact.Inspect(ctx, repo+":v1", artifact.Options{})
	if err != nil || a.Module != nil || a.ModuleDigest != artifact.ModuleDigest(guest) || a.ModuleSize != int64(len(guest)) {
		t.Errorf("inspect: %+v, %v", a, err)
	}

	// Another ABI version is refused before the module is downloaded.
	stubDigest, err := artifact.Push(ctx, repo+":stub", artifacttest.StubModule("9.9.9"), artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.Pull(ctx, repo+"@"+stubDigest, artifact.Options{RequireABI: abi.Version}); !errors.Is(err, artifact.ErrABIMismatch) {
		t.Errorf("pulling a 9.9.9 plugin: %v, want ErrABIMismatch", err)
	}
	if a, err := artifact.Inspect(ctx, repo+"@"+stubDigest, artifact.Options{}); err != nil || a.ABIVersion != "9.9.9" {
		t.Errorf("inspecting a 9.9.9 plugin: %v", err)
	}

	// A digest that names another artifact is refused by Push.
	if _, err := artifact.Push(ctx, repo+"@"+stubDigest, guest, artifact.Options{}); err == nil {
		t.Error("pushing under another artifact's digest was accepted")
	}

	// With TLS required, the plain HTTP registry is not used.
	useTLS := true
	if _, err := artifact.Pull(ctx, repo+"@"+digest, artifact.Options{UseTLS: &useTLS}); err == nil {
		t.Error("a pull over TLS from a plain HTTP registry succeeded")
	}
}

// TestTampered changes the bytes the registry stores behind a digest: the
// module's blob, then the manifest's. Pull refuses both.
func TestTampered(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	ctx := context.Background()
	guest := host.EmbeddedGuest()
	repo := reg.Host + "/plugins/tampered"
	digest, err := artifact.Push(ctx, repo+":v1", guest, artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := repo + "@" + digest

	// A module of the same size with one byte changed: the registry serves
	// it under the old digest.
	blob := blobPath(t, reg, artifact.ModuleDigest(guest))
	tampered := bytes.Clone(guest)
	tampered[len(tampered)/2] ^= 0xff
	if err := os.WriteFile(blob, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.Pull(ctx, ref, artifact.Options{}); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("pull of a tampered module: %v, want ErrDigestMismatch", err)
	}
	if err := os.WriteFile(blob, guest, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.Pull(ctx, ref, artifact.Options{}); err != nil {
		t.Fatalf("pull after repair: %v", err)
	}

	// A manifest that claims another ABI version, stored under the
	// original digest.
	manifestBlob := blobPath(t, reg, digest)
	raw, err := os.ReadFile(manifestBlob)
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.Replace(raw, []byte(`"`+abi.Version+`"`), []byte(`"9.9.9"`), 1)
	if bytes.Equal(forged, raw) {
		t.Fatalf("no ABI version in %s", raw)
	}
	if err := os.WriteFile(manifestBlob, forged, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.Pull(ctx, ref, artifact.Options{}); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("pull of a forged manifest: %v, want ErrDigestMismatch", err)
	}
}

// blobPath is where distribution's filesystem driver keeps a blob.
func blobPath(t *testing.T, reg *registrytest.Registry, digest string) string {
	t.Helper()
	hex := strings.TrimPrefix(digest, "sha256:")
	p := filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("blob %s: %v", digest, err)
	}
	return p
}

func TestCache(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	ctx := context.Background()
	guest := host.EmbeddedGuest()
	ref := reg.Host + "/plugins/cached:v1"
	digest, err := artifact.Push(ctx, ref, guest, artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := artifact.Pull(ctx, reg.Host+"/plugins/cached@"+digest, artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cache := artifact.Cache{Dir: t.TempDir()}

	if _, err := cache.Get(digest, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("get before put: %v, want fs.ErrNotExist", err)
	}
	if err := cache.Put(a); err != nil {
		t.Fatal(err)
	}
	if err := cache.Put(a); err != nil {
		t.Errorf("putting twice: %v", err)
	}
	got, err := cache.Get(digest, abi.Version)
	if err != nil || !bytes.Equal(got.Module, guest) || got.Digest != digest {
		t.Fatalf("get: %v", err)
	}
	if _, err := cache.Get(digest, "9.9.9"); !errors.Is(err, artifact.ErrABIMismatch) {
		t.Errorf("get requiring 9.9.9: %v", err)
	}
	if _, err := cache.Get("sha256:../../etc", ""); err == nil {
		t.Error("a malformed digest was accepted")
	}

	// A corrupted module is refused and removed.
	hex := strings.TrimPrefix(digest, "sha256:")
	module := filepath.Join(cache.Dir, "sha256", hex, "module.wasm")
	corrupted := bytes.Clone(guest)
	corrupted[100] ^= 1
	if err := os.WriteFile(module, corrupted, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Get(digest, ""); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("get of a corrupted entry: %v, want ErrDigestMismatch", err)
	}
	if _, err := os.Stat(filepath.Dir(module)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the corrupted entry is still there: %v", err)
	}
	if _, err := cache.Get(digest, ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("get after removal: %v, want fs.ErrNotExist", err)
	}
}
