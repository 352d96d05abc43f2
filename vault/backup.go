package vault

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/PlakarKorp/kloset/connectors"
	"github.com/PlakarKorp/kloset/connectors/importer"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/locate"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	"github.com/PlakarKorp/kloset/snapshot"
	"github.com/PlakarKorp/kloset/snapshot/vfs"
)

// BackupOptions tune a backup.
type BackupOptions struct {
	// Name of the snapshot; default the directory's base name.
	Name string
	Tags []string
	// Excludes are Kloset's exclusion patterns (gitignore syntax).
	Excludes []string
	// StagingDir is where packfiles are staged before they are uploaded;
	// empty means a temporary directory.
	StagingDir string
}

// ErrCommitted is wrapped by the error of a backup that failed once its
// snapshot was committed: the snapshot is in the store.
var ErrCommitted = errors.New("the snapshot was committed")

// BackupResult describes a committed snapshot.
type BackupResult struct {
	ID   objects.MAC
	Root string // the directory backed up

	Files       uint64
	Directories uint64
	Symlinks    uint64
	Size        uint64 // bytes of the files in the snapshot
	// BytesRead are the bytes read from the source: the files that did
	// not change since the previous snapshot of the same directory are
	// not read again.
	BytesRead int64
	// BytesStored are the bytes the store received (packfiles and
	// states), after deduplication, compression and encryption: the new
	// data, and the snapshot's index (a few MiB, whatever the backup's
	// size: the whole of a small backup's).
	BytesStored int64
	// Packfiles and States are the objects the store received.
	Packfiles, States int
	Duration          time.Duration

	// Errors are the paths that could not be backed up (the first
	// maxErrorsKept of NumErrors); the snapshot records them too.
	Errors    []string
	NumErrors int64
}

// ShortID is the identifier's first 4 bytes in hex, as plakar shows it.
func (r *BackupResult) ShortID() string { return fmt.Sprintf("%x", r.ID[:4]) }

// Backup makes a snapshot of dir (an fs importer), with the latest
// snapshot of the same directory as a cache: the files that did not
// change are neither read nor chunked again. A snapshot is committed
// unless the backup fails as a whole; the paths it could not read are in
// the result's Errors. When the vault's context is cancelled, nothing is
// committed and the error wraps context.Canceled.
func (v *Vault) Backup(dir string, opts *BackupOptions) (*BackupResult, error) {
	if opts == nil {
		opts = &BackupOptions{}
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("nothing to back up: %w", err)
	}
	statsBefore := v.store.Stats()
	o := newOp("backup", v.store, false)
	v.events.begin(o)
	defer v.events.end(o)
	kctx := v.kctx

	o.setPhase("scanning")
	scanStop, scanDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanDone)
		files, bytes, ok := scanTree(kctx.Done(), scanStop, root)
		if ok {
			o.filesTotal.Store(files)
			o.bytesTotal.Store(bytes)
		}
	}()
	defer func() {
		close(scanStop)
		<-scanDone
	}()

	copts := &connectors.Options{
		Hostname:        kctx.Hostname,
		OperatingSystem: kctx.OperatingSystem,
		Architecture:    kctx.Architecture,
		CWD:             kctx.CWD,
		MaxConcurrency:  kctx.MaxConcurrency,
		Excludes:        opts.Excludes,
		Stdin:           kctx.Stdin,
		Stdout:          kctx.Stdout,
		Stderr:          kctx.Stderr,
	}
	imp, err := importer.NewImporter(kctx, copts, map[string]string{"location": "fs://" + root})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", root, err)
	}
	defer imp.Close(kctx)
	source, err := snapshot.NewSource(kctx, imp)
	if err != nil {
		return nil, err
	}

	staging := opts.StagingDir
	if staging == "" {
		if staging, err = os.MkdirTemp("", "vault-packfiles-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(staging)
	}
	name := opts.Name
	if name == "" {
		name = filepath.Base(root)
	}
	snap, err := snapshot.Create(v.repo, repository.DefaultType, staging, objects.NilMac, &snapshot.BuilderOptions{
		Name: name,
		Tags: opts.Tags,
	})
	if err != nil {
		return nil, fmt.Errorf("starting the snapshot: %w", cause(kctx, err))
	}
	closed := false
	defer func() {
		if !closed {
			snap.Close()
		}
	}()
	// Read the state again now that the backup holds its lock: a
	// maintenance that ran since the store was opened deleted packfiles
	// that the state read then still names (maintenance.go).
	if err := v.rebuildState(); err != nil {
		return nil, fmt.Errorf("reading the state: %w", cause(kctx, err))
	}

	parentVFS, closeParent, err := v.parentVFS(source)
	if err != nil {
		return nil, err
	}
	defer closeParent()
	snap.WithVFSCache(parentVFS)

	if err := snap.Backup(source); err != nil {
		return nil, fmt.Errorf("backing up %s: %w", root, cause(kctx, err))
	}
	if err := kctx.Err(); err != nil {
		// Kloset may end the import early without an error.
		return nil, fmt.Errorf("backing up %s: %w", root, cause(kctx, err))
	}
	if err := snap.Commit(); err != nil {
		return nil, fmt.Errorf("committing the snapshot: %w", cause(kctx, err))
	}
	closed = true
	if err := snap.Close(); err != nil {
		return nil, fmt.Errorf("closing the snapshot: %w (%w)", err, ErrCommitted)
	}
	o.setPhase("done")
	// What a later command will see: the new snapshot is in the state.
	if err := v.rebuildState(); err != nil {
		return nil, fmt.Errorf("reading the state back after the backup: %w (%w)", cause(kctx, err), ErrCommitted)
	}
	if err := v.listedBack(snap.Header.Identifier); err != nil {
		return nil, err
	}

	v.events.sync(kctx, v.repo.Configuration().RepositoryID)
	p := o.progress(v.store)
	r := &BackupResult{
		ID:          snap.Header.Identifier,
		Root:        root,
		BytesRead:   p.BytesRead,
		BytesStored: p.BytesStored,
		Duration:    time.Since(o.started),
	}
	puts := v.store.Stats().Since(statsBefore)
	put := func(res storage.StorageResource) int {
		k := StoreOp{"Put", res}
		return puts.Calls[k] - puts.Errors[k]
	}
	r.Packfiles, r.States = put(storage.StorageResourcePackfile), put(storage.StorageResourceState)
	for _, s := range snap.Header.Sources {
		sum := s.Summary
		r.Files += sum.Directory.Files + sum.Below.Files
		r.Directories += sum.Directory.Directories + sum.Below.Directories
		r.Symlinks += sum.Directory.Symlinks + sum.Below.Symlinks
		r.Size += sum.Directory.Size + sum.Below.Size
		r.NumErrors = max(r.NumErrors, int64(sum.Directory.Errors+sum.Below.Errors))
	}
	errs, n := o.Errors()
	r.Errors, r.NumErrors = errs, max(r.NumErrors, n)
	return r, nil
}

