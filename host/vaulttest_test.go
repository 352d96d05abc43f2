package host_test

// What the Kloset tests (e2e_test.go, reliability_test.go) need besides
// package vault, which drives Kloset for them: a vault that records what
// Kloset reports, the source trees they back up and the comparison of
// what comes back with them, and the padding of packfiles.

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	kresources "github.com/PlakarKorp/kloset/resources"

	"github.com/plakar-oci/ocistore/vault"
)

// testVault is a vault that records what Kloset logs and the error events
// it sends, for checkClean: Kloset reports some failures (a path it
// could not read or write) only that way, and the operation "succeeds".
type testVault struct {
	*vault.Vault
	log logBuffer

	mu     sync.Mutex
	logged int      // bytes of log already checked
	errors []string // error events not yet checked
}

// openVault opens the store at cfg, through wrap if not nil, with an
// empty cache of its own (as a new plakar process has), and closes it
// when t ends.
func openVault(t *testing.T, cfg map[string]string, passphrase []byte, wrap func(storage.Store) storage.Store) *testVault {
	t.Helper()
	tv := &testVault{}
	v, err := vault.Open(context.Background(), cfg, passphrase, &vault.Options{
		CacheDir:  t.TempDir(),
		Log:       &tv.log,
		Events:    tv.event,
		WrapStore: wrap,
	})
	if err != nil {
		t.Fatalf("opening %s: %v", cfg["location"], err)
	}
	tv.Vault = v
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("closing the vault: %v", err)
		}
		if s := tv.log.String(); s != "" && t.Failed() {
			t.Logf("kloset log:\n%s", s)
		}
	})
	return tv
}

func (tv *testVault) event(e vault.Event) {
	if e.Level != "error" {
		return
	}
	tv.mu.Lock()
	defer tv.mu.Unlock()
	tv.errors = append(tv.errors, formatEvent(e))
}

func formatEvent(e vault.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", e.Workflow, e.Type)
	for _, k := range slices.Sorted(maps.Keys(e.Data)) {
		fmt.Fprintf(&b, " %s=%v", k, e.Data[k])
	}
	return b.String()
}

// checkClean fails t if Kloset sent error events or logged anything
// (warnings and errors go to the log) since the last check, or if the
// vault's context was cancelled: a packfile that fails to upload cancels
// it.
func (tv *testVault) checkClean(t *testing.T, phase string) {
	t.Helper()
	tv.mu.Lock()
	errs := tv.errors
	tv.errors = nil
	log := tv.log.String()
	logged := log[tv.logged:]
	tv.logged = len(log)
	tv.mu.Unlock()
	for i, e := range errs {
		if i == 20 {
			t.Errorf("%s: ... and %d more error events", phase, len(errs)-i)
			break
		}
		t.Errorf("%s: error event: %s", phase, e)
	}
	if logged != "" {
		t.Errorf("%s: kloset logged:\n%s", phase, logged)
	}
	if tv.Interrupted() {
		t.Fatalf("%s: the vault's context was cancelled", phase)
	}
}

// ref names snapshot id for the vault.
func ref(id objects.MAC) string { return hex.EncodeToString(id[:]) }

// backup backs src up and fails unless the snapshot records no error.
func (tv *testVault) backup(src *sourceTree) (objects.MAC, error) {
	r, err := tv.Backup(src.root, nil)
	if err != nil {
		return objects.NilMac, err
	}
	if r.NumErrors > 0 {
		return objects.NilMac, fmt.Errorf("the snapshot %x records %d errors: %s", r.ID[:4], r.NumErrors, strings.Join(r.Errors, "; "))
	}
	return r.ID, nil
}

// snapshotIDs lists the snapshots, sorted by identifier.
func (tv *testVault) snapshotIDs(t *testing.T) []objects.MAC {
	t.Helper()
	list, err := tv.Snapshots()
	if err != nil {
		t.Fatalf("listing the snapshots: %v", err)
	}
	var ids []objects.MAC
	for _, s := range list {
		ids = append(ids, s.ID)
	}
	return sortedMACs(ids...)
}

func sortedMACs(macs ...objects.MAC) []objects.MAC {
	s := slices.Clone(macs)
	slices.SortFunc(s, func(a, b objects.MAC) int { return bytes.Compare(a[:], b[:]) })
	return s
}

// check is `plakar check` of every snapshot in ids: every chunk of every
// file is read back and checked against its MAC.
func (tv *testVault) check(t *testing.T, ids ...objects.MAC) {
	t.Helper()
	for _, id := range ids {
		if _, err := tv.Check(ref(id)); err != nil {
			t.Fatalf("check of the snapshot %x: %v", id[:4], err)
		}
	}
	tv.checkClean(t, "check")
}

