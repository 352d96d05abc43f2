package vault

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	"github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/snapshot"
)

// DefaultGrace is how old a packfile that no state knows of must be
// before maintenance deletes it: such a packfile may belong to a backup
// still running (see MaintenanceOptions.Grace).
const DefaultGrace = 24 * time.Hour

// ErrStoreLocked: maintenance found another command working on the store.
var ErrStoreLocked = errors.New("the store is in use")

// MaintenanceOptions tune Maintenance.
type MaintenanceOptions struct {
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// Grace is the minimum age of a packfile that no state refers to
	// (uploaded by a backup that was killed, or by one still running)
	// for it to be deleted. A backup holds a lock that keeps maintenance
	// out, but a backup that stops refreshing it for Kloset's lock TTL
	// (a machine asleep) looks dead: the grace period is what keeps the
	// packfiles it just wrote. 0 deletes them all: only when no backup
	// can be running (DefaultGrace is what the CLI uses).
	Grace time.Duration
	// Now is the clock; nil means time.Now. Lock staleness and packfile
	// ages are measured with it.
	Now func() time.Time
	// AfterDelete, if not nil, runs after the deletions while the lock is
	// still held (not in a dry run): a registry's garbage collection.
	AfterDelete func()
}

// LockInfo describes a lock found in the store.
type LockInfo struct {
	ID        objects.MAC
	Hostname  string
	Timestamp time.Time
	Exclusive bool
}

// MaintenanceResult says what maintenance removed (or, in a dry run,
// would remove) and what it kept.
type MaintenanceResult struct {
	DryRun    bool
	Snapshots int // snapshots kept
	// Unused are the packfiles the state knows of that no snapshot uses
	// any more (their snapshots were removed).
	Unused []objects.MAC
	// Orphans are packfiles no state knows of, older than the grace
	// period: uploaded by a backup that never committed.
	Orphans []objects.MAC
	// Recent are packfiles no state knows of that are younger than the
	// grace period: kept, a backup may still be writing them.
	Recent []objects.MAC
	// OldestRecent is when the oldest of Recent was written.
	OldestRecent time.Time
	// OrphanBytes and RecentBytes are the sizes of Orphans and Recent
	// (read in full to learn their age), dry run or not.
	OrphanBytes, RecentBytes int64
	// StaleLocks are the locks older than Kloset's lock TTL (left by a
	// command that was killed).
	StaleLocks []LockInfo
	// PackfileBytes and LockBytes are what the store's size went down by
	// when the packfiles, then the locks, were deleted (-1 in a dry run:
	// the store only measures what it holds). StateBytes is the state
	// maintenance wrote to record the removals.
	PackfileBytes, LockBytes, StateBytes int64
	// Failed are the deletions that failed (the objects stay; the next
	// maintenance tries again).
	Failed []string
	Grace  time.Duration
	// Deletion is what became of the objects deleted (not in a dry run,
	// nor when nothing was deleted): from the store's record of how its
	// registry deletes.
	Deletion Deletion
}

// Deletion is how a store's registry deleted objects.
type Deletion int

const (
	// DeletionUnknown: nothing was deleted, or the store does not say.
	DeletionUnknown Deletion = iota
	// DeletedByRegistry: the registry deleted the objects' tags; its own
	// garbage collection frees their blobs.
	DeletedByRegistry
	// DeletedByTombstone: the registry refuses DELETE; each object's tag
	// was moved to a tombstone, and its bytes stay in the registry
	// (README, "Deleting").
	DeletedByTombstone
)

// tombstoner is a store that tells whether it deletes by tombstone (the
// host's).
type tombstoner interface {
	Tombstones() (tombstones, known bool)
}

// deletion is how v's store deletes, as far as it knows.
func (v *Vault) deletion() Deletion {
	t, ok := v.deleter.(tombstoner)
	if !ok {
		return DeletionUnknown
	}
	switch tomb, known := t.Tombstones(); {
	case !known:
		return DeletionUnknown
	case tomb:
		return DeletedByTombstone
	}
	return DeletedByRegistry
}

