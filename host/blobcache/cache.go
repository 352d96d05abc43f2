// Package blobcache keeps read-ahead windows of registry blobs on disk,
// keyed by blob digest, for every store of the process that uses the same
// directory. It decides how much of a blob to fetch for a ranged read
// (Plan), stores what was fetched (Fill), and serves later ranges from it;
// the guest performs the requests (see RATIONALE.md, "Read-ahead windows").
package blobcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultLimit is the disk a cache uses when given no limit: room for a few
// dozen of Kloset's packfiles (20 MiB at most by default), enough for the
// read-ahead of a restore, which moves through packfiles in turn.
const DefaultLimit = 2 << 30

const (
	// firstWindow is what the first read of a blob fetches at least: a
	// read of one small file costs little more than the file.
	firstWindow = 64 << 10
	// maxWindow bounds a window grown by sequential reads.
	maxWindow = 16 << 20
	// wholePages is how many distinct pages of one blob, read, make it
	// worth fetching whole: Kloset's restore and check go through a
	// packfile's files and chunks, page after page, while a restore of one
	// file reads the few nodes of the index trees on its path, several
	// times each (measured: 15 reads over 7 pages; counting reads
	// instead fetched the index packfile whole one run in two).
	// parallelAsks is how many reads make it worth it when reads wait for
	// each other's windows.
	wholePages   = 16
	page         = 4 << 10
	parallelAsks = 3
	// alignment is the grain of windows.
	alignment = 64 << 10
	// spreadBlobs blobs first read within spreadTime of each other are a
	// restore or a check going through a snapshot: a restore of one file
	// reads two (the packfile of the index trees, and its own).
	spreadBlobs = 3
	spreadTime  = 5 * time.Second
	// bulkSpell is how long a blob fetched whole for being wanted makes
	// the next ones wanted at their first read.
	bulkSpell = time.Minute
	// wholeShare: a blob is fetched whole once the bytes asked of it
	// reach this share of its size (1/wholeShare).
	wholeShare = 4
)

// Cache is the windows of one directory. It is safe for concurrent use.
type Cache struct {
	dir   string
	limit int64
	// wholeMax is the largest blob fetched whole.
	wholeMax uint64

	mu    sync.Mutex
	blobs map[string]*blob // by digest
	// bulkUntil: until then, a restore or a check is going through
	// packfiles (see plan).
	bulkUntil time.Time
	used      int64
	tick      uint64 // the LRU clock
}

type blob struct {
	digest  string
	size    uint64
	windows []*window
	// Demand: how many reads asked for how many bytes, hits and misses.
	asks  int
	asked uint64
	first time.Time // of the first read in this process
	// pages: a bit for each page read; touched counts them.
	pages   []uint64
	touched int
	// next is the size of the next window; lastEnd where the last one
	// ended, to tell sequential reads.
	next, lastEnd uint64
	// fetching is closed when the fetch in flight ends.
	fetching chan struct{}
}

type window struct {
	off, n uint64
	path   string
	f      *os.File // open while the window is in the cache (file.go)
	sums   []byte   // of its blocks, read from its file when opened
	size   int64    // of the file
	used   uint64   // LRU clock of the last read
}

var (
	cachesMu sync.Mutex
	caches   = map[string]*Cache{}
)

