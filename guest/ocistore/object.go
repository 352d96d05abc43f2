package ocistore

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// Put stores the bytes of body as object (k, mac) and returns their count.
// The tag is written last, so a failed put leaves no new tag behind: a tag
// only ever names a whole blob, which the registry checked against its
// digest when the upload was committed.
func (s *Store) Put(k abi.Kind, mac abi.MAC, body abi.Stream) (uint64, error) {
	if err := s.ready(k, "put ", " to "); err != nil {
		return 0, err
	}
	tag, key := s.objectKey(k, mac)
	c := s.newCall("put ", tag, " to ")
	// Where deleted objects are tombstones named in the graveyard, which
	// List believes without reading their tags, an object put again over
	// a tombstone gets a marker first, which has List read its tag. (A
	// lock is checked after its tag is written instead: releasedLockPut.)
	// The tag is read while the bytes go up. The mode is the host cache's,
	// which List fills (Kloset lists the locks before it puts anything)
	// and every put keeps fresh; a put that finds none reads the store's
	// record alongside the upload.
	var mark *abi.Request
	var marking, modeHead abi.Pending
	if k != abi.KindLock {
		switch mode, known := c.cachedDeletionMode(); {
		case !known:
			modeHead = c.start(c.deletionModeHead())
		case mode == deleteByTombstone:
			mark = c.manifestHead(tag)
			marking = c.start(mark)
		}
	}
	blob, err := c.uploadStream(body)
	if err != nil {
		return 0, err
	}
	if modeHead != 0 {
		mode, err := c.readDeletionMode(modeHead)
		if err != nil {
			return 0, err
		}
		if mode == deleteByTombstone {
			mark = c.manifestHead(tag)
		}
	}
	if mark != nil {
		digest, _, err := c.manifestDigestStarted(tag, mark, marking)
		if err != nil {
			return 0, err
		}
		if digest == tombstoneDigest {
			if err := c.putManifest(s.markerTag(k, mac), tombstone); err != nil {
				return 0, err
			}
		}
	}
	raw := s.mem.Bytes(func(b []byte) []byte { return s.lay.appendManifest(b, k, mac, blob) })
	if err := c.putManifest(tag, raw); err != nil {
		return 0, err
	}
	if k == abi.KindLock {
		if err := c.releasedLockPut(mac); err != nil {
			return 0, err
		}
	}
	if cacheable(k) {
		s.h.CacheSet(key, s.cacheValue(blob))
	}
	return uint64(blob.Size), nil
}

// Get returns the bytes of object (k, mac), or of rng within them. Whole
// objects are verified against their digest by the host as they are read.
func (s *Store) Get(k abi.Kind, mac abi.MAC, rng *abi.Range) (abi.Stream, error) {
	if err := s.ready(k, "get ", " from "); err != nil {
		return 0, err
	}
	tag, key := s.objectKey(k, mac)
	c := s.newCall("get ", tag, " from ")
	if cacheable(k) {
		if v, ok := s.h.CacheGet(key); ok {
			if blob, ok := parseCacheValue(v); ok {
				st, err := c.fetch(blob, rng)
				if codeOf(err) != abi.ErrNotFound {
					return st, err
				}
			}
			// Deleted, or a blob the registry no longer has: ask the tag.
			s.h.CacheRemove(key)
		}
	}
	blob, err := c.resolve(k, tag)
	if err != nil {
		return 0, err
	}
	st, err := c.fetch(blob, rng)
	if codeOf(err) == abi.ErrNotFound {
		return 0, errorf(abi.ErrNotFound, "%s: the object's blob %s is missing from the registry (was it garbage-collected?): put the object again",
			c.action(), blob.Digest)
	}
	if err != nil {
		return 0, err
	}
	if cacheable(k) {
		s.h.CacheSet(key, s.cacheValue(blob))
	}
	return st, nil
}

// resolve reads the manifest tagged tag and returns the blob of the kind-k
// object it describes. Tombstones and other kinds are missing objects. A
// manifest that does not match the Docker-Content-Digest of its answer is
// read again: a corrupted manifest could name the wrong blob.
func (c *call) resolve(k abi.Kind, tag string) (descriptor, error) {
	d, err := c.getDoc("manifest "+tag, c.s.manifestURL(tag), []abi.Header{acceptManifest}, maxManifest, headerDigest)
	if err != nil {
		return descriptor{}, err
	}
	if d.status == 404 {
		return descriptor{}, errorf(abi.ErrNotFound, "%s: no such object", c.action())
	}
	if d.status != 200 {
		return descriptor{}, d.err
	}
	layer, ok, err := parseManifest(d.data, c.s.lay.artifacts.of(k))
	if err != nil {
		return descriptor{}, errorf(abi.ErrOther, "%s: tag %s is not a Plakar object: %v: remove whatever else writes to repository %s",
			c.action(), tag, err, c.s.loc.Repository)
	}
	if !ok {
		return descriptor{}, errorf(abi.ErrNotFound, "%s: no such object (deleted)", c.action())
	}
	return layer, nil
}

// fetch downloads blob, whole or the range rng of it. The answer is
// retried until its status is good; its body is read by the host after
// the call, where a whole blob is verified against its digest (a ranged
// read cannot be: Kloset checks the MAC of every blob it reads from a
// packfile).
func (c *call) fetch(blob descriptor, rng *abi.Range) (abi.Stream, error) {
	s := c.s
	if rng != nil {
		return c.fetchRange(blob, rng)
	}
	resp, err := c.exchange(c.request("GET", s.blobURL(blob.Digest)))
	if err != nil {
		return 0, err
	}
	if resp.Status != 200 {
		return 0, s.fail(c.action(), resp)
	}
	s.h.Verify(resp.Body, blob.Digest, uint64(blob.Size))
	return resp.Body, nil
}