// ErrNotListed: the store accepted a snapshot but does not list it back.
var ErrNotListed = errors.New("the store does not list the snapshot back")

// notListed is an error of ErrNotListed with its own message.
type notListed string

func (e notListed) Error() string        { return string(e) }
func (e notListed) Is(target error) bool { return target == ErrNotListed }

// listedBack checks that snapshot id, committed, is among the snapshots
// the state read back lists. A backup is done only then: a registry that
// accepts objects and leaves them out of its tag lists (zot's, before the
// store knew its ways) would otherwise collect backups that no command
// can see.
func (v *Vault) listedBack(id objects.MAC) error {
	for got, err := range v.repo.ListSnapshots() {
		if err != nil {
			return fmt.Errorf("listing the snapshots after the backup: %w", cause(v.kctx, err))
		}
		if got == id {
			return nil
		}
	}
	var why string
	states, err := v.store.List(v.kctx, storage.StorageResourceState)
	switch {
	case err != nil:
		why = fmt.Sprintf("listing the states failed: %v", cause(v.kctx, err))
	case len(states) == 0:
		why = "the store lists no state at all"
	default:
		why = fmt.Sprintf("the store lists %d state(s), none with it", len(states))
	}
	return notListed(fmt.Sprintf("the registry accepted snapshot %x but does not list it back: %s; nothing is lost, but the store cannot read it: %s",
		id[:4], why, listingHint))
}

// listingHint is what to do when the store's listing misses objects.
const listingHint = "check that the registry's tag list (GET /v2/<repository>/tags/list) shows every tag of the store (docs/registry-quirks.md)"

// parentVFS returns the VFS of the latest snapshot of the same source, or
// nil if there is none.
func (v *Vault) parentVFS(source *snapshot.Source) (*vfs.Filesystem, func(), error) {
	parents, _, err := locate.Match(v.repo, &locate.LocateOptions{Filters: locate.LocateFilters{
		Latest:  true,
		Roots:   []string{source.Root()},
		Types:   []string{source.Type()},
		Origins: []string{source.Origin()},
	}})
	if err != nil {
		return nil, func() {}, fmt.Errorf("looking for the previous snapshot: %w", cause(v.kctx, err))
	}
	if len(parents) == 0 {
		return nil, func() {}, nil
	}
	parent, err := snapshot.Load(v.repo, parents[0])
	if err != nil {
		return nil, func() {}, fmt.Errorf("loading the previous snapshot %x: %w", parents[0][:4], cause(v.kctx, err))
	}
	fsys, err := parent.FilesystemWithCache()
	if err != nil {
		parent.Close()
		return nil, func() {}, fmt.Errorf("the files of the previous snapshot %x: %w", parents[0][:4], cause(v.kctx, err))
	}
	return fsys, func() { parent.Close() }, nil
}

// scanTree counts the regular files under root and their bytes, for the
// progress of a backup. It gives up (ok false) when done or stop is
// closed. Exclusions are not applied: the totals are an estimate.
func scanTree(done, stop <-chan struct{}, root string) (files, bytes int64, ok bool) {
	errStop := errors.New("stop")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		select {
		case <-done:
			return errStop
		case <-stop:
			return errStop
		default:
		}
		if err != nil {
			return nil // the backup reports it
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				files++
				bytes += fi.Size()
			}
		}
		return nil
	})
	return files, bytes, err == nil
}

// rebuildState reads the repository's state again. A backup running at
// the same time may merge states and delete those it merged, between the
// listing of the states and the reading of one: listed again, the merged
// state is there instead.
func (v *Vault) rebuildState() error {
	for attempt := 1; ; attempt++ {
		err := v.repo.RebuildState()
		if err == nil || attempt == 3 || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
}
