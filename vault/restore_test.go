package vault_test

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// newTestVault creates a store on a real registry and opens it.
func newTestVault(t *testing.T) *vault.Vault {
	t.Helper()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	return createTestVault(t, "oci://"+reg.Host+"/vault/restore")
}

// createTestVault creates the store at location and opens it; it is
// closed at the end of t.
func createTestVault(t *testing.T, location string) *vault.Vault {
	t.Helper()
	cfg := map[string]string{"location": location}
	pass := []byte("vault test passphrase")
	ctx := context.Background()
	if _, err := vault.Create(ctx, cfg, pass, nil); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, cfg, pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// treeOf describes every path under root: its type, and a file's content
// or a symlink's target.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	tree := make(map[string]string)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			tree[rel] = "symlink " + target
			return err
		case d.IsDir():
			tree[rel] = "dir"
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			tree[rel] = "file " + string(b)
			return err
		default:
			tree[rel] = d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func sameTrees(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: %s is %q, want %q", what, p, got[p], w)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unexpected %s (%q)", what, p, g)
		}
	}
}

// TestRestoreThroughSymlinks: restore -force into a target that holds
// symlinks, to files and to directories, absolute and relative, at every
// depth (1 to 4), all leading out of the target, some to names that do not
// exist yet, where the snapshot has files and directories. Nothing outside the target changes; the symlinks are
// replaced by what the snapshot holds.
func TestRestoreThroughSymlinks(t *testing.T) {
	v := newTestVault(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{
		"top.txt":       "top\n",
		"d1/file.txt":   "one\n",
		"d3/file.txt":   "three\n",
		"d3/sub/deep":   "deep\n",
		"a/b/c/x.txt":   "x\n",
		"a/b/y/z/w.txt": "w\n",
		"f/g/h.txt":     "h\n",
		"f/g/i/j.txt":   "j\n",
		"f/g/i/k.txt":   "k\n",
		"n/o/p/q/r":     "r\n",
		"n/o/p/s.txt":   "s\n",
	})
	r, err := v.Backup(src, nil)
	if err != nil {
		t.Fatal(err)
	}

	outside := filepath.Join(t.TempDir(), "outside")
	writeFiles(t, outside, map[string]string{"victim.txt": "precious\n", "sub/other.txt": "other\n"})
	before := treeOf(t, outside)

	base := t.TempDir()
	target := filepath.Join(base, "target")
	rel := func(from string) string {
		p, err := filepath.Rel(filepath.Join(target, filepath.Dir(from)), outside)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	links := map[string]string{
		"top.txt":     filepath.Join(outside, "victim.txt"), // a file, depth 1
		"d1":          outside,                              // a directory, depth 1
		"d3/file.txt": filepath.Join(rel("d3/file.txt"), "victim.txt"),
		"d3/sub":      rel("d3/sub"),                 // relative, depth 2
		"a/b/c":       outside,                       // depth 3
		"a/b/y/z":     filepath.Join(outside, "sub"), // depth 4
		// Files at depths 3 and 4, to a file, to a directory, and to
		// names that do not exist yet (a create through them would make
		// them outside).
		"f/g/h.txt":   filepath.Join(outside, "victim.txt"),
		"f/g/i/j.txt": filepath.Join(rel("f/g/i/j.txt"), "sub"),
		"f/g/i/k.txt": filepath.Join(outside, "created.txt"),
		"n/o/p/q":     filepath.Join(outside, "made"), // a directory that does not exist
		"n/o/p/s.txt": filepath.Join(rel("n/o/p/s.txt"), "sub", "created.txt"),
	}
	for name, to := range links {
		p := filepath.Join(target, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, p); err != nil {
			t.Fatal(err)
		}
	}

	rr, err := v.Restore(r.ShortID(), "", target, true)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if rr.NumErrors != 0 || rr.Files != 11 {
		t.Errorf("restore: %+v", rr)
	}
	sameTrees(t, "outside the target", before, treeOf(t, outside))
	sameTrees(t, "the restored tree", treeOf(t, src), treeOf(t, target))
}

// TestRestoreTargetSymlink: a target that is itself a symlink is followed,
// as cd would: the user named it.
func TestRestoreTargetSymlink(t *testing.T) {
	v := newTestVault(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, map[string]string{"f.txt": "f\n", "d/g.txt": "g\n"})
	r, err := v.Backup(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(t.TempDir(), "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Restore(r.ShortID(), "", link, false); err != nil {
		t.Fatal(err)
	}
	sameTrees(t, "the restored tree", treeOf(t, src), treeOf(t, real))
}

// liveHeapWriter checks what it is given is zeros, and records the most
// live heap seen at a write (after a collection: garbage is not counted).
type liveHeapWriter struct {
	n, max  uint64
	nonZero bool
	noHeap  bool // only check the bytes
}

func (w *liveHeapWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != 0 {
			w.nonZero = true
			break
		}
	}
	w.n += uint64(len(p))
	if w.noHeap {
		return len(p), nil
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.max = max(w.max, ms.HeapAlloc)
	return len(p), nil
}

// TestCatZeroFileMemory: reading a zero-filled file holds a bounded
// number of bytes, however well the file compresses. Kloset's own reader
// decoded 4 MiB of stored bytes at once, which for zeros is the whole
// file: 64 MiB live at the first write.
func TestCatZeroFileMemory(t *testing.T) {
	const size = 64 << 20
	v := newTestVault(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "zero"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(src, "zero"), size); err != nil {
		t.Fatal(err)
	}
	r, err := v.Backup(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &liveHeapWriter{}
	if n, err := v.Cat(r.ShortID(), "zero", w); err != nil || n != size || w.n != size || w.nonZero {
		t.Fatalf("cat: %d bytes (%d written, non-zero %v), %v", n, w.n, w.nonZero, err)
	}
	// The reader's budget (4 MiB decoded) and a chunk, with room to spare.
	if grew := int64(w.max) - int64(ms.HeapAlloc); grew > 24<<20 {
		t.Errorf("cat of %d MiB of zeros held %d MiB more live heap than before it", size>>20, grew>>20)
	}
	// A restore reads big files with the same reader.
	dest := t.TempDir()
	if _, err := v.Restore(r.ShortID(), "zero", dest, true); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dest, "zero"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w = &liveHeapWriter{noHeap: true}
	if _, err := io.Copy(w, f); err != nil || w.n != size || w.nonZero {
		t.Errorf("restored: %d bytes, non-zero %v, %v", w.n, w.nonZero, err)
	}
}

// TestUserPath: what a user's SNAP:PATH means in a snapshot of
// /home/me/docs.
func TestUserPath(t *testing.T) {
	for p, want := range map[string]string{
		"":                         "",
		"/":                        "",
		"notes.txt":                "notes.txt",
		"/notes.txt":               "notes.txt",
		"/sub/../notes.txt":        "notes.txt",
		"/home/me/docs":            "/home/me/docs",
		"/home/me/docs/notes.txt":  "/home/me/docs/notes.txt",
		"/home/me/docs2/notes.txt": "home/me/docs2/notes.txt",
		"home/me/docs/notes.txt":   "home/me/docs/notes.txt", // the tree's own copy of its path
		"/home":                    "home",
	} {
		if got := vault.UserPath("/home/me/docs", p); got != want {
			t.Errorf("UserPath(%q) = %q, want %q", p, got, want)
		}
	}
	if got := vault.UserPath("/", "/etc/x"); got != "/etc/x" {
		t.Errorf("UserPath of a backup of /: %q", got)
	}
}

// TestOpenHeapGoal: once a store is opened, the heap's next goal is not
// set by the key derivation's memory (Argon2id, 256 MiB), which is garbage
// by then: a command's own garbage would fill that much before the next
// collection, and a restore of zeros peaked at 630 MB of RSS that way.
func TestOpenHeapGoal(t *testing.T) {
	newTestVault(t)
	sample := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(sample)
	goal := sample[0].Value.Uint64()
	t.Logf("heap goal after open: %d MiB", goal>>20)
	if goal > 192<<20 {
		t.Errorf("the heap's goal after opening a store is %d MiB: the key derivation's memory was not collected", goal>>20)
	}
}
