package host_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/artifact"
	"github.com/plakar-oci/ocistore/host/artifact/artifacttest"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

func TestParseSource(t *testing.T) {
	for src, want := range map[string]struct {
		kind  host.SourceKind
		value string
	}{
		"":                                 {host.SourceKindEmbedded, ""},
		"embedded":                         {host.SourceKindEmbedded, ""},
		"/opt/ocistore/guest.wasm":         {host.SourceKindFile, "/opt/ocistore/guest.wasm"},
		"./build/guest.wasm":               {host.SourceKindFile, "./build/guest.wasm"},
		"../guest.bin":                     {host.SourceKindFile, "../guest.bin"},
		"guest.wasm":                       {host.SourceKindFile, "guest.wasm"},
		"file:relative/module":             {host.SourceKindFile, "relative/module"},
		"ghcr.io/org/ocistore@sha256:abcd": {host.SourceKindRef, "ghcr.io/org/ocistore@sha256:abcd"},
		"oci://127.0.0.1:5000/p/x:v1":      {host.SourceKindRef, "127.0.0.1:5000/p/x:v1"},
		"registry.example.com/p/x.wasm:v1": {host.SourceKindRef, "registry.example.com/p/x.wasm:v1"},
	} {
		kind, value := host.ParseSource(src)
		if kind != want.kind || value != want.value {
			t.Errorf("ParseSource(%q) = %v, %q; want %v, %q", src, kind, value, want.kind, want.value)
		}
	}
}

func TestLoadFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := host.Options{CacheDir: filepath.Join(dir, "cache")}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	p, err := host.LoadFile(ctx, write("guest.wasm", host.EmbeddedGuest()), opts)
	if err != nil {
		t.Fatal(err)
	}
	p.Close(ctx)

	// The compiled code went to <cache>/wazero-<version>, the version
	// go.mod requires.
	gomod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`github.com/tetratelabs/wazero (v\S+)`).FindSubmatch(gomod)
	if m == nil || host.WazeroVersion() != string(m[1]) {
		t.Fatalf("WazeroVersion() = %s, go.mod requires %s", host.WazeroVersion(), m)
	}
	entries, err := os.ReadDir(filepath.Join(opts.CacheDir, "wazero-"+host.WazeroVersion()))
	if err != nil || len(entries) == 0 {
		t.Errorf("no compiled code in the cache: %v", err)
	}

	refused := []struct {
		name, file string
		is         error
		says       string
	}{
		{"another ABI version", write("v9.wasm", artifacttest.StubModule("9.9.9")), artifact.ErrABIMismatch, "plakar:storage/plugin@9.9.9"},
		{"a section that contradicts the exports",
			write("lying.wasm", artifact.AppendWorldSection(host.EmbeddedGuest(), "plakar:storage/plugin@0.1.0")),
			artifact.ErrABIMismatch, "custom section"},
		{"not wasm", write("script.wasm", []byte("#!/bin/sh\n")), artifact.ErrNotModule, "script.wasm"},
		{"missing", filepath.Join(dir, "missing.wasm"), os.ErrNotExist, "missing.wasm"},
	}
	for _, c := range refused {
		_, err := host.LoadFile(ctx, c.file, opts)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v; want %v, saying %q", c.name, err, c.is, c.says)
		}
	}

	// The right version, but an export is missing: Load's check refuses it.
	_, err = host.LoadFile(ctx, write("noget.wasm", artifacttest.StubModule(abi.Version, abi.ExportGet)), opts)
	if err == nil || !strings.Contains(err.Error(), abi.ExportGet) {
		t.Errorf("a module without %s: %v", abi.ExportGet, err)
	}

	// "off" keeps nothing on disk.
	off := t.TempDir()
	t.Setenv(host.EnvCacheDir, off)
	p, err = host.Load(ctx, artifacttest.StubModule(abi.Version), host.Options{CacheDir: "off"})
	if err != nil {
		t.Fatal(err)
	}
	p.Close(ctx)
	if entries, _ := os.ReadDir(off); len(entries) != 0 {
		t.Errorf("CacheDir off wrote %d entries", len(entries))
	}
}