// Maintenance does what plakar maintenance does, in one pass: under
// Kloset's exclusive lock, it removes from the store the packfiles no
// remaining snapshot uses, the packfiles no state knows of that are older
// than the grace period, and the locks older than Kloset's lock TTL. The
// state records the removals (packfiles dropped, and coloured so that no
// later backup deduplicates against them, whatever order states are read
// in) before anything is deleted: a maintenance cut short leaves objects
// behind, never a state that refers to a deleted packfile.
func (v *Vault) Maintenance(opts MaintenanceOptions) (*MaintenanceResult, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.Grace < 0 {
		return nil, fmt.Errorf("maintenance: negative grace period %v", opts.Grace)
	}
	r := &MaintenanceResult{DryRun: opts.DryRun, Grace: opts.Grace, PackfileBytes: -1, LockBytes: -1}
	repo := v.repo
	v.repo.NoStateToLocalDisk = true
	defer func() { v.repo.NoStateToLocalDisk = false }()

	lockID := objects.RandomMAC()
	if !opts.DryRun {
		release, err := v.lockExclusive(lockID)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	// Locks are read after ours is in place: a backup that starts now
	// sees ours and gives up, and one that started before is seen here.
	if err := v.readLocks(lockID, now(), r); err != nil {
		return nil, err
	}
	// A backup may have committed between Open and the lock: its
	// packfiles must be in the state before orphans are sought.
	if err := v.rebuildState(); err != nil {
		return nil, fmt.Errorf("maintenance: reading the state: %w", cause(v.kctx, err))
	}

	used, err := v.usedPackfiles(r)
	if err != nil {
		return nil, err
	}
	inState := map[objects.MAC]bool{}
	for mac := range repo.ListPackfiles() {
		inState[mac] = true
		if !used[mac] {
			r.Unused = append(r.Unused, mac)
		}
	}
	coloured := map[objects.MAC]bool{}
	for mac := range repo.ListColouredPackfiles() {
		coloured[mac] = true
	}
	stored, err := repo.GetPackfiles()
	if err != nil {
		return nil, fmt.Errorf("maintenance: listing the packfiles: %w", cause(v.kctx, err))
	}
	isStored := map[objects.MAC]bool{}
	cutoff := now().Add(-opts.Grace)
	for _, mac := range stored {
		isStored[mac] = true
		if inState[mac] {
			continue
		}
		if coloured[mac] {
			// A maintenance dropped it from the state and did not get
			// to delete it.
			r.Orphans = append(r.Orphans, mac)
			continue
		}
		written, size, err := v.packfileTime(mac)
		if errors.Is(err, fs.ErrNotExist) {
			// Listed, yet missing: a tombstone whose name in the store's
			// list of deleted objects was lost (two deletes at once).
			// No state knows of it, no backup is writing it: deleting it
			// again names it.
			r.Orphans = append(r.Orphans, mac)
			continue
		}
		if err != nil {
			r.Failed = append(r.Failed, fmt.Sprintf("packfile %x kept: its date cannot be read: %v", mac[:4], err))
			continue
		}
		if written.Before(cutoff) {
			r.Orphans = append(r.Orphans, mac)
			r.OrphanBytes += size
		} else {
			r.Recent = append(r.Recent, mac)
			r.RecentBytes += size
			if r.OldestRecent.IsZero() || written.Before(r.OldestRecent) {
				r.OldestRecent = written
			}
		}
	}
	if opts.DryRun {
		return r, nil
	}

	sizeBefore, err := v.store.Size(v.kctx)
	if err != nil {
		return nil, fmt.Errorf("maintenance: measuring the store: %w", cause(v.kctx, err))
	}
	stateBefore := v.store.Stats().PutBytes
	if err := v.recordRemovals(lockID, r.Unused); err != nil {
		return nil, fmt.Errorf("maintenance: recording the removals in the state (nothing was deleted): %w", cause(v.kctx, err))
	}
	r.StateBytes = v.store.Stats().PutBytes[storage.StorageResourceState] - stateBefore[storage.StorageResourceState]
	// The local state learns of the removals from the store, as every
	// other reader does: until then it would deduplicate against
	// packfiles about to be deleted.
	if err := v.rebuildState(); err != nil {
		return nil, fmt.Errorf("maintenance: reading the state back (nothing was deleted): %w", cause(v.kctx, err))
	}

	for _, mac := range append(append([]objects.MAC{}, r.Unused...), r.Orphans...) {
		if !isStored[mac] {
			continue
		}
		if err := repo.DeletePackfile(mac); err != nil && !errors.Is(err, fs.ErrNotExist) {
			if kerr := v.kctx.Err(); kerr != nil {
				return nil, fmt.Errorf("maintenance: %w", cause(v.kctx, kerr))
			}
			r.Failed = append(r.Failed, fmt.Sprintf("packfile %x: %v", mac[:4], err))
		}
	}
	sizeMid, err := v.store.Size(v.kctx)
	if err != nil {
		return nil, fmt.Errorf("maintenance: measuring the store: %w", cause(v.kctx, err))
	}
	r.PackfileBytes = sizeBefore + r.StateBytes - sizeMid

	for _, l := range r.StaleLocks {
		if err := repo.DeleteLock(l.ID); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.Failed = append(r.Failed, fmt.Sprintf("lock %x: %v", l.ID[:4], err))
		}
	}
	sizeAfter, err := v.store.Size(v.kctx)
	if err != nil {
		return nil, fmt.Errorf("maintenance: measuring the store: %w", cause(v.kctx, err))
	}
	r.LockBytes = sizeMid - sizeAfter
	if len(r.Unused)+len(r.Orphans)+len(r.StaleLocks) > len(r.Failed) {
		r.Deletion = v.deletion()
	}
	if opts.AfterDelete != nil {
		opts.AfterDelete()
	}
	if len(r.Failed) > 0 {
		return r, fmt.Errorf("maintenance: %d deletion(s) failed, the first: %s (run maintenance again)", len(r.Failed), r.Failed[0])
	}
	return r, nil
}

