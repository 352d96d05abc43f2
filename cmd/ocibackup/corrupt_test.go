package main_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCorruptedChunk: a packfile whose bytes changed on the registry's
// disk (where nothing checks them against the blob's digest until it is
// read whole) is reported as corrupted by check, not as missing.
func TestCorruptedChunk(t *testing.T) {
	t.Parallel()
	reg, e, src := createdStore(t, "corrupt/store", 9, 1, 2<<20)
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
	if r.code != 1 || !strings.Contains(r.stderr, "chunk") || !regexp.MustCompile(`chunk [0-9a-f]+: corrupted: `).MatchString(r.stderr) {
		t.Errorf("check does not say a chunk is corrupted; %s", r)
	}
	if strings.Contains(r.stderr, "missing") {
		t.Errorf("a corrupted chunk is reported missing: %s", r)
	}

	// restore (Kloset's reader of a small file) and cat (vault's reader)
	// say so too, not what the decryption said alone.
	dest := filepath.Join(t.TempDir(), "r")
	r = e.run("restore", id, dest)
	if r.code != 3 || !strings.Contains(r.stderr, ": corrupted: the store returned its packfile's bytes, but they do not decode") {
		t.Errorf("restore does not say a file's chunk is corrupted; %s", r)
	}
	names, err := os.ReadDir(src)
	if err != nil || len(names) == 0 {
		t.Fatalf("%s: %v", src, err)
	}
	failed := 0
	for _, n := range names {
		r := e.run("cat", id+":"+n.Name())
		if r.code == 0 {
			continue
		}
		failed++
		if !strings.Contains(r.stderr, "is corrupted: the store returned its packfile's bytes, but they do not decode") {
			t.Errorf("cat does not say a chunk is corrupted; %s", r)
		}
	}
	if failed == 0 {
		t.Errorf("cat read every file of a corrupted packfile")
	}
}