// TestLoadRef pushes the guest to a real registry and loads it by digest:
// then from the cache with the registry stopped, and refuses tags,
// tampered modules and plugins of another ABI.
func TestLoadRef(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	guest := host.EmbeddedGuest()
	repo := reg.Host + "/plugins/ocistore"
	digest, err := artifact.Push(ctx, repo+":v1", guest, artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := repo + "@" + digest
	opts := host.RefOptions{Options: host.Options{CacheDir: t.TempDir()}}

	m, err := host.FetchRef(ctx, ref, opts)
	if err != nil || m.FromCache || !bytes.Equal(m.Module, guest) {
		t.Fatalf("first fetch: %v (from cache: %v)", err, m != nil && m.FromCache)
	}
	p, err := host.LoadRef(ctx, ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	p.Close(ctx)

	// With the registry down, the pinned module loads from the cache.
	if err := reg.Stop(); err != nil {
		t.Fatal(err)
	}
	m, err = host.FetchRef(ctx, "oci://"+ref, opts)
	if err != nil || !m.FromCache || m.Digest != digest || m.Ref != ref {
		t.Fatalf("fetch with the registry down: %v", err)
	}
	p, err = host.LoadRef(ctx, ref, opts)
	if err != nil {
		t.Fatalf("load with the registry down: %v", err)
	}
	p.Close(ctx)
	if _, err := host.LoadRef(ctx, ref, host.RefOptions{Options: host.Options{CacheDir: t.TempDir()}}); err == nil {
		t.Error("a load with an empty cache and the registry down succeeded")
	}
	if err := reg.Restart(); err != nil {
		t.Fatal(err)
	}

	// Tags only when allowed.
	if _, err := host.LoadRef(ctx, repo+":v1", opts); !errors.Is(err, artifact.ErrNotPinned) || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("load by tag: %v, want ErrNotPinned", err)
	}
	tagged := opts
	tagged.Registry.AllowTag = true
	if m, err := host.FetchRef(ctx, repo+":v1", tagged); err != nil || m.Digest != digest {
		t.Errorf("fetch by tag, allowed: %v", err)
	}

	// Another ABI version is refused, and not cached.
	stub, err := artifact.Push(ctx, repo+":v9", artifacttest.StubModule("9.9.9"), artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = host.LoadRef(ctx, repo+"@"+stub, opts)
	if !errors.Is(err, artifact.ErrABIMismatch) || !strings.Contains(err.Error(), "9.9.9") {
		t.Errorf("load of a 9.9.9 plugin: %v, want ErrABIMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(opts.CacheDir, "modules", "sha256", strings.TrimPrefix(stub, "sha256:"))); err == nil {
		t.Error("the 9.9.9 plugin was cached")
	}

	// The right version without all the exports: refused when compiled.
	noGet, err := artifact.Push(ctx, repo+":noget", artifacttest.StubModule(abi.Version, abi.ExportGet), artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.LoadRef(ctx, repo+"@"+noGet, opts); err == nil || !strings.Contains(err.Error(), abi.ExportGet) {
		t.Errorf("load of a plugin without %s: %v", abi.ExportGet, err)
	}

	// A tampered module on the registry is refused; a corrupted cache
	// entry is replaced by a verified download.
	blob := registryBlob(t, reg, artifact.ModuleDigest(guest))
	tampered := bytes.Clone(guest)
	tampered[len(tampered)/3] ^= 0x55
	if err := os.WriteFile(blob, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := host.RefOptions{Options: host.Options{CacheDir: t.TempDir()}}
	if _, err := host.LoadRef(ctx, ref, fresh); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("load of a tampered module: %v, want ErrDigestMismatch", err)
	}
	if err := os.WriteFile(blob, guest, 0o644); err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(opts.CacheDir, "modules", "sha256", strings.TrimPrefix(digest, "sha256:"), "module.wasm")
	if err := os.WriteFile(cached, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err = host.FetchRef(ctx, ref, opts)
	if err != nil || m.FromCache || !bytes.Equal(m.Module, guest) {
		t.Errorf("fetch over a corrupted cache entry: %v", err)
	}
	if m, err := host.FetchRef(ctx, ref, opts); err != nil || !m.FromCache {
		t.Errorf("the repaired entry is not used: %v", err)
	}
}

// TestStorePluginKey runs a store whose module comes from the store's own
// registry, through the plugin configuration key.
func TestStorePluginKey(t *testing.T) {
	ctx := context.Background()
	t.Setenv(host.EnvCacheDir, t.TempDir())
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	repo := reg.Host + "/plugins/keyed"
	digest, err := artifact.Push(ctx, repo+":v1", host.EmbeddedGuest(), artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	config := map[string]string{
		"location":     "oci://" + reg.Host + "/stores/keyed",
		host.PluginKey: repo + "@" + digest,
	}
	st, err := host.New(ctx, "oci", config)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(ctx)
	if err := st.Create(ctx, []byte("kloset config")); err != nil {
		t.Fatal(err)
	}
	var mac objects.MAC
	rand.Read(mac[:])
	payload := bytes.Repeat([]byte("packfile "), 1000)
	if _, err := st.Put(ctx, storage.StorageResourcePackfile, mac, bytes.NewReader(payload)); err != nil {
		t.Fatal(err)
	}
	rd, err := st.Get(ctx, storage.StorageResourcePackfile, mac, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("get: %v", err)
	}
	if _, err := os.Stat(filepath.Join(os.Getenv(host.EnvCacheDir), "modules", "sha256", strings.TrimPrefix(digest, "sha256:"))); err != nil {
		t.Errorf("the pulled module is not in %s: %v", host.EnvCacheDir, err)
	}

	for name, c := range map[string]struct {
		plugin string
		is     error
	}{
		"tag":            {repo + ":v1", artifact.ErrNotPinned},
		"other ABI":      {writeTemp(t, "v9.wasm", artifacttest.StubModule("9.9.9")), artifact.ErrABIMismatch},
		"not a module":   {writeTemp(t, "text.wasm", []byte("text")), artifact.ErrNotModule},
		"not resolvable": {"no such thing", nil},
	} {
		_, err := host.New(ctx, "oci", map[string]string{"location": config["location"], host.PluginKey: c.plugin})
		if !errors.Is(err, host.ErrInvalidConfig) || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), host.PluginKey) {
			t.Errorf("%s: %v; want ErrInvalidConfig and %v, naming the key", name, err, c.is)
		}
	}
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// registryBlob is where distribution's filesystem driver keeps a blob.
func registryBlob(t *testing.T, reg *registrytest.Registry, digest string) string {
	t.Helper()
	hex := strings.TrimPrefix(digest, "sha256:")
	p := filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("blob %s: %v", digest, err)
	}
	return p
}

// BenchmarkLoad measures what a new process pays to get the plugin ready:
// cold, compiling the guest into an empty cache; warm, with the compiled
// code on disk (a fresh runtime and cache handle each time, as in a new
// process); warm-ref, the same for a module pinned by digest and read from
// the module cache (verified, no network).
func BenchmarkLoad(b *testing.B) {
	ctx := context.Background()
	guest := host.EmbeddedGuest()
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			p, err := host.Load(ctx, guest, host.Options{CacheDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			p.Close(ctx)
		}
	})
	warm := b.TempDir()
	if p, err := host.Load(ctx, guest, host.Options{CacheDir: warm}); err != nil {
		b.Fatal(err)
	} else {
		p.Close(ctx)
	}
	b.Run("warm", func(b *testing.B) {
		for b.Loop() {
			p, err := host.Load(ctx, guest, host.Options{CacheDir: warm})
			if err != nil {
				b.Fatal(err)
			}
			p.Close(ctx)
		}
	})
	b.Run("warm-ref", func(b *testing.B) {
		reg := registrytest.Distribution(b, registrytest.Options{})
		digest, err := artifact.Push(ctx, reg.Host+"/plugins/bench:v1", guest, artifact.Options{})
		if err != nil {
			b.Fatal(err)
		}
		ref := reg.Host + "/plugins/bench@" + digest
		opts := host.RefOptions{Options: host.Options{CacheDir: warm}}
		if _, err := host.FetchRef(ctx, ref, opts); err != nil {
			b.Fatal(err)
		}
		if err := reg.Stop(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			p, err := host.LoadRef(ctx, ref, opts)
			if err != nil {
				b.Fatal(err)
			}
			p.Close(ctx)
		}
	})
}
