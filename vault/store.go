package vault

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
)

// StoreOp names a store call: the method and the resource.
type StoreOp struct {
	Method   string
	Resource storage.StorageResource
}

func (k StoreOp) String() string {
	if k.Resource == storage.StorageResourceUndefined {
		return k.Method
	}
	return k.Method + " " + k.Resource.String()
}

// StoreStats are the calls a store received and the bytes it was sent
// (Put, counting the calls that succeeded) and sent back (Get).
type StoreStats struct {
	Calls    map[StoreOp]int
	Errors   map[StoreOp]int
	PutBytes map[storage.StorageResource]int64
	GetBytes map[storage.StorageResource]int64
	Ranged   int // ranged Gets
}

func newStoreStats() StoreStats {
	return StoreStats{
		Calls:    map[StoreOp]int{},
		Errors:   map[StoreOp]int{},
		PutBytes: map[storage.StorageResource]int64{},
		GetBytes: map[storage.StorageResource]int64{},
	}
}

func (s StoreStats) clone() StoreStats {
	return StoreStats{
		Calls:    maps.Clone(s.Calls),
		Errors:   maps.Clone(s.Errors),
		PutBytes: maps.Clone(s.PutBytes),
		GetBytes: maps.Clone(s.GetBytes),
		Ranged:   s.Ranged,
	}
}

// Since returns the difference s - before.
func (s StoreStats) Since(before StoreStats) StoreStats {
	d := newStoreStats()
	diff := func(dst, a, b map[StoreOp]int) {
		for k, v := range a {
			if n := v - b[k]; n != 0 {
				dst[k] = n
			}
		}
	}
	diffBytes := func(dst, a, b map[storage.StorageResource]int64) {
		for k, v := range a {
			if n := v - b[k]; n != 0 {
				dst[k] = n
			}
		}
	}
	diff(d.Calls, s.Calls, before.Calls)
	diff(d.Errors, s.Errors, before.Errors)
	diffBytes(d.PutBytes, s.PutBytes, before.PutBytes)
	diffBytes(d.GetBytes, s.GetBytes, before.GetBytes)
	d.Ranged = s.Ranged - before.Ranged
	return d
}

// Put is the bytes put, all resources together.
func (s StoreStats) Put() int64 {
	var n int64
	for _, v := range s.PutBytes {
		n += v
	}
	return n
}

func (s StoreStats) String() string {
	keys := slices.SortedFunc(maps.Keys(s.Calls), func(a, b StoreOp) int {
		return strings.Compare(a.String(), b.String())
	})
	var parts []string
	for _, k := range keys {
		p := fmt.Sprintf("%s×%d", k, s.Calls[k])
		if n := s.Errors[k]; n > 0 {
			p += fmt.Sprintf(" (%d failed)", n)
		}
		switch k.Method {
		case "Put":
			p += fmt.Sprintf(" %d B", s.PutBytes[k.Resource])
		case "Get":
			p += fmt.Sprintf(" %d B", s.GetBytes[k.Resource])
		}
		parts = append(parts, p)
	}
	if s.Ranged > 0 {
		parts = append(parts, fmt.Sprintf("(%d ranged Gets)", s.Ranged))
	}
	return strings.Join(parts, ", ")
}

// lockDeleteTimeout bounds the deletion of a lock, which goes on after
// the operation's context is cancelled.
const lockDeleteTimeout = 10 * time.Second

// CountingStore wraps a storage.Store: it counts the calls and the bytes
// that go through (the bytes of a Put are those the store read from
// Kloset's reader, that is what it stored after deduplication, compression
// and encryption), and it keeps track of the locks Kloset takes.
//
// Kloset removes a backup's lock in the background with the backup's
// context; when that context was cancelled (an interrupted backup), the
// removal would fail and leave the lock behind. CountingStore deletes
// locks with a context that is not cancelled (bounded by
// lockDeleteTimeout), and WaitLocksReleased lets a program wait for the
// removals before it exits.
type CountingStore struct {
	storage.Store

	put, got atomic.Int64

	mu      sync.Mutex
	stats   StoreStats
	putMACs []objects.MAC          // of the packfiles put, in order
	locks   map[objects.MAC]string // locks put and not deleted: "" pending, or why the deletion failed
	changed chan struct{}          // closed and replaced at every call
}

// NewCountingStore wraps inner.
func NewCountingStore(inner storage.Store) *CountingStore {
	return &CountingStore{Store: inner, stats: newStoreStats(), locks: map[objects.MAC]string{}, changed: make(chan struct{})}
}

// Stats returns the counts so far.
func (c *CountingStore) Stats() StoreStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats.clone()
}

