package session

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/blobcache"
)

var _ abi.Host = (*Session)(nil)

// readChunk bounds the buffer of one streams.read when the length of what is
// left is unknown: documents are small, and a guest reading a large body
// this way loops anyway. knownChunk bounds it when the length is known
// (Content-Length), and the read then fills it: a tag list page of a
// thousand tags, 80 KB, takes one read rather than one per network read,
// and each is a round trip through the sandbox.
const (
	readChunk  = 32 << 10
	knownChunk = 1 << 20
)

// Session is what the host lends the guest during one export call: the
// requests it makes and the streams it sees. Handles are small integers,
// never 0 and never reused within a session.
//
// The stream table is safe for concurrent use; a single stream must not be
// read from two goroutines at once.
type Session struct {
	env *Env
	ctx context.Context

	mu      sync.Mutex
	streams handles[stream]
	inline  [4]*stream         // the streams' first backing array, allocated with the session
	started handles[pending]   // requests started and not yet finished (pending.go)
	claims  []*blobcache.Claim // windows planned and not yet kept (windows.go)
	// planned is the digest of the blob of the last read planned, of
	// plannedSize bytes (Planned).
	planned     string
	plannedSize uint64
}

// AddReader registers a reader of the host's, such as the body Kloset hands
// to Put, and returns its handle. The session never closes r.
func (s *Session) AddReader(r io.Reader) abi.Stream {
	st := newStream(r)
	// The reader knows nothing of ctx: checking it before every read is
	// what lets a cancelled call stop an upload.
	st.ctx = s.ctx
	return s.add(st)
}

func (s *Session) add(st *stream) abi.Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return abi.Stream(s.streams.add(st))
}

func (s *Session) lookup(h abi.Stream) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams.get(uint32(h))
}

func (s *Session) remove(h abi.Stream) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams.remove(uint32(h))
}

func notOpen(h abi.Stream) error {
	return fmt.Errorf("stream %d is not open (never opened, or already closed, sliced or taken): the guest used a stale handle", h)
}

func (s *Session) debugUnknown(op string, h abi.Stream) {
	s.env.log.Debug("stream operation on a handle that is not open", "op", op, "stream", uint32(h))
}

// ReadSize is how many bytes a streams.read of at most limit bytes should
// make room for: what is left when the length is known (Content-Length),
// which also lets the body report its end in the same read, and readChunk
// otherwise. The sandbox makes that room in guest memory and reads into it
// (Read), so that the bytes are copied once.
func (s *Session) ReadSize(h abi.Stream, limit uint32) (int, error) {
	st := s.lookup(h)
	if st == nil {
		return 0, notOpen(h)
	}
	if limit == 0 {
		return 0, fmt.Errorf("streams.read of stream %d with max 0: an empty result means the end of the stream, so ask for at least 1 byte", h)
	}
	size := int64(min(limit, readChunk))
	if st.hint >= 0 {
		size = min(int64(min(limit, knownChunk)), max(st.hint, 1))
	}
	return int(s.capRead(st, size)), nil
}

// Read is streams.read into p: at most len(p) bytes, and io.EOF at the end
// of the stream. A guest compiled with the host (NativeStore) reads into
// its own buffers this way.
func (s *Session) Read(h abi.Stream, p []byte) (int, error) {
	st := s.lookup(h)
	if st == nil {
		return 0, notOpen(h)
	}
	if len(p) == 0 {
		return 0, fmt.Errorf("streams.read of stream %d into 0 bytes: ask for at least 1 byte", h)
	}
	return s.fill(st, p[:s.capRead(st, int64(len(p)))])
}

// fill reads into p: at least a byte, and when the length of what is left
// is known, as much of it as p holds (one streams.read for a whole tag list
// page, not one per network read).
func (s *Session) fill(st *stream, p []byte) (int, error) {
	n, err := s.readInto(st, p)
	if err != nil {
		return 0, err
	}
	for st.hint >= 0 && n < len(p) {
		// An error here shows again at the next read.
		m, err := s.readInto(st, p[n:])
		if err != nil {
			break
		}
		n += m
	}
	return n, nil
}

