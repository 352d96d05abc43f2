package vault

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/snapshot"
	"github.com/PlakarKorp/kloset/snapshot/vfs"
)

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	ID        objects.MAC
	Timestamp time.Time
	Name      string
	Tags      []string
	Hostname  string
	Root      string // the directory backed up
	Files     uint64
	Size      uint64 // bytes of the files
	Errors    uint64 // paths that could not be backed up
	Duration  time.Duration
}

// ShortID is the identifier's first 4 bytes in hex, as plakar shows it.
func (s SnapshotInfo) ShortID() string { return fmt.Sprintf("%x", s.ID[:4]) }

func snapshotInfo(snap *snapshot.Snapshot) SnapshotInfo {
	h := snap.Header
	s := SnapshotInfo{
		ID:        h.Identifier,
		Timestamp: h.Timestamp,
		Name:      h.Name,
		Tags:      slices.Clone(h.Tags),
		Hostname:  h.GetContext("Hostname"),
		Duration:  h.Duration,
	}
	if len(h.Sources) > 0 {
		src := h.GetSource(0)
		s.Root = src.Importer.Directory
		s.Files = src.Summary.Directory.Files + src.Summary.Below.Files
		s.Size = src.Summary.Directory.Size + src.Summary.Below.Size
		s.Errors = src.Summary.Directory.Errors + src.Summary.Below.Errors
	}
	return s
}

// Snapshots lists the snapshots, oldest first.
func (v *Vault) Snapshots() ([]SnapshotInfo, error) {
	var list []SnapshotInfo
	for id, err := range v.repo.ListSnapshots() {
		if err != nil {
			return nil, cause(v.kctx, err)
		}
		snap, err := snapshot.Load(v.repo, id)
		if err != nil {
			return nil, fmt.Errorf("loading the snapshot %x: %w", id[:4], cause(v.kctx, err))
		}
		list = append(list, snapshotInfo(snap))
		snap.Close()
	}
	slices.SortFunc(list, func(a, b SnapshotInfo) int {
		if c := a.Timestamp.Compare(b.Timestamp); c != 0 {
			return c
		}
		return strings.Compare(string(a.ID[:]), string(b.ID[:]))
	})
	return list, nil
}

// Resolve finds the snapshot ref names: "latest", or its identifier in
// hex or a prefix of it that only it has.
func (v *Vault) Resolve(ref string) (objects.MAC, error) {
	if ref == "latest" {
		list, err := v.Snapshots()
		if err != nil {
			return objects.NilMac, err
		}
		if len(list) == 0 {
			return objects.NilMac, fmt.Errorf("%w: the store has no snapshot yet", ErrSnapshotNotFound)
		}
		return list[len(list)-1].ID, nil
	}
	prefix := strings.ToLower(ref)
	if prefix == "" || len(prefix) > 2*len(objects.MAC{}) || strings.Trim(prefix, "0123456789abcdef") != "" {
		return objects.NilMac, fmt.Errorf("%w: %q is not a snapshot identifier (hexadecimal digits, as ls shows them, or latest)", ErrSnapshotNotFound, ref)
	}
	var found []objects.MAC
	for id, err := range v.repo.ListSnapshots() {
		if err != nil {
			return objects.NilMac, cause(v.kctx, err)
		}
		if strings.HasPrefix(hex.EncodeToString(id[:]), prefix) {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return objects.NilMac, fmt.Errorf("%w: %s", ErrSnapshotNotFound, ref)
	case 1:
		return found[0], nil
	}
	return objects.NilMac, fmt.Errorf("%w: %s matches %d snapshots: give more digits", ErrAmbiguousSnapshot, ref, len(found))
}

// Snapshot describes the snapshot ref names (see Resolve).
func (v *Vault) Snapshot(ref string) (SnapshotInfo, error) {
	snap, err := v.load(ref)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer snap.Close()
	return snapshotInfo(snap), nil
}

func (v *Vault) load(ref string) (*snapshot.Snapshot, error) {
	id, err := v.Resolve(ref)
	if err != nil {
		return nil, err
	}
	snap, err := snapshot.Load(v.repo, id)
	if err != nil {
		return nil, fmt.Errorf("loading the snapshot %x: %w", id[:4], cause(v.kctx, err))
	}
	if len(snap.Header.Sources) == 0 {
		snap.Close()
		return nil, fmt.Errorf("the snapshot %x has no source", id[:4])
	}
	return snap, nil
}

// snapPath is the absolute path p names in snap: p itself if absolute, or
// p under the directory the snapshot was made of ("" is that directory).
func snapPath(snap *snapshot.Snapshot, p string) string {
	if strings.HasPrefix(p, "/") {
		return path.Clean(p)
	}
	return path.Clean(path.Join("/", snap.Header.GetSource(0).Importer.Directory, p))
}

// UserPath is the path of a snapshot of directory root, as Files, Cat and
// Restore take it, that a user means by p: a path taken from root
// ("/notes.txt" as "notes.txt", "/" as root itself), unless it is root's
// full path or a path below it, as Files lists them. The snapshot holds
// nothing else but root's parents, which nobody restores, so the two
// forms meet only where the tree holds its own path again below itself:
// the full path wins, and the form without a leading slash reaches the
// other.
func UserPath(root, p string) string {
	if !strings.HasPrefix(p, "/") {
		return p
	}
	p, root = path.Clean(p), path.Clean(path.Join("/", root))
	if p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/") {
		return p
	}
	return strings.TrimPrefix(p, "/")
}

