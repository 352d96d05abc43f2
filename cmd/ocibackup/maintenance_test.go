package main_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/embedreg"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// filesSize is the bytes of the files under dir.
func filesSize(t *testing.T, dir string) int64 {
	t.Helper()
	n, err := embedreg.DirSize(dir)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// removeFirstOfTwo backs up two trees of random data, removes the first
// snapshot and returns the second one's id and tree, with the size of
// dataDir before the first backup, after it, and after the second.
func removeFirstOfTwo(t *testing.T, e *env, at, dataDir string) (id2, src2 string, empty, one, two int64) {
	t.Helper()
	e.ok("-at", at, "create", "-no-encryption")
	empty = filesSize(t, dataDir)
	// Trees that share nothing: a packfile a remaining snapshot uses even
	// in part stays whole (no repacking, as in plakar maintenance).
	src1 := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src1, 31, 6, 1<<20)
	id1 := snapshotID(t, e.ok("-at", at, "backup", src1))
	one = filesSize(t, dataDir)
	src2 = filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src2, 32, 6, 1<<20)
	id2 = snapshotID(t, e.ok("-at", at, "backup", src2))
	two = filesSize(t, dataDir)
	e.ok("-at", at, "rm", id1)
	return id2, src2, empty, one, two
}

// TestMaintenanceLocal: on oci://local, maintenance removes what only a
// removed snapshot used, the registry collects its garbage, and the data
// directory gives back at least half of what that snapshot alone took (a
// rough measure: Kloset pads every packfile with up to a MiB of random
// bytes, so two stores of one tree differ by that much a packfile; a
// registry that kept the bytes would give back none); the other snapshot checks and restores byte for byte. The same when
// 'ocibackup registry' serves the local registry.
func TestMaintenanceLocal(t *testing.T) {
	t.Parallel()
	t.Run("in-process", func(t *testing.T) {
		t.Parallel()
		testMaintenanceLocal(t, newEnv(t), false)
	})
	t.Run("served", func(t *testing.T) {
		t.Parallel()
		testMaintenanceLocal(t, newEnv(t), true)
	})
}

func testMaintenanceLocal(t *testing.T, e *env, served bool) {
	at := "oci://local/maint/store"
	if served {
		serveRegistry(t, e)
	}
	data := filepath.Join(e.home, ".local", "share", "ocibackup", "registry", "docker")
	id2, src2, empty, one, two := removeFirstOfTwo(t, e, at, data)

	dry := e.ok("-at", at, "maintenance", "-dry-run")
	if !strings.Contains(dry.stdout, "to remove") || strings.Contains(dry.stdout, "packfiles that only removed snapshots used: 0") {
		t.Errorf("the dry run does not say what it would remove: %s", dry)
	}
	if got := filesSize(t, data); got < two {
		t.Fatalf("the dry run shrank the data directory from %d to %d bytes", two, got)
	}
	r := e.ok("-at", at, "maintenance")
	if !strings.Contains(r.stdout, "garbage collected") {
		t.Errorf("maintenance does not say the registry collected: %s", r)
	}
	after := filesSize(t, data)
	// What the first snapshot alone takes: the store with both, less a
	// store with only the second (which, beside the first, shares some
	// of the first's packfiles: those stay).
	alone := newEnv(t)
	alone.ok("-at", at, "create", "-no-encryption")
	alone.ok("-at", at, "backup", src2)
	firstOnly := two - filesSize(t, filepath.Join(alone.home, ".local", "share", "ocibackup", "registry", "docker"))
	if freed := two - after; float64(freed) < 0.5*float64(firstOnly) {
		t.Fatalf("the data directory went down by %d bytes (from %d to %d); the first snapshot alone takes %d", freed, two, after, firstOnly)
	}
	t.Logf("the data directory went down by %d bytes; the first snapshot alone takes %d (first backup: %d)", two-after, firstOnly, one-empty)
	if r := e.ok("-at", at, "check"); !strings.Contains(r.stdout, "ok") {
		t.Errorf("check after maintenance: %s", r)
	}
	dest := filepath.Join(t.TempDir(), "restored")
	e.ok("-at", at, "restore", id2, dest)
	sameTree(t, src2, dest)
	// Nothing left to do.
	r = e.ok("-at", at, "maintenance")
	if !strings.Contains(r.stdout, "packfiles that only removed snapshots used: 0 removed") {
		t.Errorf("a second maintenance found more to remove: %s", r)
	}
}

// TestMaintenanceNoDelete: on a registry that refuses DELETE, maintenance
// removes the objects from the store (tombstones), the registry keeps
// every byte, the report says what stays and how to reclaim it, and the
// remaining snapshot checks and restores.
func TestMaintenanceNoDelete(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	e := newEnv(t)
	at := "oci://" + reg.Host + "/maint/store"
	id2, src2, _, _, two := removeFirstOfTwo(t, e, at, reg.Dir)

	r := e.ok("-at", at, "maintenance")
	for _, want := range []string{"packfiles that only removed snapshots used: ", "refuses DELETE, so the", "tombstone", "graveyard", `README, "Deleting"`, "garbage collection"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the report does not say %q: %s", want, r)
		}
	}
	if strings.Contains(r.stdout, "packfiles that only removed snapshots used: 0 ") {
		t.Errorf("nothing removed from the store: %s", r)
	}
	if got := filesSize(t, reg.Dir); got < two {
		t.Errorf("the registry refuses DELETE, yet its storage went down from %d to %d bytes", two, got)
	}
	if r := e.ok("-at", at, "check"); !strings.Contains(r.stdout, "ok") {
		t.Errorf("check after maintenance: %s", r)
	}
	dest := filepath.Join(t.TempDir(), "restored")
	e.ok("-at", at, "restore", id2, dest)
	sameTree(t, src2, dest)
}

// TestMaintenanceDeleteReported: on a registry that deletes, the report
// says that it deleted the objects and that its own garbage collection
// frees their blobs, and nothing of tombstones.
func TestMaintenanceDeleteReported(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	e := newEnv(t)
	at := "oci://" + reg.Host + "/maint/store"
	removeFirstOfTwo(t, e, at, reg.Dir)
	r := e.ok("-at", at, "maintenance")
	if !strings.Contains(r.stdout, "registry: it deleted the ") || !strings.Contains(r.stdout, "garbage collection frees their blobs") {
		t.Errorf("the report does not say that the registry deleted the objects: %s", r)
	}
	if strings.Contains(r.stdout, "tombstone") {
		t.Errorf("the report speaks of tombstones on a registry that deletes: %s", r)
	}
}
