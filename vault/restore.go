package vault

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/PlakarKorp/kloset/connectors"
	"github.com/PlakarKorp/kloset/snapshot"
)

// RestoreResult describes a restore.
type RestoreResult struct {
	Target   string // the directory restored into
	Files    int64
	Bytes    int64
	Duration time.Duration
	// Errors are the paths that could not be restored (the first
	// maxErrorsKept of NumErrors).
	Errors    []string
	NumErrors int64
}

// CheckRestoreTarget tells whether dest may receive a restore: it must
// not exist, or be a directory, empty unless force.
func CheckRestoreTarget(dest string, force bool) error {
	fi, err := os.Stat(dest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("the restore target %s is not a directory", dest)
	}
	if force {
		return nil
	}
	d, err := os.Open(dest)
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); err == io.EOF {
		return nil
	} else if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", ErrTargetNotEmpty, dest)
}

// Restore writes path p of snapshot ref (see Resolve and Files) into the
// directory dest with the fs exporter: a directory's content goes
// straight into dest, a file goes into dest under its name. dest is
// created if need be; it must be empty unless force, in which case what
// is in the way is replaced. Every chunk is checked against its MAC as it
// is read.
func (v *Vault) Restore(ref, p, dest string, force bool) (*RestoreResult, error) {
	dest, err := filepath.Abs(dest)
	if err != nil {
		return nil, err
	}
	if err := CheckRestoreTarget(dest, force); err != nil {
		return nil, err
	}
	snap, err := v.load(ref)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	fsys, e, abs, err := v.entry(snap, p)
	if err != nil {
		return nil, err
	}

	o := newOp("restore", v.store, false)
	o.countsFromExporter = true
	if e.IsDir() {
		if s := e.Summary; s != nil {
			o.filesTotal.Store(int64(s.Directory.Files + s.Below.Files))
			o.bytesTotal.Store(int64(s.Directory.Size + s.Below.Size))
		}
	} else {
		o.filesTotal.Store(1)
		o.bytesTotal.Store(e.Stat().Size())
	}
	o.setPhase("restoring")
	v.events.begin(o)
	defer v.events.end(o)

	if err := os.MkdirAll(dest, 0o755); err != nil {
		return nil, err
	}
	kctx := v.kctx
	exp, err := newRootExporter(dest, force, kctx.MaxConcurrency, o)
	if err != nil {
		return nil, err
	}
	// Kloset's records name paths below the directory restored (below
	// the file's directory for a file), as snap.Export strips them.
	strip := abs
	if !e.IsDir() {
		strip = path.Dir(abs)
	}
	exp.open = func(rec *connectors.Record) (io.ReadCloser, error) {
		fe, err := fsys.GetEntry(path.Join(strip, rec.Pathname))
		if err != nil {
			return nil, err
		}
		return openContent(v.repo, fsys, fe)
	}
	defer exp.Close(kctx)
	if err := snap.Export(exp, abs, &snapshot.ExportOptions{}); err != nil {
		return nil, fmt.Errorf("restoring %x:%s: %w", snap.Header.Identifier[:4], abs, cause(kctx, err))
	}
	if err := kctx.Err(); err != nil {
		return nil, fmt.Errorf("restoring %x:%s: %w", snap.Header.Identifier[:4], abs, cause(kctx, err))
	}
	v.events.sync(v.kctx, v.repo.Configuration().RepositoryID)
	p2 := o.progress(v.store)
	r := &RestoreResult{Target: dest, Files: p2.FilesDone, Bytes: p2.BytesDone, Duration: time.Since(o.started)}
	r.Errors, r.NumErrors = o.Errors()
	return r, nil
}
