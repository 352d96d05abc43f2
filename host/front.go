package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/session"
)

// backend is one instance of the store logic, the guest's or the same
// package compiled in, called the contract's way (package abi): each call
// with the session of the host services it uses. A call that leaves the
// instance in an unknown state (a trap, a panic) breaks it, and the pool
// drops it.
type backend interface {
	pooled
	create(ctx context.Context, sess *session.Session, config []byte) error
	open(ctx context.Context, sess *session.Session) ([]byte, error)
	ping(ctx context.Context, sess *session.Session) error
	mode(ctx context.Context, sess *session.Session) (abi.Access, error)
	size(ctx context.Context, sess *session.Session) (int64, error)
	list(ctx context.Context, sess *session.Session, k abi.Kind) ([]objects.MAC, error)
	put(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, body abi.Stream) (uint64, error)
	get(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, rng *abi.Range) (abi.Stream, error)
	delete(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC) error
	closeStore(ctx context.Context, sess *session.Session) error
}

// front is Kloset's storage.Store over instances of the store logic. What
// Kloset's interface asks beyond the contract is here, once for the
// sandboxed and the native store: resource kinds, put bodies read ahead,
// an instance and a fresh session per call, errors that name the resource,
// the mode remembered.
type front[I backend] struct {
	config *Config
	env    *session.Env
	opts   storeOptions
	pool   *pool[I]
	// modeSeen is the answer of the first successful mode call: Kloset
	// asks for every file it opens, and the answer does not change.
	modeSeen atomic.Uint32

	// locksRead are the bytes of the locks the Lists of locks read, each
	// kept for the Get that Kloset makes of it after each List that named
	// it (readLocks).
	locksMu   sync.Mutex
	locksRead map[objects.MAC]*listedLock

	// deleteMu runs the deletes of objects other than locks one at a
	// time: on a registry that refuses DELETE each rewrites the store's
	// list of deleted objects, which two at once would each push with
	// only their own object added (the guest's graveyard.go). Only
	// maintenance deletes them, one after another (Kloset's and
	// vault's), so this costs nothing; locks are released by a request
	// of their own and stay concurrent.
	deleteMu sync.Mutex

	// blobs maps an object read by ranges to its blob, "digest size", as
	// the guest's plan of the last read named it, so that a read a
	// window already holds is served here without a guest call
	// (heldRange). Puts and deletes change the generation: a read that
	// began before one does not record what it learnt.
	blobs    *session.LRU
	blobsGen atomic.Uint64
}

func newFront[I backend](config map[string]string, o storeOptions, newInst func(context.Context, *front[I]) (I, error)) (*front[I], error) {
	c, env, err := newStoreEnv(config, o)
	if err != nil {
		return nil, err
	}
	f := &front[I]{config: c, env: env, opts: o, blobs: session.NewLRU(0)}
	f.pool = newPool(c.Concurrency, func(ctx context.Context) (I, error) {
		inst, err := newInst(ctx, f)
		return inst, storeError(storage.StorageResourceUndefined, err)
	})
	return f, nil
}

// do runs one call on a pooled instance with a fresh session, whose streams
// are closed when it returns but for those the call took (Session.Take). A
// call that fails once its context is done reports the context's error.
func (f *front[I]) do(ctx context.Context, res storage.StorageResource, call func(I, *session.Session) error) error {
	inst, err := f.pool.get(ctx)
	if err != nil {
		return err
	}
	sess := f.env.NewSession(ctx)
	err = call(inst, sess)
	sess.CloseAll()
	f.pool.put(inst)
	if ctxErr := ctx.Err(); err != nil && ctxErr != nil {
		return ctxErr
	}
	return storeError(res, err)
}

func (f *front[I]) Origin() string        { return f.config.Location.Registry }
func (f *front[I]) Type() string          { return "oci" }
func (f *front[I]) Root() string          { return f.config.Location.Repository }
func (f *front[I]) Flags() location.Flags { return 0 }

func (f *front[I]) Create(ctx context.Context, config []byte) error {
	return f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) error {
		return inst.create(ctx, sess, config)
	})
}

func (f *front[I]) Open(ctx context.Context) ([]byte, error) {
	var config []byte
	err := f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) (err error) {
		config, err = inst.open(ctx, sess)
		return err
	})
	return config, err
}

func (f *front[I]) Ping(ctx context.Context) error {
	return f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) error {
		return inst.ping(ctx, sess)
	})
}

func (f *front[I]) Mode(ctx context.Context) (storage.Mode, error) {
	if m := f.modeSeen.Load(); m != 0 {
		return storage.Mode(m), nil
	}
	var access abi.Access
	err := f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) (err error) {
		access, err = inst.mode(ctx, sess)
		return err
	})
	if err != nil {
		return 0, err
	}
	var mode storage.Mode
	if access&abi.AccessRead != 0 {
		mode |= storage.ModeRead
	}
	if access&abi.AccessWrite != 0 {
		mode |= storage.ModeWrite
	}
	f.modeSeen.Store(uint32(mode))
	return mode, nil
}

