package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// TestMaintenanceOverGRPC: plakar maintenance is Kloset's code over the
// plugin's storage; here Kloset (the vault) runs over the plugin
// executable through plakar's gRPC client: maintenance deletes the
// packfiles only a removed snapshot used, and the other snapshot checks
// and restores.
func TestMaintenanceOverGRPC(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/plakar/maint"}
	if _, err := vault.Create(ctx, cfg, nil, &vault.CreateOptions{Plaintext: true}); err != nil {
		t.Fatal(err)
	}
	p := spawn(t, pluginEnv(t.TempDir()))
	st, err := p.Store(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, cfg, nil, &vault.Options{WrapStore: func(storage.Store) storage.Store { return st }})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var second map[string][]byte
	var first string
	for i := range 2 {
		src := t.TempDir()
		files := map[string][]byte{}
		for _, name := range []string{"a", "b"} {
			b := make([]byte, 1<<20)
			rand.Read(b)
			if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
			files[name] = b
		}
		r, err := v.Backup(src, nil)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.ShortID()
		}
		second = files
	}
	if _, err := v.Remove(first); err != nil {
		t.Fatal(err)
	}
	r, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Unused) == 0 || r.PackfileBytes < 2<<20 {
		t.Fatalf("maintenance removed %d packfiles, %d bytes; want the first snapshot's (over 2 MiB)", len(r.Unused), r.PackfileBytes)
	}
	left, err := st.List(ctx, storage.StorageResourcePackfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r.Unused {
		if slices.Contains(left, mac) {
			t.Errorf("packfile %x is still listed", mac[:4])
		}
	}
	if _, err := v.Check("latest"); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "out")
	if _, err := v.Restore("latest", "", dest, false); err != nil {
		t.Fatal(err)
	}
	for name, want := range second {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("restored %s differs (%v)", name, err)
		}
	}
}
