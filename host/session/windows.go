package session

import (
	"bytes"
	"fmt"
	"math"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/blobcache"
)

// Plan is windows.plan. Without read-ahead (no Windows in the Config), or
// for a digest that is not sha256, the window is the read itself.
func (s *Session) Plan(digest string, size, off uint64, length uint32) (abi.Stream, abi.Range) {
	exact := abi.Range{Offset: off, Length: length}
	if s.env.windows == nil || !strings.HasPrefix(digest, "sha256:") {
		return 0, exact
	}
	digest = strings.Clone(digest) // lent (abi.Host)
	s.mu.Lock()
	s.planned, s.plannedSize = digest, size
	s.mu.Unlock()
	// A window this call planned and did not keep (a request that failed
	// before a retry) would make this read wait for itself.
	s.releaseClaims(digest)
	held, fetch, cl, err := s.env.windows.Plan(s.ctx, digest, size, off, uint64(length))
	switch {
	case err != nil:
		// Cancelled while waiting: the request fails the same way.
		return 0, exact
	case held != nil:
		return s.heldStream(held), abi.Range{}
	case cl == nil || fetch.N > math.MaxUint32:
		cl.Release()
		return 0, exact
	}
	s.mu.Lock()
	s.claims = append(s.claims, cl)
	s.mu.Unlock()
	return 0, abi.Range{Offset: fetch.Off, Length: uint32(fetch.N)}
}

// Planned is the blob of the last read the guest planned in this session
// (Plan): its digest and size, "" when none was planned.
func (s *Session) Planned() (digest string, size uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.planned, s.plannedSize
}

// Held returns the n bytes at off of the blob digest, of size bytes, when
// a window of the read-ahead cache holds them, and nil otherwise (see
// blobcache.Cache.Held).
func (e *Env) Held(digest string, size, off, n uint64) []byte {
	if e.windows == nil {
		return nil
	}
	return e.windows.Held(digest, size, off, n)
}

func (s *Session) heldStream(b []byte) abi.Stream {
	st := newStream(bytes.NewReader(b))
	st.hint = int64(len(b))
	return s.add(st)
}

// Keep is windows.keep. The body of a window the host planned is read
// now, to its end, into the cache, and the read served from there; any
// other body is sliced to the read as it streams.
func (s *Session) Keep(body abi.Stream, digest string, size uint64, window abi.Range, off uint64, length uint32) (abi.Stream, error) {
	if off < window.Offset {
		s.Close(body)
		return 0, fmt.Errorf("windows.keep of offset %d from a window that starts at %d: the guest asked for the wrong window", off, window.Offset)
	}
	want := uint64(length)
	if off < size {
		want = min(want, size-off)
	}
	cl := s.takeClaim(digest, window)
	if cl == nil {
		// Not planned (read-ahead is off), or the registry sent the whole
		// blob where a window was planned: not kept. A body that is the
		// read already needs no slice.
		if off == window.Offset && want == uint64(window.Length) {
			return body, nil
		}
		return s.Slice(body, off-window.Offset, want), nil
	}
	defer cl.Release()
	st := s.remove(body)
	if st == nil {
		return 0, notOpen(body)
	}
	data, err := cl.Fill(st, off, want)
	st.Close()
	if err != nil {
		return 0, err
	}
	return s.heldStream(data), nil
}

// takeClaim removes from the session the claim of the window of digest,
// if the host planned one.
func (s *Session) takeClaim(digest string, window abi.Range) *blobcache.Claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, cl := range s.claims {
		if r := cl.Range(); cl.Digest() == digest && r.Off == window.Offset && r.N == uint64(window.Length) {
			s.claims = append(s.claims[:i], s.claims[i+1:]...)
			return cl
		}
	}
	return nil
}

// releaseClaims releases the windows planned and never kept (a failed
// request), of digest or of every blob when digest is "", so that the
// reads waiting for them go on.
func (s *Session) releaseClaims(digest string) {
	s.mu.Lock()
	var mine []*blobcache.Claim
	kept := s.claims[:0]
	for _, cl := range s.claims {
		if digest == "" || cl.Digest() == digest {
			mine = append(mine, cl)
		} else {
			kept = append(kept, cl)
		}
	}
	s.claims = kept
	s.mu.Unlock()
	for _, cl := range mine {
		cl.Release()
	}
}