func (f *front[I]) Size(ctx context.Context) (int64, error) {
	var size int64
	err := f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) (err error) {
		size, err = inst.size(ctx, sess)
		return err
	})
	return size, err
}

func (f *front[I]) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	var macs []objects.MAC
	err = f.do(ctx, res, func(inst I, sess *session.Session) (err error) {
		macs, err = inst.list(ctx, sess, kind)
		return err
	})
	if err == nil && kind == abi.KindLock {
		macs, err = f.readLocks(ctx, macs)
	}
	return macs, err
}

// maxLock bounds a lock read whole at list time: Kloset's are a few
// hundred bytes.
const maxLock = 1 << 20

// readLocks reads the locks a list found, and returns those that are
// still there. Kloset lists the locks and then reads each, and fails the
// command on a lock it cannot read: a peer that releases its lock in
// between would fail a backup. So a lock that is gone by the time it is
// read is left out of the list, as the released lock it is, and the
// bytes read are what the next Get of that lock returns: the lock as it
// was at list time, which is what a list promises. Kloset reads every
// listed lock anyway, so this costs no request.
func (f *front[I]) readLocks(ctx context.Context, macs []objects.MAC) ([]objects.MAC, error) {
	bodies := make([][]byte, len(macs))
	errs := make([]error, len(macs))
	sem := make(chan struct{}, max(f.config.Concurrency, 1))
	var wg sync.WaitGroup
	for i, mac := range macs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rd, err := f.get(ctx, storage.StorageResourceLock, abi.KindLock, mac, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer rd.Close()
			bodies[i], errs[i] = io.ReadAll(io.LimitReader(rd, maxLock+1))
			if errs[i] == nil && len(bodies[i]) > maxLock {
				errs[i] = fmt.Errorf("oci store: lock %x is more than %d bytes: it is not Kloset's", mac[:4], maxLock)
			}
		}()
	}
	wg.Wait()
	// A new slice: macs, indexed as errs and bodies, is read again below.
	alive := make([]objects.MAC, 0, len(macs))
	for i, mac := range macs {
		switch {
		case errors.Is(errs[i], fs.ErrNotExist):
			continue
		case errs[i] != nil:
			return nil, errs[i]
		}
		alive = append(alive, mac)
	}
	// Added to what earlier lists read, not in their place: two commands
	// of one process may list the locks at once, and a list that finds a
	// lock gone must not take it from one that named it and has yet to
	// read it.
	f.locksMu.Lock()
	defer f.locksMu.Unlock()
	if f.locksRead == nil {
		f.locksRead = make(map[objects.MAC]*listedLock)
	}
	for i, mac := range macs {
		if errs[i] != nil {
			continue
		}
		l := f.locksRead[mac]
		if l == nil {
			l = &listedLock{}
			f.locksRead[mac] = l
		}
		l.data = bodies[i]
		l.gets++
	}
	return alive, nil
}

// listedLock is a lock as lists read it, and how many Gets of it are to
// come: one for each list that named it.
type listedLock struct {
	data []byte
	gets int
}

// lockRead takes the bytes of lock mac as a list read them, if one read
// them and nothing since put or deleted that lock here.
func (f *front[I]) lockRead(mac objects.MAC) ([]byte, bool) {
	f.locksMu.Lock()
	defer f.locksMu.Unlock()
	l, ok := f.locksRead[mac]
	if !ok {
		return nil, false
	}
	if l.gets--; l.gets == 0 {
		delete(f.locksRead, mac)
	}
	return l.data, true
}

// forgetLock drops what lists read of lock mac: this process writes or
// deletes it.
func (f *front[I]) forgetLock(mac objects.MAC) {
	f.locksMu.Lock()
	defer f.locksMu.Unlock()
	delete(f.locksRead, mac)
}

func (f *front[I]) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	kind, err := kindOf(res)
	if err != nil {
		return -1, err
	}
	if kind == abi.KindLock {
		f.forgetLock(mac)
	}
	// Before and after: a read in between learns nothing (blobsGen).
	f.forgetBlob(kind, mac)
	defer f.forgetBlob(kind, mac)
	body, err := readAhead(ctx, res, rd, f.opts)
	if err != nil {
		return -1, err
	}
	defer body.Release()
	var n uint64
	err = f.do(ctx, res, func(inst I, sess *session.Session) (err error) {
		n, err = inst.put(ctx, sess, kind, mac, sess.AddBody(body))
		return err
	})
	if err != nil {
		return -1, err
	}
	return int64(n), nil
}

