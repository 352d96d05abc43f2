package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/PlakarKorp/kloset/connectors"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"
	"golang.org/x/sync/errgroup"
)

// rootExporter is the exporter of a restore. Every name it creates,
// replaces or changes is resolved through an os.Root opened on the target
// (openat and friends, one component at a time), so that nothing outside
// the target can be reached, whatever symlinks the target holds or gains
// during the restore: a symlink that leads out of it fails the operation
// instead of being followed. The fs exporter of Kloset's integrations
// joins paths as strings and follows whatever symlinks it meets.
//
// It also counts what it restores as it goes (Kloset emits its own events
// about it from a goroutine that may outlive Export), and, with force,
// replaces what stands where the snapshot puts something else:
// directories are kept (merged into), anything else in the way of a
// directory, a file, a symlink or a link is removed first.
type rootExporter struct {
	root        *os.Root
	dir         string
	force       bool
	concurrency int
	op          *op
	// open opens the content of a file bigger than contentBudget with a
	// contentReader (see there why); smaller ones, whose reader's buffer
	// cannot outgrow them, are read from the record.
	open func(*connectors.Record) (io.ReadCloser, error)

	mu    sync.Mutex
	links map[string]*hardlink // dev:ino of a multiply-linked file: its first copy
}

// hardlink is the first copy restored of a file with several links; the
// others link to it once done is closed.
type hardlink struct {
	done chan struct{}
	rel  string
	err  error
}

func newRootExporter(dir string, force bool, concurrency int, o *op) (*rootExporter, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &rootExporter{root: root, dir: dir, force: force, concurrency: max(concurrency, 1), op: o, links: make(map[string]*hardlink)}, nil
}

func (x *rootExporter) Origin() string                  { return "" }
func (x *rootExporter) Type() string                    { return "fs" }
func (x *rootExporter) Root() string                    { return x.dir }
func (x *rootExporter) Flags() location.Flags           { return location.FLAG_LOCALFS }
func (x *rootExporter) Ping(ctx context.Context) error  { return nil }
func (x *rootExporter) Close(ctx context.Context) error { return x.root.Close() }

// relName is a record's path inside the target, "." for the target
// itself. Kloset's paths are absolute in the exported tree.
func relName(p string) string {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		return "."
	}
	return rel
}

// report acknowledges rec to Kloset and counts it.
func (x *rootExporter) report(results chan<- *connectors.Result, rec *connectors.Record, err error) {
	if err != nil {
		x.op.addError(rec.Pathname, fmt.Sprintf("%s: %v", rec.Pathname, err))
		results <- rec.Error(err)
		return
	}
	if !rec.IsXattr && rec.FileInfo.Mode().IsRegular() {
		x.op.filesDone.Add(1)
		x.op.bytesDone.Add(rec.FileInfo.Size())
	}
	results <- rec.Ok()
}