// Open returns the cache of dir, shared by every caller in the process that
// names the same directory; limit (DefaultLimit when 0) bounds its disk
// use, the smallest asked winning. Windows left by earlier processes are
// found, and served once they check out.
func Open(dir string, limit int64) (*Cache, error) {
	if limit <= 0 {
		limit = DefaultLimit
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	cachesMu.Lock()
	defer cachesMu.Unlock()
	if c, ok := caches[dir]; ok {
		c.mu.Lock()
		if limit < c.limit {
			c.limit = limit
			c.setWholeMax()
		}
		c.mu.Unlock()
		return c, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("read-ahead cache %s: %w: set readahead_cache_dir to a writable directory, or readahead_cache_size to 0", dir, err)
	}
	c := &Cache{dir: dir, limit: limit, blobs: map[string]*blob{}}
	c.setWholeMax()
	c.scan()
	caches[dir] = c
	return c, nil
}

func (c *Cache) setWholeMax() { c.wholeMax = uint64(min(c.limit/4, 256<<20)) }

// staleTemp is the age past which a temporary file of the directory is
// the leftover of a process that died while it wrote a window.
const staleTemp = time.Hour

// scan indexes the windows already in the directory, and removes what
// processes killed while writing one left behind.
func (c *Cache) scan() {
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if strings.HasPrefix(e.Name(), tempPrefix) && time.Since(fi.ModTime()) > staleTemp {
			os.Remove(filepath.Join(c.dir, e.Name()))
			continue
		}
		digest, off, n, ok := parseName(e.Name())
		if !ok {
			continue
		}
		b := c.blobs[digest]
		if b == nil {
			// The size is learnt at the first Plan.
			b = &blob{digest: digest}
			c.blobs[digest] = b
		}
		b.windows = append(b.windows, &window{off: off, n: n, path: filepath.Join(c.dir, e.Name()), size: fi.Size()})
		c.used += fi.Size()
	}
	c.evict()
}

// Range is a part of a blob: n bytes from Off.
type Range struct{ Off, N uint64 }

// Plan answers a read of the n bytes at off of the blob digest, of size
// bytes: the bytes when a window holds them (held), or the range to fetch,
// and a claim to Fill with what was fetched or to Release. While one read
// of a blob fetches, others of the same blob wait for it, so that
// concurrent readers share a window rather than fetch one each.
func (c *Cache) Plan(ctx context.Context, digest string, size, off, n uint64) (held []byte, fetch Range, cl *Claim, err error) {
	if off >= size || n == 0 {
		return nil, Range{off, n}, nil, nil // the registry's answer is the one to give
	}
	if _, err := header(digest, size, Range{}); err != nil {
		return nil, Range{off, n}, nil, nil
	}
	n = min(n, size-off)
	counted, waited := false, false
	for {
		c.mu.Lock()
		b := c.blobs[digest]
		if b == nil {
			b = &blob{digest: digest}
			c.blobs[digest] = b
		}
		if b.size != size {
			// Windows indexed from disk, or a size the guest got wrong:
			// a window is only trusted with the size it was fetched for,
			// which its file records (read checks it).
			b.size = size
		}
		if !counted {
			c.count(b, off, n)
			counted = true
		}
		if w := b.find(off, n); w != nil {
			if data, ok := c.readWindow(b, w, off, n); ok {
				return data, Range{}, nil, nil
			}
			continue // fetch again
		}
		if b.fetching != nil {
			wait := b.fetching
			c.mu.Unlock()
			select {
			case <-wait:
				waited = true
				continue
			case <-ctx.Done():
				return nil, Range{}, nil, ctx.Err()
			}
		}
		fetch = c.plan(b, off, n, waited)
		b.fetching = make(chan struct{})
		c.mu.Unlock()
		return nil, fetch, &Claim{c: c, b: b, r: fetch}, nil
	}
}

// Held returns the n bytes at off of the blob digest, of size bytes, when
// a window holds them, and nil otherwise, without waiting or planning a
// fetch: a read that the host serves without asking the guest, which
// still plans every miss (Plan). A hit counts as a read, as in Plan; a
// window found damaged is dropped, and the miss left to Plan.
func (c *Cache) Held(digest string, size, off, n uint64) []byte {
	if off >= size || n == 0 {
		return nil
	}
	n = min(n, size-off)
	c.mu.Lock()
	b := c.blobs[digest]
	if b == nil || b.size != size {
		c.mu.Unlock()
		return nil
	}
	w := b.find(off, n)
	if w == nil {
		c.mu.Unlock()
		return nil
	}
	c.count(b, off, n)
	data, _ := c.readWindow(b, w, off, n)
	return data
}

