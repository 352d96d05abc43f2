package main_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/PlakarKorp/kloset/resources"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// TestSmallBackupStored: a backup of a few bytes stores mostly the random
// padding Kloset adds to every packfile: the summary says so, and it is
// true of the packfiles in the store.
func TestSmallBackupStored(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{})
	e := storeEnv(t, reg, "small/store")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "eight"), []byte("8 bytes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("create")
	r := e.ok("backup", src)
	m := regexp.MustCompile(`read 8 B, stored (\S+ \S+) in ([1-9]\d*) packfile\(s\) and 1 state\(s\) \(mostly random padding: Kloset adds 512 KiB to each packfile on average, up to 1\.0 MiB, so that its size says nothing of its content; the rest is the snapshot's index and the new data\)`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("the summary does not say what a backup of 8 bytes stored; %s", r)
	}
	// What it says is what the store holds.
	info := e.ok("info")
	if !strings.Contains(info.stdout, "Objects:       "+m[2]+" packfiles, 1 state,") || !strings.Contains(info.stdout, "Stored:        "+m[1]) {
		t.Errorf("the backup said it stored %s in %s packfiles; info says otherwise: %s", m[1], m[2], info)
	}

	// And the packfiles are mostly padding.
	v, err := vault.Open(context.Background(), map[string]string{"location": "oci://" + reg.Host + "/small/store"}, []byte(passphrase), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	macs, err := v.Repository().GetPackfiles()
	if err != nil {
		t.Fatal(err)
	}
	var padding, other int64
	for _, mac := range macs {
		p, err := v.Repository().GetPackfile(mac)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range p.Entries() {
			if b.Type == resources.RT_RANDOM {
				padding += int64(b.Length)
			} else {
				other += int64(b.Length)
			}
		}
	}
	t.Logf("%d packfiles: %d bytes of padding, %d of index and data", len(macs), padding, other)
	if padding <= 4*other {
		t.Errorf("padding is not most of what was stored: %d bytes, and %d of index and data", padding, other)
	}
}