// fetchRange is fetch of the bytes rng of blob, through the host's
// read-ahead windows: the host serves the bytes when a window it holds has
// them, or names the window of the blob to fetch, which holds the range;
// the guest asks the registry for it and hands the answer back for the
// host to keep and slice (see RATIONALE.md, "Read-ahead windows").
func (c *call) fetchRange(blob descriptor, rng *abi.Range) (abi.Stream, error) {
	st, err := c.fetchWindow(blob, rng, true)
	if kf, ok := err.(keepFailed); ok {
		// The window was not kept: a whole blob whose bytes do not match
		// its digest (the registry's copy is damaged, or the network
		// altered it), or a cache that cannot write. The read is still
		// served, by a request for its range alone: Kloset checks what it
		// reads against its MAC, and so tells which of its chunks are
		// damaged, where the window's failure would fail the whole read.
		c.s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: %s: %v; reading the range alone", c.action(), kf.err))
		return c.fetchWindow(blob, rng, false)
	}
	return st, err
}

// keepFailed is the host's refusal to keep a fetched window.
type keepFailed struct{ err error }

func (k keepFailed) Error() string { return k.err.Error() }

// fetchWindow is fetchRange through the host's windows (plan), or of the
// range alone.
func (c *call) fetchWindow(blob descriptor, rng *abi.Range, plan bool) (abi.Stream, error) {
	s := c.s
	size := uint64(blob.Size)
	if rng.Offset >= size && size > 0 {
		return 0, s.rangeError(c.action(), rng.Offset, size)
	}
	win := *rng
	if plan {
		var held abi.Stream
		if held, win = s.h.Plan(blob.Digest, size, rng.Offset, rng.Length); held != 0 {
			return held, nil
		}
	}
	off := win.Offset
	last, want := rangeBounds(off, win.Length, size)
	if win.Offset > rng.Offset || win.Offset+want < rng.Offset+min(uint64(rng.Length), size-min(rng.Offset, size)) {
		return 0, errorf(abi.ErrOther, "%s: the host planned the window %d+%d for the range %d+%d: the host and the guest disagree on the contract",
			c.action(), win.Offset, win.Length, rng.Offset, rng.Length)
	}
	whole := off == 0 && want == size && size > 0
	var hdr []abi.Header
	if !whole {
		byteRange := s.mem.String(func(b []byte) []byte {
			b = strconv.AppendUint(append(b, "bytes="...), off, 10)
			return strconv.AppendUint(append(b, '-'), last, 10)
		})
		hdr = []abi.Header{{"Range", byteRange}}
	}
	resp, err := c.exchange(c.request("GET", s.blobURL(blob.Digest), hdr...))
	if err != nil {
		return 0, err
	}
	var body abi.Stream
	switch {
	case resp.Status == 206 && !whole:
		got := resp.Get("Content-Range")
		if start, ok := contentRangeStart(got); !ok || start != off {
			s.discard(resp)
			return 0, errorf(abi.ErrOther, "%s: registry %s answered Content-Range %q to Range bytes=%d-%d: refusing bytes that may be the wrong ones",
				c.action(), s.loc.Registry, got, off, last)
		}
		// Slice guards against a registry sending more than asked.
		body = resp.Body
		if n, ok := parseDecimal(resp.Get("Content-Length")); !ok || n != want {
			body = s.h.Slice(resp.Body, 0, want)
		}
	case resp.Status == 200:
		// The whole blob: asked for, or the registry ignored Range.
		if off >= size {
			s.discard(resp)
			return 0, s.rangeError(c.action(), off, size)
		}
		s.h.Verify(resp.Body, blob.Digest, size)
		body = resp.Body
		win = abi.Range{Offset: 0, Length: uint32(min(size, math.MaxUint32))}
		if size > math.MaxUint32 {
			return s.h.Slice(resp.Body, rng.Offset, uint64(rng.Length)), nil
		}
	case resp.Status == 416:
		s.discard(resp)
		return 0, s.rangeError(c.action(), off, size)
	default:
		return 0, s.fail(c.action(), resp)
	}
	st, err := s.h.Keep(body, blob.Digest, size, win, rng.Offset, rng.Length)
	if err != nil {
		if plan {
			return 0, keepFailed{err}
		}
		return 0, errorf(abi.ErrOther, "%s: %v", c.action(), err)
	}
	return st, nil
}

func (s *Store) rangeError(action string, off, size uint64) error {
	return errorf(abi.ErrRangeNotSatisfiable, "%s: offset %d is past the end of the object (%d bytes)", action, off, size)
}

// rangeBounds returns the last byte to ask for and how many bytes the
// caller gets. HTTP ranges cannot be empty, so a zero length asks for one
// byte and keeps none. A range that runs past the end is clipped to it, as
// registries disagree there (416 or a short 206).
func rangeBounds(off uint64, length uint32, size uint64) (last, want uint64) {
	if length == 0 {
		return off, 0
	}
	last = off + uint64(length) - 1
	if last < off { // overflow: clip to the largest offset
		last = ^uint64(0)
	}
	if off < size && last >= size {
		last = size - 1
	}
	return last, last - off + 1
}

// contentRangeStart parses the first byte of "bytes 10-19/100".
func contentRangeStart(v string) (uint64, bool) {
	unit, spec, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return 0, false
	}
	first, _, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, false
	}
	return parseDecimal(first)
}

// parseDecimal is strconv.ParseUint(s, 10, 64), digits only, without
// its generality: each ranged get parses two numbers, and the sandbox
// runs strconv's checks several times slower than this loop.
func parseDecimal(s string) (uint64, bool) {
	if len(s) == 0 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		d := uint64(s[i] - '0')
		if d > 9 || n > (math.MaxUint64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
