package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/plakar-oci/ocistore/abi"
)

var errRequestOver = errors.New("the request this stream was the body of is over")

// RoundTrip is http.round-trip. HTTP error statuses are responses; the error
// is for network, TLS and policy failures, and says what to do about them.
//
// A BodyStreamed stream is never read after RoundTrip returns, so that its
// digest is settled.
func (s *Session) RoundTrip(ar *abi.Request) (*abi.Response, error) {
	resp, err := s.do(s.ctx, cloneRequest(ar))
	if err != nil {
		return nil, err
	}
	return s.answer(resp, nil)
}

// cloneRequest copies a request the guest lent for its export call only
// (abi.Host): the transport may finish writing a body after the answer
// came, and an answer's stream keeps the URL for its messages.
func cloneRequest(ar *abi.Request) *abi.Request {
	c := *ar
	c.Method, c.URL = strings.Clone(ar.Method), strings.Clone(ar.URL)
	c.Header = make([]abi.Header, len(ar.Header))
	for i, h := range ar.Header {
		c.Header[i] = abi.Header{strings.Clone(h[0]), strings.Clone(h[1])}
	}
	c.Bytes = bytes.Clone(ar.Bytes)
	return &c
}

// do performs the HTTP part of a round trip, in ctx.
func (s *Session) do(ctx context.Context, ar *abi.Request) (*http.Response, error) {
	u, err := s.env.resolve(ar.URL)
	if err != nil {
		return nil, err
	}
	// The URL is filled in afterwards: it is already parsed and checked.
	req, err := http.NewRequestWithContext(ctx, ar.Method, "", nil)
	if err != nil {
		return nil, fmt.Errorf("cannot make the request %s %s: %v: the guest built it wrong", ar.Method, where(u), err)
	}
	req.URL, req.Host = u, ""

	contentLength := int64(-1)
	for _, h := range ar.Header {
		// Go writes Content-Length from req.ContentLength, not from the
		// header; a streamed body whose length the guest knows keeps
		// it, for registries that refuse chunked uploads.
		if strings.EqualFold(h[0], "Content-Length") {
			if n, err := strconv.ParseInt(h[1], 10, 64); err == nil && n >= 0 {
				contentLength = n
			}
			continue
		}
		req.Header.Add(h[0], h[1])
	}

	var body *requestBody
	switch ar.BodyKind {
	case abi.BodyEmpty:
		// Go sends Content-Length: 0 on POST, PUT and PATCH.
	case abi.BodyBytes:
		if b := ar.Bytes; len(b) > 0 {
			req.ContentLength = int64(len(b))
			req.Body = io.NopCloser(bytes.NewReader(b))
			// Lets the client replay the body on a 307 or 308.
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		}
	case abi.BodyStreamed:
		st := s.lookup(ar.Stream)
		if st == nil {
			return nil, fmt.Errorf("body of %s %s: %w", ar.Method, where(u), notOpen(ar.Stream))
		}
		body = &requestBody{st: st}
		req.Body = body
		// -1: chunked. 0 would mean the same to Go, so only a positive
		// length is passed on.
		if contentLength > 0 {
			req.ContentLength = contentLength
		} else {
			req.ContentLength = -1
		}
	default:
		return nil, fmt.Errorf("request %s %s has body kind %d, which the contract does not define: the guest and host disagree on the ABI", ar.Method, where(u), ar.BodyKind)
	}

	// Every request: the connection counts each request's bytes from the
	// moment it is got for it (AnswerFirst).
	trace := &connTrace{}
	req = req.WithContext(trace.context(req.Context()))
	resp, err := s.env.client.Do(req)
	if body != nil {
		body.finish()
	}
	if req.Body != nil && err == nil {
		if cut := trace.check(resp); cut != nil {
			resp, err = nil, &url.Error{Op: req.Method, URL: req.URL.String(), Err: cut}
		}
	}
	if err != nil {
		err = s.explain(req, err, body)
		s.logRequest(req, 0, err)
		return nil, err
	}
	s.logRequest(req, resp.StatusCode, nil)
	return resp, nil
}

// answer makes the guest's response of resp, adding its body to the
// streams; closing the stream closes the body, then calls release.
func (s *Session) answer(resp *http.Response, release func()) (*abi.Response, error) {
	st := newStream(resp.Body)
	st.c = resp.Body
	if release != nil {
		st.c = releaser{resp.Body, release}
	}
	st.capped, st.wrap, st.from = true, true, resp.Request.URL
	st.hint = resp.ContentLength
	if resp.Request.Method == http.MethodHead || resp.Body == http.NoBody {
		st.hint = 0
	}
	h := s.add(st)
	if h == 0 {
		st.c.Close()
		return nil, errors.New("too many streams in one call: the guest leaks handles")
	}
	return &abi.Response{Status: resp.StatusCode, Header: flatten(resp.Header), Body: h}, nil
}

// releaser closes a response body, then releases what it depended on.
type releaser struct {
	io.Closer
	release func()
}

func (r releaser) Close() error {
	err := r.Closer.Close()
	r.release()
	return err
}

// logRequest logs a round trip at debug level, by path only: queries of
// upload locations carry upload state. The host logs requests rather than
// the guest because it already holds them parsed; the guest would spend
// more formatting the line than lifting the answer.
func (s *Session) logRequest(req *http.Request, status int, err error) {
	if !s.env.log.Enabled(s.ctx, slog.LevelDebug) {
		return
	}
	if err != nil {
		s.env.log.DebugContext(s.ctx, "request failed", "method", req.Method, "path", req.URL.Path, "error", err)
		return
	}
	s.env.log.DebugContext(s.ctx, "request", "method", req.Method, "path", req.URL.Path, "status", status)
}

// flatten lists a header as one entry per value, sorted by name so that the
// guest sees the same list for the same response. Values of one name keep
// their order.
func flatten(hdr http.Header) []abi.Header {
	n := 0
	for _, vs := range hdr {
		n += len(vs)
	}
	out := make([]abi.Header, 0, n)
	for k, vs := range hdr {
		for _, v := range vs {
			out = append(out, abi.Header{k, v})
		}
	}
	slices.SortStableFunc(out, func(a, b abi.Header) int { return strings.Compare(a[0], b[0]) })
	return out
}

// requestBody is a stream being sent as a request body. Go's transport may
// go on reading a body after the round trip returned; finish waits for a
// read in progress and stops later ones, so that the stream's count and
// digest no longer change once RoundTrip returns. The stream itself stays
// open in its session: the transport closing the body does not close it.
type requestBody struct {
	mu   sync.Mutex
	st   *stream
	done bool
	err  error // the first error of the stream itself, to tell it from a network one
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, errRequestOver
	}
	n, err := b.st.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *requestBody) Close() error { return nil }

func (b *requestBody) finish() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}