// Transferred returns the bytes put and got so far.
func (c *CountingStore) Transferred() (put, got int64) { return c.put.Load(), c.got.Load() }

// PackfilesPut returns the MACs of the packfiles put so far.
func (c *CountingStore) PackfilesPut() []objects.MAC {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.putMACs)
}

// WaitCalls waits until the store has received n calls op, for at most
// timeout, and tells whether it has.
func (c *CountingStore) WaitCalls(op StoreOp, n int, timeout time.Duration) bool {
	return c.wait(timeout, func() bool { return c.stats.Calls[op] >= n })
}

// WaitLocksReleased waits, for at most timeout, until Kloset has deleted
// every lock it put through this store, and returns the locks that are
// left (with why, if their deletion failed).
func (c *CountingStore) WaitLocksReleased(timeout time.Duration) map[objects.MAC]string {
	c.wait(timeout, func() bool {
		for _, why := range c.locks {
			if why == "" {
				return false
			}
		}
		return true
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.locks)
}

// wait waits until done (called with c.mu held) or timeout.
func (c *CountingStore) wait(timeout time.Duration, done func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		ok, changed := done(), c.changed
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

func (c *CountingStore) count(method string, res storage.StorageResource, err error, update func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := StoreOp{method, res}
	c.stats.Calls[k]++
	if err != nil {
		c.stats.Errors[k]++
	}
	if update != nil {
		update()
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *CountingStore) Create(ctx context.Context, config []byte) error {
	err := c.Store.Create(ctx, config)
	c.count("Create", storage.StorageResourceUndefined, err, nil)
	return err
}

func (c *CountingStore) Open(ctx context.Context) ([]byte, error) {
	b, err := c.Store.Open(ctx)
	c.count("Open", storage.StorageResourceUndefined, err, nil)
	return b, err
}

func (c *CountingStore) Ping(ctx context.Context) error {
	err := c.Store.Ping(ctx)
	c.count("Ping", storage.StorageResourceUndefined, err, nil)
	return err
}

func (c *CountingStore) Mode(ctx context.Context) (storage.Mode, error) {
	m, err := c.Store.Mode(ctx)
	c.count("Mode", storage.StorageResourceUndefined, err, nil)
	return m, err
}

func (c *CountingStore) Size(ctx context.Context) (int64, error) {
	n, err := c.Store.Size(ctx)
	c.count("Size", storage.StorageResourceUndefined, err, nil)
	return n, err
}

func (c *CountingStore) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	macs, err := c.Store.List(ctx, res)
	c.count("List", res, err, nil)
	return macs, err
}

func (c *CountingStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	cr := &countingReader{r: rd, total: &c.put}
	n, err := c.Store.Put(ctx, res, mac, cr)
	if err == nil && n != cr.n {
		err = fmt.Errorf("store: Put %s %x returned %d bytes but read %d", res, mac, n, cr.n)
	}
	c.count("Put", res, err, func() {
		if err != nil {
			return
		}
		c.stats.PutBytes[res] += cr.n
		switch res {
		case storage.StorageResourcePackfile:
			c.putMACs = append(c.putMACs, mac)
		case storage.StorageResourceLock:
			c.locks[mac] = ""
		}
	})
	return n, err
}

func (c *CountingStore) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	rd, err := c.Store.Get(ctx, res, mac, rng)
	c.count("Get", res, err, func() {
		if rng != nil {
			c.stats.Ranged++
		}
	})
	if err != nil {
		return rd, err
	}
	return &countingReadCloser{ReadCloser: rd, add: func(n int64) {
		c.got.Add(n)
		c.mu.Lock()
		c.stats.GetBytes[res] += n
		c.mu.Unlock()
	}}, nil
}

func (c *CountingStore) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	if res == storage.StorageResourceLock {
		// See the type's comment: the lock goes even when the operation
		// that took it was cancelled.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), lockDeleteTimeout)
		defer cancel()
	}
	err := c.Store.Delete(ctx, res, mac)
	c.count("Delete", res, err, func() {
		if res != storage.StorageResourceLock {
			return
		}
		if _, ok := c.locks[mac]; !ok {
			return // another process's stale lock
		}
		if err != nil {
			c.locks[mac] = err.Error()
		} else {
			delete(c.locks, mac)
		}
	})
	return err
}

func (c *CountingStore) Close(ctx context.Context) error {
	err := c.Store.Close(ctx)
	c.count("Close", storage.StorageResourceUndefined, err, nil)
	return err
}

type countingReader struct {
	r     io.Reader
	n     int64
	total *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.total.Add(int64(n))
	return n, err
}

type countingReadCloser struct {
	io.ReadCloser
	add func(int64)
}

func (c *countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.add(int64(n))
	return n, err
}