// restoreSame restores the whole of snapshot id (absolute paths and all,
// as `plakar restore -to DEST SNAPSHOT:/` does) into a new directory and
// fails t unless it is src, byte for byte.
func (tv *testVault) restoreSame(t *testing.T, id objects.MAC, src *sourceTree) {
	t.Helper()
	dest := t.TempDir()
	r, err := tv.Restore(ref(id), "/", dest, false)
	if err != nil {
		t.Fatalf("restoring %x: %v", id[:4], err)
	}
	if r.NumErrors > 0 {
		t.Fatalf("restoring %x: %d errors: %s", id[:4], r.NumErrors, strings.Join(r.Errors, "; "))
	}
	tv.checkClean(t, "restore")
	diffs, err := compareRestored(src, dest)
	if err != nil {
		t.Fatalf("comparing the restore of %x: %v", id[:4], err)
	}
	if len(diffs) > 0 {
		t.Fatalf("the restore of %x differs from its source:\n%s", id[:4], diffReport(diffs))
	}
}

// listFiles is `plakar ls -recursive SNAPSHOT:/`: every path of the
// snapshot but / itself.
func (tv *testVault) listFiles(id objects.MAC) (map[string]entry, error) {
	list, err := tv.Files(ref(id), "/", true)
	if err != nil {
		return nil, err
	}
	files := make(map[string]entry, len(list))
	for _, f := range list {
		e := entry{Type: f.Mode.Type(), Perm: f.Mode.Perm(), Target: f.Target}
		if f.Mode.IsRegular() {
			e.Size, e.ModTime = f.Size, f.ModTime.UnixNano()
		}
		files[f.Path] = e
	}
	return files, nil
}

// packfilePadding reads packfiles back whole through Kloset (which checks
// their MACs) and returns the bytes of the random padding Kloset puts at
// both ends of every packfile (RT_RANDOM blobs of up to the chunker's
// minimum size, 512 KiB by default, each): noise by design, which a
// deduplication measure must leave out.
func packfilePadding(repo *repository.Repository, macs []objects.MAC) (int64, error) {
	var padding int64
	for _, mac := range macs {
		p, err := repo.GetPackfile(mac)
		if err != nil {
			return 0, fmt.Errorf("reading back the packfile %x: %w", mac, err)
		}
		for _, blob := range p.Entries() {
			if blob.Type == kresources.RT_RANDOM {
				padding += int64(blob.Length)
			}
		}
	}
	return padding, nil
}

// --- the source trees ---

// sourceTree is what a test backs up: the directory, and every path the
// snapshot must hold (the tree and its ancestors, which the fs importer
// records too).
type sourceTree struct {
	root      string
	entries   map[string]entry
	randBytes int64 // bytes of generated (incompressible, unique) content
}

// newSourceTree describes root, once it is written.
func newSourceTree(root string, randBytes int64) (*sourceTree, error) {
	entries, err := scanTree(root)
	if err != nil {
		return nil, err
	}
	return &sourceTree{root: root, entries: entries, randBytes: randBytes}, nil
}

// entry is what the tests compare of a path, on disk and in a snapshot.
type entry struct {
	Type    fs.FileMode // fs.ModeDir, fs.ModeSymlink or 0 for a regular file
	Perm    fs.FileMode
	Size    int64  // regular files only
	Target  string // symlinks only
	ModTime int64  // regular files only, in ns
}

func entryOf(fi fs.FileInfo, target string) entry {
	e := entry{Type: fi.Mode().Type(), Perm: fi.Mode().Perm(), Target: target}
	if fi.Mode().IsRegular() {
		e.Size = fi.Size()
		e.ModTime = fi.ModTime().UnixNano()
	}
	return e
}

// same tells whether e and o describe the same entry. Times may differ by
// less than a microsecond: the fs exporter sets them with utimes.
func (e entry) same(o entry) bool {
	dt := e.ModTime - o.ModTime
	return e.Type == o.Type && e.Perm == o.Perm && e.Size == o.Size && e.Target == o.Target &&
		dt > -int64(time.Microsecond) && dt < int64(time.Microsecond)
}

func (e entry) String() string {
	switch {
	case e.Type == fs.ModeDir:
		return fmt.Sprintf("dir %v", e.Perm)
	case e.Type == fs.ModeSymlink:
		return fmt.Sprintf("symlink -> %q", e.Target)
	case e.Type == 0:
		return fmt.Sprintf("file %v, %d bytes", e.Perm, e.Size)
	}
	return fmt.Sprintf("%v", e.Type|e.Perm)
}