func (x *rootExporter) Export(ctx context.Context, records <-chan *connectors.Record, results chan<- *connectors.Result) (ret error) {
	defer close(results)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(x.concurrency)
	type dirMeta struct {
		rel string
		fi  objects.FileInfo
	}
	var dirs []dirMeta
loop:
	for {
		select {
		case <-gctx.Done():
			ret = gctx.Err()
			// Kloset's walk may be blocked sending the next record.
			go func() {
				for range records {
				}
			}()
			break loop
		case rec, ok := <-records:
			if !ok {
				break loop
			}
			// Kloset reported a record's error itself; extended
			// attributes are not restored (no FLAG_EXPORTXATTR).
			if rec.Err != nil || rec.IsXattr {
				results <- rec.Ok()
				continue
			}
			rel := relName(rec.Pathname)
			// Directories come before what they hold: made here, in
			// order; their modes and times are set at the end, once
			// nothing is written into them any more.
			if rec.FileInfo.IsDir() {
				err := x.mkdir(rel)
				if err == nil {
					dirs = append(dirs, dirMeta{rel, rec.FileInfo})
				}
				x.report(results, rec, err)
				continue
			}
			g.Go(func() error {
				x.report(results, rec, x.restore(rec, rel))
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil && ret == nil {
		ret = err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := x.setMeta(dirs[i].rel, dirs[i].fi); err != nil {
			name := path.Join("/", dirs[i].rel)
			x.op.addError(name, fmt.Sprintf("%s: %v", name, err))
		}
	}
	return ret
}

// mkdir makes directory rel, or reuses the one there; with force, what
// else is there (a symlink above all) is replaced.
func (x *rootExporter) mkdir(rel string) error {
	if rel == "." {
		return nil
	}
	err := x.root.Mkdir(rel, 0o700)
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := x.root.Lstat(rel)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		// Writable by us until its own mode is set at the end.
		return x.root.Chmod(rel, 0o700)
	}
	if !x.force {
		return fmt.Errorf("a %s is in the way of the directory: restore into an empty directory, or add -force to replace it", fileType(fi.Mode()))
	}
	if err := x.root.Remove(rel); err != nil {
		return err
	}
	return x.root.Mkdir(rel, 0o700)
}

// clear makes room for rel with force: whatever is not a directory goes.
func (x *rootExporter) clear(rel string) error {
	fi, err := x.root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("a directory is in the way: remove it, the restore does not replace directories")
	}
	if !x.force {
		return fmt.Errorf("a %s is in the way: restore into an empty directory, or add -force to replace it", fileType(fi.Mode()))
	}
	return x.root.Remove(rel)
}

// restore writes the record of anything but a directory.
func (x *rootExporter) restore(rec *connectors.Record, rel string) error {
	fi := rec.FileInfo
	switch mode := fi.Mode(); {
	case mode&fs.ModeSymlink != 0:
		if err := x.clear(rel); err != nil {
			return err
		}
		if err := x.root.Symlink(rec.Target, rel); err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			if err := x.root.Lchown(rel, int(fi.Uid()), int(fi.Gid())); err != nil {
				return err
			}
		}
		return lutimes(x.root, rel, fi.ModTime())
	case mode.IsRegular():
		if fi.Nlink() > 1 {
			return x.hardlink(rec, rel)
		}
		return x.writeFile(rec, rel)
	case mode&(fs.ModeNamedPipe|fs.ModeSocket) != 0:
		// Creating them needs no privilege. A socket is only a name
		// until something binds it again, as rsync restores it.
		if err := x.clear(rel); err != nil {
			return err
		}
		if err := mknod(x.root, rel, mode, 0); err != nil {
			return err
		}
		return x.setMeta(rel, fi)
	case mode&fs.ModeDevice != 0:
		// Kloset records a file's st_dev (where it lies) but not its
		// st_rdev (the device it is): nothing to make the node from.
		return fmt.Errorf("a %s is not restored: the snapshot does not record which device it is; make it again with mknod", fileType(mode))
	}
	return fmt.Errorf("a %s is not restored: the restore does not know how", fileType(fi.Mode()))
}

// hardlink restores one name of a file with several links: the first
// name is written, the others are links to it.
func (x *rootExporter) hardlink(rec *connectors.Record, rel string) error {
	key := fmt.Sprintf("%d:%d", rec.FileInfo.Dev(), rec.FileInfo.Ino())
	x.mu.Lock()
	h, seen := x.links[key]
	if !seen {
		h = &hardlink{done: make(chan struct{}), rel: rel}
		x.links[key] = h
	}
	x.mu.Unlock()
	if !seen {
		h.err = x.writeFile(rec, rel)
		close(h.done)
		return h.err
	}
	<-h.done
	if h.err != nil {
		// The first name failed: this one gets its own copy.
		return x.writeFile(rec, rel)
	}
	if err := x.clear(rel); err != nil {
		return err
	}
	return x.root.Link(h.rel, rel)
}

// writeFile writes a regular file under a temporary name beside rel, then
// renames it over rel: rename replaces a symlink at rel rather than
// following it, and a reader never sees half a file.
func (x *rootExporter) writeFile(rec *connectors.Record, rel string) (err error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := path.Join(path.Dir(rel), ".ocibackup-"+hex.EncodeToString(rnd[:]))
	f, err := x.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			x.root.Remove(tmp)
		}
	}()
	var rd io.ReadCloser
	if rec.Reader != nil {
		rd = damageReader{rec.Reader}
	}
	if x.open != nil && rec.FileInfo.Size() > contentBudget {
		if rd, err = x.open(rec); err != nil {
			return err
		}
	}
	if rd != nil {
		_, err = io.Copy(f, rd)
		rd.Close()
		if err != nil {
			return err
		}
	}
	fi := rec.FileInfo
	if os.Geteuid() == 0 {
		if err := f.Chown(int(fi.Uid()), int(fi.Gid())); err != nil {
			return err
		}
	}
	// After the chown, which clears the set-id bits.
	if err := f.Chmod(permBits(fi.Mode())); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := x.clear(rel); err != nil {
		return err
	}
	if err := x.root.Rename(tmp, rel); err != nil {
		return err
	}
	return lutimes(x.root, rel, fi.ModTime())
}

// setMeta gives rel the mode, owner (as root) and time of the snapshot.
func (x *rootExporter) setMeta(rel string, fi objects.FileInfo) error {
	if os.Geteuid() == 0 {
		if err := x.root.Lchown(rel, int(fi.Uid()), int(fi.Gid())); err != nil {
			return err
		}
	}
	// After the chown, which may clear the set-id bits.
	if err := x.root.Chmod(rel, permBits(fi.Mode())); err != nil {
		return err
	}
	return lutimes(x.root, rel, fi.ModTime())
}

// permBits are the permission bits of m, set-id and sticky bits included.
func permBits(m fs.FileMode) fs.FileMode {
	return m.Perm() | m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
}

// fileType names the type of m for messages.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "file"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device file"
	}
	return "special file"
}