// entry returns the entry at p in snap, and the snapshot's filesystem.
func (v *Vault) entry(snap *snapshot.Snapshot, p string) (*vfs.Filesystem, *vfs.Entry, string, error) {
	fsys, err := snap.Filesystem()
	if err != nil {
		return nil, nil, "", fmt.Errorf("the files of the snapshot %x: %w", snap.Header.Identifier[:4], cause(v.kctx, err))
	}
	abs := snapPath(snap, p)
	e, err := fsys.GetEntry(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, "", fmt.Errorf("%w: %x:%s (paths are taken from the directory backed up, %s; ls lists them)",
				ErrPathNotFound, snap.Header.Identifier[:4], abs, snap.Header.GetSource(0).Importer.Directory)
		}
		return nil, nil, "", fmt.Errorf("%x:%s: %w", snap.Header.Identifier[:4], abs, cause(v.kctx, err))
	}
	return fsys, e, abs, nil
}

// FileEntry describes a path in a snapshot.
type FileEntry struct {
	Path    string // absolute, in the snapshot
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Target  string // of a symlink
	User    string
	Group   string
}

func fileEntry(p string, e *vfs.Entry) FileEntry {
	fi := e.Stat()
	return FileEntry{
		Path:    p,
		Mode:    fi.Mode(),
		Size:    fi.Size(),
		ModTime: fi.ModTime(),
		Target:  e.SymlinkTarget,
		User:    fi.Username(),
		Group:   fi.Groupname(),
	}
}

// Files lists path p of snapshot ref (see Resolve): the entries of a
// directory (all those below it if recursive), or the entry of a file. A
// relative p is taken from the directory the snapshot was made of ("" is
// that directory).
func (v *Vault) Files(ref, p string, recursive bool) ([]FileEntry, error) {
	snap, err := v.load(ref)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	fsys, e, abs, err := v.entry(snap, p)
	if err != nil {
		return nil, err
	}
	if !e.IsDir() {
		return []FileEntry{fileEntry(abs, e)}, nil
	}
	var list []FileEntry
	if recursive {
		err = fsys.WalkDir(abs, func(ep string, e *vfs.Entry, err error) error {
			if err != nil {
				return fmt.Errorf("%s: %w", ep, err)
			}
			if ep != abs {
				list = append(list, fileEntry(ep, e))
			}
			return nil
		})
	} else {
		var children iter.Seq2[*vfs.Entry, error]
		if children, err = fsys.Children(abs); err == nil {
			for c, cerr := range children {
				if cerr != nil {
					err = cerr
					break
				}
				list = append(list, fileEntry(path.Join(abs, c.Name()), c))
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing %x:%s: %w", snap.Header.Identifier[:4], abs, cause(v.kctx, err))
	}
	slices.SortFunc(list, func(a, b FileEntry) int { return strings.Compare(a.Path, b.Path) })
	return list, nil
}

// Cat writes the content of file p of snapshot ref to w, and returns the
// bytes written. Every chunk is checked against its MAC as it is read.
func (v *Vault) Cat(ref, p string, w io.Writer) (int64, error) {
	snap, err := v.load(ref)
	if err != nil {
		return 0, err
	}
	defer snap.Close()
	fsys, e, abs, err := v.entry(snap, p)
	if err != nil {
		return 0, err
	}
	if e.IsDir() {
		return 0, fmt.Errorf("%x:%s is a directory", snap.Header.Identifier[:4], abs)
	}
	if !e.Stat().Mode().IsRegular() {
		return 0, fmt.Errorf("%x:%s is not a regular file (%v)", snap.Header.Identifier[:4], abs, e.Stat().Mode().Type())
	}
	f, err := openContent(v.repo, fsys, e)
	if err != nil {
		return 0, fmt.Errorf("%x:%s: %w", snap.Header.Identifier[:4], abs, cause(v.kctx, err))
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return n, fmt.Errorf("reading %x:%s: %w", snap.Header.Identifier[:4], abs, cause(v.kctx, err))
	}
	return n, nil
}
