package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestRegistrySaysWhy: a registry that fails a write says why in its error
// body's detail, behind a generic message (distribution: 500 UNKNOWN,
// "unknown error"); the error shows the detail. The storage's blob
// directory replaced by a file makes distribution fail as a full disk
// does, root or not.
func TestRegistrySaysWhy(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{})
	e := storeEnv(t, reg, "why/store")
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src, 10, 1, 1<<20)
	e.ok("create")
	blobs := filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs")
	if err := os.RemoveAll(blobs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobs, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("backup", src)
	t.Logf("%s", r)
	if r.code != 1 || !strings.Contains(r.stderr, "not a directory") {
		t.Errorf("the error does not say why the registry failed; %s", r)
	}
}