// lockExclusive puts an exclusive lock as plakar maintenance does, keeps
// it fresh while maintenance runs, and returns what removes it.
func (v *Vault) lockExclusive(id objects.MAC) (release func(), err error) {
	put := func() error {
		var buf bytes.Buffer
		if err := repository.NewExclusiveLock(v.kctx.Hostname).SerializeToStream(&buf); err != nil {
			return err
		}
		_, err := v.repo.PutLock(id, &buf)
		return err
	}
	if err := put(); err != nil {
		return nil, fmt.Errorf("maintenance: taking the store's lock: %w", cause(v.kctx, err))
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(repository.LOCK_REFRESH_RATE)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				// A failed refresh makes the lock look stale to others
				// after the TTL; nothing better can be done from here.
				put()
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		// The store deletes locks even once the context is cancelled.
		v.repo.DeleteLock(id)
	}, nil
}

// readLocks reads every lock but ours: a live one means another command
// works on the store (maintenance stops), a stale one is listed in r.
func (v *Vault) readLocks(ours objects.MAC, now time.Time, r *MaintenanceResult) error {
	ids, err := v.repo.GetLocks()
	if err != nil {
		return fmt.Errorf("maintenance: listing the locks: %w", cause(v.kctx, err))
	}
	for _, id := range ids {
		if id == ours {
			continue
		}
		rd, err := v.repo.GetLock(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return fmt.Errorf("maintenance: reading lock %x: %w", id[:4], cause(v.kctx, err))
		}
		l, err := repository.NewLockFromStream(rd)
		rd.Close()
		if err != nil {
			return fmt.Errorf("maintenance: reading lock %x: %w", id[:4], err)
		}
		info := LockInfo{ID: id, Hostname: l.Hostname, Timestamp: l.Timestamp, Exclusive: l.Exclusive}
		if now.Sub(l.Timestamp) >= repository.LOCK_TTL {
			r.StaleLocks = append(r.StaleLocks, info)
			continue
		}
		what := "a backup"
		if l.Exclusive {
			what = "another maintenance"
		}
		age := now.Sub(l.Timestamp).Round(time.Second)
		return fmt.Errorf("%w: %s from %s holds a lock refreshed %s ago: run maintenance when it is done (if it was killed, its lock is stale, and removed, %s after that)",
			ErrStoreLocked, what, l.Hostname, age, repository.LOCK_TTL)
	}
	return nil
}

// usedPackfiles returns the packfiles the remaining snapshots use. Any
// snapshot that cannot be read stops maintenance: what it uses is
// unknown.
func (v *Vault) usedPackfiles(r *MaintenanceResult) (map[objects.MAC]bool, error) {
	used := map[objects.MAC]bool{}
	for id, err := range v.repo.ListSnapshots() {
		if err != nil {
			return nil, fmt.Errorf("maintenance: listing the snapshots: %w", cause(v.kctx, err))
		}
		r.Snapshots++
		if err := func() error {
			snap, err := snapshot.Load(v.repo, id)
			if err != nil {
				return err
			}
			defer snap.Close()
			packs, err := snap.ListPackfiles()
			if err != nil {
				return err
			}
			for mac, err := range packs {
				if err != nil {
					return err
				}
				used[mac] = true
			}
			return nil
		}(); err != nil {
			return nil, fmt.Errorf("maintenance: reading snapshot %x (nothing was deleted; run check on it): %w", id[:4], cause(v.kctx, err))
		}
	}
	return used, nil
}

// packfileTime is when packfile mac was written, from its footer (as
// plakar maintenance reads it: the whole packfile is fetched), and its
// size.
func (v *Vault) packfileTime(mac objects.MAC) (time.Time, int64, error) {
	before := v.store.Stats().GetBytes[storage.StorageResourcePackfile]
	p, err := v.repo.GetPackfile(mac)
	if err != nil {
		return time.Time{}, 0, cause(v.kctx, err)
	}
	size := v.store.Stats().GetBytes[storage.StorageResourcePackfile] - before
	return time.Unix(0, p.Footer.Timestamp), size, nil
}

// recordRemovals commits a state that drops packfiles macs and the blob
// locations left pointing at packfiles already dropped, and colours macs:
// Kloset never deduplicates against a coloured packfile, so even a reader
// that merges this state before the one that added a packfile does not
// use it.
func (v *Vault) recordRemovals(id objects.MAC, macs []objects.MAC) error {
	sc, err := v.cache.Scan(id)
	if err != nil {
		return err
	}
	defer sc.Close()
	w := v.repo.NewRepositoryWriter(sc, id, repository.DefaultType, "")
	defer w.PackerManager.Wait()
	changed := false
	for _, mac := range macs {
		if err := w.RemovePackfile(mac); err != nil {
			return err
		}
		if err := w.DeleteStateResource(resources.RT_PACKFILE, mac); err != nil {
			return err
		}
		changed = true
	}
	for blob, err := range v.repo.ListOrphanBlobs() {
		if err != nil {
			return err
		}
		if err := w.RemoveBlob(blob.Type, blob.Blob, blob.Location.Packfile); err != nil {
			return err
		}
		changed = true
	}
	if !changed {
		w.RemoveTransaction(id)
		return nil
	}
	return w.CommitTransaction(id)
}