// readWindow returns the n bytes at off of blob b from its window w.
// Called with c.mu held, which it releases. A window damaged or gone is
// forgotten, and the read is a miss (ok false).
func (c *Cache) readWindow(b *blob, w *window, off, n uint64) (data []byte, ok bool) {
	c.tick++
	w.used = c.tick
	err := w.open(b.digest, b.size)
	c.mu.Unlock()
	if err == nil {
		data, err = w.read(off, n)
	}
	if err != nil {
		c.mu.Lock()
		c.drop(b, w)
		c.mu.Unlock()
		return nil, false
	}
	return data, true
}

// count records a read of the n bytes at off of b: the demand plan
// weighs. Called with c.mu held.
func (c *Cache) count(b *blob, off, n uint64) {
	if b.asks == 0 {
		c.spread(b)
	}
	b.asks++
	b.asked += n
	b.touch(off, n)
}

// plan chooses the window a miss fetches: the whole blob when it is small
// enough and wanted enough, otherwise a window at off that doubles while
// reads are sequential. A blob is wanted enough when many of its pages
// were read (wholePages), or a good share of its size (wholeShare), or when this
// read waited for another one's window and missed it, the blob read a few
// times already (parallelAsks): readers in parallel on one blob are a
// restore or a check going through it, where one read of one file's path
// is mostly a sequence of single reads.
//
// Once a blob was wanted enough, or a few blobs were first read at once
// (spread), the process is going through a snapshot: for a while
// (bulkSpell), a blob is wanted enough at its first read, so that a
// packfile costs one fetch, the whole packfile (a window of the entries
// it holds first would cost a request more a packfile: 23 blob GETs for
// 11 blobs in TestReadAheadRequestsFollowPackfiles instead of 16).
func (c *Cache) plan(b *blob, off, n uint64, waited bool) Range {
	if b.size <= c.wholeMax {
		bulk := time.Now().Before(c.bulkUntil)
		parallel := waited && b.asks >= parallelAsks
		if parallel || b.touched >= wholePages || b.asked*wholeShare >= b.size || bulk {
			c.bulkUntil = time.Now().Add(bulkSpell)
			return Range{0, b.size}
		}
	}
	// Aligned, so that the ranges Kloset pads around a blob (a random
	// shift before it) fall in the window of their neighbours.
	start := off / alignment * alignment
	if b.next == 0 || off < b.lastEnd || off > b.lastEnd+b.next {
		// A jump: the nodes of an index tree, read from its root down,
		// were written before it, so the window reaches back as well.
		b.next = firstWindow
		start = (off - min(off, firstWindow)) / alignment * alignment
	} else {
		b.next = min(2*b.next, maxWindow)
	}
	end := min((off+max(n, b.next)+alignment-1)/alignment*alignment, b.size)
	r := Range{start, end - start}
	if b.size <= c.wholeMax && 2*(r.N) >= b.size {
		return Range{0, b.size}
	}
	b.lastEnd = r.Off + r.N
	return r
}

// spread marks b read for the first time, and starts a bulk spell when
// spreadBlobs blobs were first read within spreadTime.
func (c *Cache) spread(b *blob) {
	now := time.Now()
	b.first = now
	n := 0
	for _, o := range c.blobs {
		if now.Sub(o.first) < spreadTime {
			n++
		}
	}
	if n >= spreadBlobs {
		c.bulkUntil = now.Add(bulkSpell)
	}
}

// touch marks the pages of the n bytes at off read.
func (b *blob) touch(off, n uint64) {
	if want := int((b.size + page*64 - 1) / (page * 64)); len(b.pages) != want {
		b.pages, b.touched = make([]uint64, want), 0 // a size learned anew
	}
	for p := off / page; p <= (off+n-1)/page; p++ {
		if w, bit := p/64, uint64(1)<<(p%64); b.pages[w]&bit == 0 {
			b.pages[w] |= bit
			b.touched++
		}
	}
}

func (b *blob) find(off, n uint64) *window {
	for _, w := range b.windows {
		if off >= w.off && off+n <= w.off+w.n {
			return w
		}
	}
	return nil
}