// capRead bounds a read of a response body so that it sees at most one byte
// past the document size limit: enough to tell that the limit was crossed.
func (s *Session) capRead(st *stream, size int64) int64 {
	if !st.capped {
		return size
	}
	left := s.env.maxDoc - int64(min(st.n, math.MaxInt64))
	return max(min(size, left+1), min(size, 1))
}

func (s *Session) readInto(st *stream, p []byte) (int, error) {
	// Loop over empty reads like io.ReadAtLeast(p, 1), with a bound so
	// that a broken reader cannot spin forever.
	for range 100 {
		n, err := st.Read(p)
		if err != nil && err != io.EOF {
			return 0, err
		}
		if st.capped && int64(min(st.n, math.MaxInt64)) > s.env.maxDoc {
			return 0, fmt.Errorf("the response from %s is larger than %d bytes, the limit for registry documents (manifests, tag lists): the registry answered with something that is not one of the store's documents, which stay far below it: check that the location names the registry itself, not a proxy or a web server in front of it", where(st.from), s.env.maxDoc)
		}
		if n > 0 {
			return n, nil
		}
		if err == io.EOF {
			return 0, io.EOF
		}
	}
	return 0, io.ErrNoProgress
}

// Digest is streams.digest.
func (s *Session) Digest(h abi.Stream) (string, uint64) {
	st := s.lookup(h)
	if st == nil {
		s.debugUnknown("digest", h)
		return "", 0
	}
	return st.digest(), st.n
}

// Slice is streams.slice: h is consumed by the new stream, which counts and
// hashes its own bytes only.
func (s *Session) Slice(h abi.Stream, skip, length uint64) abi.Stream {
	st := s.remove(h)
	if st == nil {
		s.debugUnknown("slice", h)
		return 0
	}
	sl := newStream(&sliceReader{src: st, skip: skip, left: length})
	sl.c = st
	sl.capped, sl.from = st.capped, st.from
	if st.hint >= 0 {
		left := uint64(st.hint) - min(skip, uint64(st.hint))
		sl.hint = int64(min(left, length))
	}
	return s.add(sl)
}

// Verify is streams.verify.
func (s *Session) Verify(h abi.Stream, digest string, size uint64) {
	st := s.lookup(h)
	if st == nil {
		s.debugUnknown("verify", h)
		return
	}
	st.verify, st.want, st.wantN = true, strings.ToLower(strings.Clone(digest)), size // lent (abi.Host)
}

// Close is streams.close.
func (s *Session) Close(h abi.Stream) {
	st := s.remove(h)
	if st == nil {
		s.debugUnknown("close", h)
		return
	}
	if err := st.Close(); err != nil {
		s.env.log.Debug("closing a stream", "stream", uint32(h), "error", err)
	}
}

// Take removes a stream from the session and hands it to the host, which
// then owns it: the stream store.get returns. Reading it still counts,
// hashes and verifies; closing it closes the response body behind it.
func (s *Session) Take(h abi.Stream) (io.ReadCloser, error) {
	st := s.remove(h)
	if st == nil {
		return nil, notOpen(h)
	}
	return st, nil
}

// CloseAll closes every stream still in the session; the host calls it when
// the export call returns. (It is not named Close: abi.Host's Close closes
// one stream.)
func (s *Session) CloseAll() {
	s.abandon()
	s.releaseClaims("")
	s.mu.Lock()
	table := s.streams.drain()
	s.mu.Unlock()
	for _, st := range table {
		if err := st.Close(); err != nil {
			s.env.log.Debug("closing a stream left open", "error", err)
		}
	}
}

// Log is log.log.
func (s *Session) Log(level abi.Level, msg string) {
	l := slog.LevelInfo
	switch level {
	case abi.LevelDebug:
		l = slog.LevelDebug
	case abi.LevelWarn:
		l = slog.LevelWarn
	case abi.LevelError:
		l = slog.LevelError
	}
	s.env.log.Log(s.ctx, l, msg)
}

// CacheGet, CacheSet and CacheRemove are the cache interface, over the
// Env's cache.
func (s *Session) CacheGet(key string) (string, bool) { return s.env.cache.Get(key) }
func (s *Session) CacheSet(key, value string) {
	s.env.cache.Set(strings.Clone(key), strings.Clone(value)) // lent (abi.Host)
}
func (s *Session) CacheRemove(key string) { s.env.cache.Remove(key) }