// generateFiles writes n files of random sizes up to maxSize, spread over
// a few directories, plus one file of bigSize, all of random content from
// a fixed seed. It returns the bytes written.
func generateFiles(dir string, seed uint64, n int, maxSize int, bigSize int) (int64, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	var key [32]byte
	for i := range key {
		key[i] = byte(r.Uint32())
	}
	content := rand.NewChaCha8(key)
	var total int64
	write := func(name string, size int) error {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return err
		}
		f, err := os.Create(name)
		if err != nil {
			return err
		}
		if _, err := io.CopyN(f, content, int64(size)); err != nil {
			f.Close()
			return err
		}
		total += int64(size)
		return f.Close()
	}
	for i := range n {
		size := r.IntN(maxSize + 1)
		switch i {
		case 0:
			size = maxSize
		case 1:
			size = 1
		}
		name := filepath.Join(dir, fmt.Sprintf("d%02d", i%8), fmt.Sprintf("sub%d", i%3), fmt.Sprintf("f%03d.bin", i))
		if err := write(name, size); err != nil {
			return total, err
		}
	}
	if err := write(filepath.Join(dir, "big", "big.bin"), bigSize); err != nil {
		return total, err
	}
	return total, nil
}

// copyFixture copies the tree from (directories, regular files and
// symlinks, with their permissions) to to.
func copyFixture(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, fi.Mode().Perm())
		case fi.Mode().Type() == fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
				return err
			}
			return os.Chmod(dst, fi.Mode().Perm()) // past the umask
		}
		return fmt.Errorf("%s: unexpected %v", p, fi.Mode())
	})
}

// scanTree describes root as the snapshot must hold it.
func scanTree(root string) (map[string]entry, error) {
	entries := make(map[string]entry)
	for dir := filepath.Dir(root); ; dir = filepath.Dir(dir) {
		fi, err := os.Lstat(dir)
		if err != nil {
			return nil, err
		}
		entries[filepath.ToSlash(dir)] = entryOf(fi, "")
		if filepath.Dir(dir) == dir {
			break
		}
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries[filepath.ToSlash(p)], err = walkedEntry(p, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	return entries, nil
}

// walkedEntry describes the path p that WalkDir gave with d.
func walkedEntry(p string, d fs.DirEntry) (entry, error) {
	fi, err := d.Info()
	if err != nil {
		return entry{}, err
	}
	var target string
	if fi.Mode().Type() == fs.ModeSymlink {
		if target, err = os.Readlink(p); err != nil {
			return entry{}, err
		}
	}
	return entryOf(fi, target), nil
}

// compareEntries reports the differences between the paths a snapshot
// holds and the source. Directories' times are not compared: those of the
// root's ancestors move as the test works.
func compareEntries(want, got map[string]entry) []string {
	var diffs []string
	for _, p := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("missing %s (%s)", p, want[p]))
			continue
		}
		if w := want[p]; !w.same(g) {
			diffs = append(diffs, fmt.Sprintf("%s: got %s mtime %d, want %s mtime %d", p, g, g.ModTime, w, w.ModTime))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("unexpected %s (%s)", p, got[p]))
		}
	}
	return diffs
}

// diffReport joins diffs, the first 40 of them.
func diffReport(diffs []string) string {
	const shown = 40
	if len(diffs) <= shown {
		return strings.Join(diffs, "\n")
	}
	return strings.Join(diffs[:shown], "\n") + fmt.Sprintf("\n... and %d more", len(diffs)-shown)
}

// compareRestored checks the restored tree under dest against the source:
// the same paths (and no other), every regular file byte for byte with
// its permissions and time, every symlink with its target.
func compareRestored(src *sourceTree, dest string) ([]string, error) {
	restored := make(map[string]entry)
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dest, p)
		if err != nil {
			return err
		}
		restored[path.Join("/", filepath.ToSlash(rel))], err = walkedEntry(p, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	diffs := compareEntries(src.entries, restored)
	for _, p := range slices.Sorted(maps.Keys(src.entries)) {
		if src.entries[p].Type != 0 {
			continue
		}
		if _, ok := restored[p]; !ok {
			continue // already reported
		}
		same, err := sameContent(filepath.FromSlash(p), filepath.Join(dest, filepath.FromSlash(p)))
		if err != nil {
			return nil, err
		}
		if !same {
			diffs = append(diffs, fmt.Sprintf("%s: restored content differs", p))
		}
	}
	return diffs, nil
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, errA := io.ReadFull(fa, ba)
		nb, errB := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		endA := errA == io.EOF || errA == io.ErrUnexpectedEOF
		endB := errB == io.EOF || errB == io.ErrUnexpectedEOF
		if errA != nil && !endA {
			return false, errA
		}
		if errB != nil && !endB {
			return false, errB
		}
		if endA || endB {
			return endA && endB, nil
		}
	}
}
