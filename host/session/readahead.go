package session

import (
	"context"
	"crypto/sha256"
	"hash"
	"io"
	"sync"

	"github.com/plakar-oci/ocistore/abi"
)

// DefaultReadAheadLimit is the largest put body ReadAhead reads ahead when
// given no limit: Kloset's packfiles (20 MiB by default) and states fit.
const DefaultReadAheadLimit = 32 << 20

// spoolChunk is the unit of the memory a body is spooled into: bodies are
// kept in pooled chunks rather than one growing slice, so that spooling
// never copies twice and never allocates a large object per put.
const spoolChunk = 1 << 20

var chunkPool = sync.Pool{New: func() any { b := make([]byte, spoolChunk); return &b }}

// Body is a put body the host has read before the guest sees it (see
// ReadAhead). Its stream is added to a session with AddBody. A Body that
// never gets there must be released with Release.
type Body struct {
	r      io.Reader // what the stream reads: the spool, then the rest
	whole  bool      // read ahead to its end: h and n cover every byte
	h      hash.Hash
	n      uint64
	chunks []*[]byte // the spool, given back on Release
}

// ReadAhead prepares a put body. When the whole of r fits in limit bytes
// (DefaultReadAheadLimit when limit is 0; never when limit is negative), it
// is read to its end now and hashed, so that streams.digest of its stream
// gives the digest and length of the whole body before the guest sends a
// byte of it: the guest can then upload the blob in one request whose URL
// carries the digest (see RATIONALE.md). The WIT defines the digest over
// "every byte that has been read from the stream so far, by the guest or by
// the host": a host that reads ahead reads everything or nothing, so that
// a non-zero length before any send means the whole body.
//
// An io.ReadSeeker is hashed in place and rewound, costing no memory; any
// other reader is spooled into memory. A body longer than limit is not read
// ahead: its stream hashes as it goes, as AddReader's does, and the bytes
// already spooled are sent first.
//
// ctx is checked between chunks. A failing r fails ReadAhead.
func ReadAhead(ctx context.Context, r io.Reader, limit int64) (*Body, error) {
	switch {
	case limit == 0:
		limit = DefaultReadAheadLimit
	case limit < 0:
		return &Body{r: r}, nil
	}
	if rs, ok := r.(io.ReadSeeker); ok {
		if b, ok, err := readAheadSeeker(rs, limit); ok || err != nil {
			return b, err
		}
	}
	b := &Body{h: sha256.New()}
	for {
		if err := ctx.Err(); err != nil {
			b.Release()
			return nil, err
		}
		chunk := chunkPool.Get().(*[]byte)
		b.chunks = append(b.chunks, chunk)
		// One byte more than the limit tells a body of exactly limit
		// bytes from a longer one.
		want := min(int64(len(*chunk)), limit+1-int64(b.n))
		n, err := io.ReadFull(r, (*chunk)[:want])
		b.h.Write((*chunk)[:n])
		b.n += uint64(n)
		spooled := spoolReader{chunks: b.chunks, n: b.n}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			b.r, b.whole = &spooled, true
			return b, nil
		case err != nil:
			b.Release()
			return nil, err
		case int64(b.n) > limit:
			// Too long to hold: send what was spooled, then the rest,
			// hashing as it goes.
			b.r, b.h, b.n = io.MultiReader(&spooled, r), nil, 0
			return b, nil
		}
	}
}

// readAheadSeeker hashes the rest of rs and rewinds it, if it is no longer
// than limit. ok is false when rs cannot seek or is too long: the caller
// then reads it as any reader.
func readAheadSeeker(rs io.ReadSeeker, limit int64) (b *Body, ok bool, err error) {
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, false, nil // a pipe or a terminal: not seekable after all
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = rs.Seek(start, io.SeekStart)
	}
	if err != nil {
		return nil, false, err // moved and cannot come back: r is lost
	}
	if end-start > limit {
		return nil, false, nil
	}
	h := sha256.New()
	// A *bytes.Reader writes its slice to the hash directly.
	n, err := io.Copy(h, rs)
	if err != nil {
		return nil, false, err
	}
	if _, err := rs.Seek(start, io.SeekStart); err != nil {
		return nil, false, err
	}
	// The stream sends exactly the bytes hashed: a file that grew since
	// is cut, one that changed fails the registry's digest check.
	return &Body{r: io.LimitReader(rs, n), whole: true, h: h, n: uint64(n)}, true, nil
}

// Whole tells whether the body was read ahead to its end.
func (b *Body) Whole() bool { return b.whole }

// Size is the length of a body read ahead whole.
func (b *Body) Size() uint64 { return b.n }

// Release gives the spool back. It may be called more than once; the
// body's stream must not be read afterwards.
func (b *Body) Release() {
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	b.chunks = nil
	b.r = eofReader{}
}

// Close is Release, for the stream that reads b.
func (b *Body) Close() error { b.Release(); return nil }

// AddBody registers a body prepared by ReadAhead, as AddReader does a
// reader, and returns its handle. The session releases the body when the
// stream is closed. A body read ahead whole reports its digest and length
// at once, and sending it does not count its bytes again.
func (s *Session) AddBody(b *Body) abi.Stream {
	st := newStream(b.r)
	st.ctx = s.ctx
	st.c = b
	if b.whole {
		st.h, st.n, st.pre = b.h, b.n, true
		st.hint = int64(b.n)
	}
	return s.add(st)
}

// spoolReader reads the first n bytes of chunks.
type spoolReader struct {
	chunks []*[]byte
	n, off uint64
}

func (r *spoolReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	c := *r.chunks[r.off/spoolChunk]
	i := r.off % spoolChunk
	m := copy(p, c[i:min(uint64(len(c)), i+r.n-r.off)])
	r.off += uint64(m)
	return m, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
