package vault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	"github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/snapshot"

	"github.com/plakar-oci/ocistore/host"
)

// ErrCheckFailed: Check found damage.
var ErrCheckFailed = errors.New("check failed")

// CheckResult describes a check.
type CheckResult struct {
	ID       objects.MAC
	Files    int64 // files whose content was checked
	Bytes    int64 // their bytes
	Fetched  int64 // bytes read from the store
	Duration time.Duration
	// Errors are the problems found (the first maxErrorsKept of
	// NumErrors).
	Errors    []string
	NumErrors int64
}

// Check verifies snapshot ref (see Resolve) as plakar check does: it
// walks every path of the snapshot, reads every chunk of every file back
// from the store, checks it against its MAC and every file against its
// own. It returns the result and, when anything is damaged or missing,
// an error that wraps ErrCheckFailed.
func (v *Vault) Check(ref string) (*CheckResult, error) {
	snap, err := v.load(ref)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	checkCache, err := v.cache.Check()
	if err != nil {
		return nil, err
	}
	defer checkCache.Close()
	snap.SetCheckCache(checkCache)

	o := newOp("check", v.store, true)
	o.setPhase("checking")
	v.events.begin(o)
	defer v.events.end(o)

	err = snap.Check("/", &snapshot.CheckOptions{FastCheck: false})
	if kerr := v.kctx.Err(); kerr != nil {
		return nil, fmt.Errorf("checking %x: %w", snap.Header.Identifier[:4], cause(v.kctx, kerr))
	}
	v.events.sync(v.kctx, v.repo.Configuration().RepositoryID)
	p := o.progress(v.store)
	r := &CheckResult{
		ID:       snap.Header.Identifier,
		Files:    p.FilesDone,
		Bytes:    p.BytesDone,
		Fetched:  p.BytesFetched,
		Duration: time.Since(o.started),
	}
	v.diagnoseMissingChunks(o)
	r.Errors, r.NumErrors = o.Errors()
	if err != nil && r.NumErrors == 0 {
		r.Errors, r.NumErrors = []string{err.Error()}, 1
	}
	if r.NumErrors > 0 {
		return r, fmt.Errorf("%w: snapshot %x: %d problem(s), the first: %s", ErrCheckFailed, r.ID[:4], r.NumErrors, r.Errors[0])
	}
	return r, nil
}

// diagnoseMissingChunks reads again each chunk Kloset reported missing:
// Kloset says "missing" of any chunk it could not read, but one whose
// bytes the store returned and that does not decrypt or decompress is
// corrupted, and one the registry did not serve is unreadable, not gone.
func (v *Vault) diagnoseMissingChunks(o *op) {
	o.mu.Lock()
	macs := append([]objects.MAC(nil), o.missingChunks...)
	o.mu.Unlock()
	for _, mac := range macs {
		subject := fmt.Sprintf("chunk %x", mac)
		_, err := v.repo.GetBlobBytes(resources.RT_CHUNK, mac)
		var se *host.Error
		switch {
		case err == nil:
			o.replaceError(subject, subject+": could not be read during the check, and reads now: check again")
		case errors.Is(err, repository.ErrBlobNotFound), errors.Is(err, repository.ErrPackfileNotFound), errors.Is(err, fs.ErrNotExist):
			// Missing indeed.
		case corruption(err) != "":
			o.replaceError(subject, fmt.Sprintf("%s: corrupted: %s (%v)", subject, corruption(err), cause(v.kctx, err)))
		case errors.As(err, &se):
			o.replaceError(subject, fmt.Sprintf("%s: could not be read from the store: %v", subject, cause(v.kctx, err)))
		}
	}
}

// corruption says how a chunk that could not be read is damaged, or ""
// if err is not damage (the store's own errors, a missing blob, a
// cancellation): its packfile's bytes do not match their digest, or they
// came back and do not decrypt or decompress.
func corruption(err error) string {
	var se *host.Error
	switch {
	case host.IsCorrupted(err):
		return "the registry's bytes of its packfile do not match their digest"
	case errors.As(err, &se), errors.Is(err, repository.ErrBlobNotFound), errors.Is(err, repository.ErrPackfileNotFound),
		errors.Is(err, fs.ErrNotExist), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ""
	}
	return "the store returned its packfile's bytes, but they do not decode"
}

