package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/url"
	"strings"

	"github.com/plakar-oci/ocistore/host/blobcache"
)

var errClosed = errors.New("read from a closed stream: it was closed by the guest or when its export call returned")

// stream is a byte stream of a session. Every byte read through it, by
// whoever reads, is counted and hashed on the way: the hash is fed from the
// caller's buffer, so the bytes are not copied for it.
//
// A stream is not safe for concurrent reads, like any io.Reader; its
// session's table is.
type stream struct {
	r   io.Reader
	c   io.Closer       // released by Close: a response body, or the stream a slice reads from
	ctx context.Context // checked before each read of a reader that cannot see it; nil otherwise
	h   hash.Hash
	n   uint64
	sum [sha256.Size]byte // Sum's destination, so that Digest does not allocate for it

	capped bool     // a response body: streams.read stops at the document size limit
	hint   int64    // bytes left according to Content-Length, or -1: sizes streams.read's buffer
	from   *url.URL // where a response came from, for messages
	wrap   bool     // name the response in read errors (response bodies, not slices of them)

	verify bool
	want   string
	wantN  uint64

	err    error // sticky: a failed verification, or closed
	closed bool

	// pre: every byte was counted and hashed when the stream was made (a
	// put body read ahead, see ReadAhead), so reads do not count them again.
	pre bool
}

func newStream(r io.Reader) *stream {
	return &stream{r: r, h: sha256.New(), hint: -1}
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.ctx != nil {
		if err := s.ctx.Err(); err != nil {
			return 0, err
		}
	}
	n, err := s.r.Read(p)
	if n > 0 {
		if !s.pre {
			s.h.Write(p[:n])
			s.n += uint64(n)
		}
		if s.hint >= 0 {
			s.hint = max(s.hint-int64(n), 0)
		}
	}
	switch {
	case err == io.EOF:
		if s.verify {
			if verr := s.check(); verr != nil {
				s.err = verr
				return n, verr
			}
		}
	case err != nil && s.wrap && s.from != nil:
		err = fmt.Errorf("reading the response from %s: %w", where(s.from), err)
	}
	return n, err
}

// Close releases what the stream reads from. Readers the host added are
// left alone: they belong to whoever handed them over.
func (s *stream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.err == nil {
		s.err = errClosed
	}
	if s.c != nil {
		return s.c.Close()
	}
	return nil
}

// digest is "sha256:<hex>" of the bytes read so far.
func (s *stream) digest() string {
	var b [len("sha256:") + 2*sha256.Size]byte
	copy(b[:], "sha256:")
	hex.Encode(b[len("sha256:"):], s.h.Sum(s.sum[:0]))
	return string(b[:])
}

func (s *stream) check() error {
	if !strings.HasPrefix(s.want, "sha256:") {
		return fmt.Errorf("cannot verify the download against %q: only sha256 digests are supported", s.want)
	}
	got := s.digest()
	if s.n == s.wantN && got == s.want {
		return nil
	}
	return fmt.Errorf("%s: expected %s (%d bytes), got %s (%d bytes): the registry or the network altered the data; try again", blobcache.Corrupted, s.want, s.wantN, got, s.n)
}

// sliceReader reads length bytes of src after skipping skip. The skip is
// done on the first read, not when the slice is made, so that making it
// never blocks.
type sliceReader struct {
	src        *stream
	skip, left uint64
}

func (r *sliceReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	for r.skip > 0 {
		// io.Discard reads into a pooled buffer: skipping allocates
		// nothing per call.
		n, err := io.CopyN(io.Discard, r.src, int64(min(r.skip, math.MaxInt64)))
		r.skip -= uint64(n)
		if err == io.EOF {
			r.skip, r.left = 0, 0
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
	}
	if uint64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.src.Read(p)
	r.left -= uint64(n)
	return n, err
}