// drop forgets window w of b and removes its file. A read of it in
// progress then fails, and fetches again.
func (c *Cache) drop(b *blob, w *window) {
	if c.forget(b, w) {
		if w.f != nil {
			w.f.Close()
		}
		os.Remove(w.path)
	}
}

// forget removes window w from b's, and tells whether it was there.
func (c *Cache) forget(b *blob, w *window) bool {
	for i, x := range b.windows {
		if x == w {
			b.windows = append(b.windows[:i], b.windows[i+1:]...)
			c.used -= w.size
			return true
		}
	}
	return false
}

// evict removes the least recently read windows until the cache fits its
// limit. Called with c.mu held.
func (c *Cache) evict() {
	for c.used > c.limit {
		var ob *blob
		var ow *window
		for _, b := range c.blobs {
			for _, w := range b.windows {
				if ow == nil || w.used < ow.used {
					ob, ow = b, w
				}
			}
		}
		if ow == nil {
			return
		}
		c.drop(ob, ow)
		if len(ob.windows) == 0 && ob.fetching == nil {
			delete(c.blobs, ob.digest)
		}
	}
}

// Claim is the right to fill the window Plan chose.
type Claim struct {
	c    *Cache
	b    *blob
	r    Range
	done bool
}

// Range is the window to fetch.
func (cl *Claim) Range() Range { return cl.r }

// Digest is the blob's.
func (cl *Claim) Digest() string { return cl.b.digest }

// Release ends the claim without a window (the fetch failed), letting the
// reads that wait try themselves. It may be called after Fill.
func (cl *Claim) Release() {
	if cl == nil || cl.done {
		return
	}
	cl.done = true
	cl.c.mu.Lock()
	close(cl.b.fetching)
	cl.b.fetching = nil
	cl.c.mu.Unlock()
}

// Fill stores body, the bytes of the claimed window, and returns the n
// bytes at off within the blob. A whole blob must match its digest; a
// window must have its exact length. Nothing is kept otherwise.
func (cl *Claim) Fill(body io.Reader, off, n uint64) ([]byte, error) {
	defer cl.Release()
	c, b := cl.c, cl.b
	path := filepath.Join(c.dir, fileName(b.digest, cl.r.Off, cl.r.N))
	size, err := writeWindow(path, body, b.digest, b.size, cl.r)
	if err != nil {
		return nil, err
	}
	w := &window{off: cl.r.Off, n: cl.r.N, path: path, size: size}
	c.mu.Lock()
	c.tick++
	w.used = c.tick
	for _, old := range b.windows {
		if old.path == path {
			// The same window again (found damaged, or filled by
			// another process): its file was just replaced.
			if c.forget(b, old) && old.f != nil {
				old.f.Close()
			}
			break
		}
	}
	b.windows = append(b.windows, w)
	c.used += size
	c.mu.Unlock()
	c.mu.Lock()
	err = w.open(b.digest, b.size)
	c.mu.Unlock()
	var data []byte
	if err == nil {
		data, err = w.read(off, n)
	}
	c.mu.Lock()
	c.evict()
	c.mu.Unlock()
	return data, err
}

// File names: <hex digest>-<offset>-<length>, so that windows left by an
// earlier process are found by listing the directory.

func fileName(digest string, off, n uint64) string {
	return strings.TrimPrefix(digest, "sha256:") + "-" + strconv.FormatUint(off, 10) + "-" + strconv.FormatUint(n, 10)
}

func parseName(name string) (digest string, off, n uint64, ok bool) {
	parts := strings.Split(name, "-")
	if len(parts) != 3 || len(parts[0]) != 2*sha256.Size {
		return "", 0, 0, false
	}
	if _, err := hex.DecodeString(parts[0]); err != nil {
		return "", 0, 0, false
	}
	off, err1 := strconv.ParseUint(parts[1], 10, 64)
	n, err2 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || n == 0 {
		return "", 0, 0, false
	}
	return "sha256:" + parts[0], off, n, true
}

var errDamaged = errors.New("read-ahead cache file damaged")