// ErrListingDisagrees: the store lists no snapshot, yet lists the objects
// of some.
var ErrListingDisagrees = errors.New("the store's listing and its objects disagree")

// NoSnapshot tells what a store that lists no snapshot holds: nil if it
// holds no packfile and no state either (nothing was ever backed up to
// it), or if every snapshot was removed; otherwise an error that wraps
// ErrListingDisagrees, as backups are there and cannot be seen.
func (v *Vault) NoSnapshot() error {
	for range v.repo.ListDeletedSnapShots() {
		return nil
	}
	count := map[storage.StorageResource]int{}
	for _, k := range []storage.StorageResource{storage.StorageResourcePackfile, storage.StorageResourceState} {
		macs, err := v.store.List(v.kctx, k)
		if err != nil {
			return fmt.Errorf("listing the %ss: %w", strings.ToLower(k.String()), cause(v.kctx, err))
		}
		count[k] = len(macs)
	}
	packfiles, states := count[storage.StorageResourcePackfile], count[storage.StorageResourceState]
	if packfiles == 0 && states == 0 {
		return nil
	}
	return fmt.Errorf("%w: the store lists no snapshot, but %d packfile(s) and %d state(s): backups are there that it cannot read; %s",
		ErrListingDisagrees, packfiles, states, listingHint)
}

// Remove removes snapshot ref (see Resolve) from the store, as plakar rm
// does: a new state marks it deleted, and it is no longer listed. The
// data it alone used stay in the store until Maintenance removes them.
func (v *Vault) Remove(ref string) (objects.MAC, error) {
	id, err := v.Resolve(ref)
	if err != nil {
		return objects.NilMac, err
	}
	v.repo.NoStateToLocalDisk = true
	defer func() { v.repo.NoStateToLocalDisk = false }()
	if err := v.repo.DeleteSnapshot(id); err != nil {
		return objects.NilMac, fmt.Errorf("removing %x: %w", id[:4], cause(v.kctx, err))
	}
	if err := v.rebuildState(); err != nil {
		return objects.NilMac, fmt.Errorf("reading the state back after removing %x: %w", id[:4], cause(v.kctx, err))
	}
	return id, nil
}

// Info describes a store.
type Info struct {
	Location      string
	Configuration storage.Configuration
	Snapshots     int
	// LogicalSize is the bytes of the files of every snapshot, as if
	// nothing were shared.
	LogicalSize int64
	// Objects counts the store's objects of each kind.
	Objects map[storage.StorageResource]int
	// StoreSize is the bytes the store holds (store.Size).
	StoreSize int64
}

// Kinds lists the kinds of objects Info counts, in order.
var Kinds = []storage.StorageResource{
	storage.StorageResourcePackfile,
	storage.StorageResourceState,
	storage.StorageResourceLock,
	storage.StorageResourceECCPackfile,
	storage.StorageResourceECCState,
}

// Info describes the store: its configuration, its snapshots, its objects
// and its size. Counting the bytes reads every object's manifest the
// first time: it is slow on a big store.
func (v *Vault) Info() (*Info, error) {
	info := &Info{
		Location:      v.location,
		Configuration: v.repo.Configuration(),
		Objects:       map[storage.StorageResource]int{},
	}
	n, size, err := snapshot.LogicalSize(v.repo)
	if err != nil {
		return nil, cause(v.kctx, err)
	}
	info.Snapshots, info.LogicalSize = n, size
	for _, k := range Kinds {
		macs, err := v.store.List(v.kctx, k)
		if errors.Is(err, errors.ErrUnsupported) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing the %ss: %w", strings.ToLower(k.String()), cause(v.kctx, err))
		}
		info.Objects[k] = len(macs)
	}
	if info.StoreSize, err = v.store.Size(v.kctx); err != nil {
		return nil, fmt.Errorf("measuring the store: %w", cause(v.kctx, err))
	}
	return info, nil
}
