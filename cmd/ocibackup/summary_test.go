package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestSmallBackupStored: a backup of a few bytes stores the snapshot's
// index, which is most of what it stores: the summary says so.
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
	m := regexp.MustCompile(`read 8 B, stored (\S+ \S+) in ([1-9]\d*) packfile\(s\) and 1 state\(s\) \(mostly the snapshot's index, a few MiB for any backup,`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("the summary does not say what a backup of 8 bytes stored; %s", r)
	}
	// What it says is what the store holds.
	info := e.ok("info")
	if !strings.Contains(info.stdout, "Objects:       "+m[2]+" packfiles, 1 state,") || !strings.Contains(info.stdout, "Stored:        "+m[1]) {
		t.Errorf("the backup said it stored %s in %s packfiles; info says otherwise: %s", m[1], m[2], info)
	}
}