func (f *front[I]) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	if kind == abi.KindLock && rng == nil {
		if b, ok := f.lockRead(mac); ok {
			return io.NopCloser(bytes.NewReader(b)), nil
		}
	}
	return f.get(ctx, res, kind, mac, rng)
}

func (f *front[I]) get(ctx context.Context, res storage.StorageResource, kind abi.Kind, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	var r *abi.Range
	if rng != nil {
		if data := f.heldRange(kind, mac, rng); data != nil {
			return io.NopCloser(bytes.NewReader(data)), nil
		}
		r = &abi.Range{Offset: rng.Offset, Length: rng.Length}
	}
	gen := f.blobsGen.Load()
	var rd io.ReadCloser
	err := f.do(ctx, res, func(inst I, sess *session.Session) error {
		st, err := inst.get(ctx, sess, kind, mac, r)
		if err != nil {
			return err
		}
		if digest, size := sess.Planned(); r != nil && digest != "" && f.blobsGen.Load() == gen {
			f.blobs.Set(blobKey(kind, mac), digest+" "+strconv.FormatUint(size, 10))
		}
		rd, err = sess.Take(st)
		return err
	})
	return rd, err
}

// heldRange returns the bytes of the range rng of object (kind, mac) when
// a read-ahead window holds them, and nil otherwise. Kloset reads a
// packfile by thousands of small ranges, most of them from a window the
// host already holds: served here, each costs a lookup rather than an
// instance, a session and a guest call that would only plan it. The
// guest still decides every request: a miss goes to it, and the blob is
// the one its last plan for this object named (learnt in get, forgotten
// when this store puts or deletes the object); the window is served only
// for that digest, and checked as every window is (blobcache).
func (f *front[I]) heldRange(kind abi.Kind, mac objects.MAC, rng *storage.Range) []byte {
	v, ok := f.blobs.Get(blobKey(kind, mac))
	if !ok {
		return nil
	}
	digest, sizeText, _ := strings.Cut(v, " ")
	size, err := strconv.ParseUint(sizeText, 10, 64)
	if err != nil {
		return nil
	}
	return f.env.Held(digest, size, rng.Offset, uint64(rng.Length))
}

// forgetBlob forgets the blob learnt for object (kind, mac), before a put
// or a delete changes it.
func (f *front[I]) forgetBlob(kind abi.Kind, mac objects.MAC) {
	f.blobsGen.Add(1)
	f.blobs.Remove(blobKey(kind, mac))
}

func blobKey(kind abi.Kind, mac objects.MAC) string {
	return string(rune('0'+kind)) + string(mac[:])
}

func (f *front[I]) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	kind, err := kindOf(res)
	if err != nil {
		return err
	}
	if kind == abi.KindLock {
		f.forgetLock(mac)
	} else {
		f.deleteMu.Lock()
		defer f.deleteMu.Unlock()
	}
	f.forgetBlob(kind, mac)
	defer f.forgetBlob(kind, mac)
	err = f.do(ctx, res, func(inst I, sess *session.Session) error {
		return inst.delete(ctx, sess, kind, mac)
	})
	if kind == abi.KindLock && errors.Is(err, fs.ErrNotExist) {
		// Released already, by its owner or by another process removing
		// it as stale: Kloset fails a command on a lock it cannot
		// delete, and this one is gone, as asked.
		return nil
	}
	return err
}

// Tombstones tells whether the store's registry refuses DELETE, so that
// deleted objects were replaced by tombstones and their bytes stay, as
// the guest learned it in this process (its cache entry, abi.
// DeletionModeKey): known is false when no call learned it, nor read the
// store's record of it.
func (f *front[I]) Tombstones() (tombstones, known bool) {
	v, ok := f.env.Cache().Get(abi.DeletionModeKey(f.config.Location.Registry, f.config.Location.Repository))
	return v == abi.DeletesByTombstone, ok
}

// Close closes the idle instances; calls in flight finish on theirs, which
// are closed as they come back.
func (f *front[I]) Close(ctx context.Context) error {
	err := f.do(ctx, storage.StorageResourceUndefined, func(inst I, sess *session.Session) error {
		return inst.closeStore(ctx, sess)
	})
	f.pool.close(ctx)
	return err
}

func kindOf(res storage.StorageResource) (abi.Kind, error) {
	switch res {
	case storage.StorageResourcePackfile:
		return abi.KindPackfile, nil
	case storage.StorageResourceState:
		return abi.KindState, nil
	case storage.StorageResourceLock:
		return abi.KindLock, nil
	case storage.StorageResourceECCPackfile:
		return abi.KindECCPackfile, nil
	case storage.StorageResourceECCState:
		return abi.KindECCState, nil
	}
	return 0, fmt.Errorf("oci store: resource %s: %w", res, errors.ErrUnsupported)
}
