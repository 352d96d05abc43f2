package main_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestCorruptedChunk: a packfile whose bytes changed on the registry's
// disk (where nothing checks them against the blob's digest until it is
// read whole) is reported as corrupted by check, not as missing.
func TestCorruptedChunk(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{})
	e := newEnv(t).with("OCIBACKUP_PASSPHRASE", passphrase, "OCIBACKUP_LOCATION", "oci://"+reg.Host+"/corrupt/store")
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src, 9, 1, 2<<20)
	e.ok("create")
	id := snapshotID(t, e.ok("backup", src))

	// The largest blob is the packfile: flip a byte in every 64 KiB of it.
	var packfile string
	var size int64
	err := filepath.WalkDir(filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "data" {
			return err
		}
		fi, err := d.Info()
		if err == nil && fi.Size() > size {
			packfile, size = p, fi.Size()
		}
		return err
	})
	if err != nil || packfile == "" {
		t.Fatalf("no blob in %s: %v", reg.Dir, err)
	}
	b, err := os.ReadFile(packfile)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b); i += 64 << 10 {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(packfile, b, 0o644); err != nil {
		t.Fatal(err)
	}

	r := e.run("check", id)
	t.Logf("check says:\n%s", r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "chunk") || !strings.Contains(r.stderr, "corrupted: the store returned") {
		t.Errorf("check does not say a chunk is corrupted; %s", r)
	}
	if strings.Contains(r.stderr, "missing") {
		t.Errorf("a corrupted chunk is reported missing: %s", r)
	}
}

// TestSmallBackupStored: a backup of a few bytes stores the snapshot's
// index, which is most of what it stores: the summary says so.
func TestSmallBackupStored(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{})
	e := newEnv(t).with("OCIBACKUP_PASSPHRASE", passphrase, "OCIBACKUP_LOCATION", "oci://"+reg.Host+"/small/store")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "eight"), []byte("8 bytes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("create")
	r := e.ok("backup", src)
	m := regexp.MustCompile(`read 8 B, stored (\S+ \S+) in ([1-9]\d*) packfile\(s\) and 1 state\(s\) \(mostly the snapshot's index`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("the summary does not say what a backup of 8 bytes stored; %s", r)
	}
	// What it says is what the store holds.
	info := e.ok("info")
	if !strings.Contains(info.stdout, "Objects:       "+m[2]+" packfiles, 1 state,") || !strings.Contains(info.stdout, "Stored:        "+m[1]) {
		t.Errorf("the backup said it stored %s in %s packfiles; info says otherwise: %s", m[1], m[2], info)
	}
}
