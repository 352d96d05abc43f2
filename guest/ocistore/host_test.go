package ocistore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// testHost is a minimal abi.Host over net/http for these tests. It keeps
// to the contract the store relies on: streams count and hash what goes
// through them, Verify fails at the end, Slice consumes, Read returns
// nothing at the end. Unlike the real one, host/session (which the host's
// tests run the store over), it records requests and catches response
// bodies the store leaves open.
type testHost struct {
	t      testing.TB
	base   string // http://127.0.0.1:port
	client *http.Client

	mu       sync.Mutex
	streams  map[abi.Stream]*testStream
	next     abi.Stream
	cache    map[string]string
	requests []string // "METHOD path status"
	events   []string // "request URI" when a request is made, "read URI" at its answer's first read

	// Started requests, performed at once: the requests are recorded in
	// the order the store made them.
	pending   map[abi.Pending]startedRequest
	started   abi.Pending
	abandoned int // started and never finished
	slices    int // streams.slice calls
	closes    int // streams.close calls
}

type startedRequest struct {
	resp *abi.Response
	err  error
}

func newTestHost(t testing.TB, base string) *testHost {
	return &testHost{t: t, base: base, client: &http.Client{}, streams: map[abi.Stream]*testStream{}, cache: map[string]string{}, pending: map[abi.Pending]startedRequest{}}
}

type testStream struct {
	r      io.Reader
	c      io.Closer
	h      hash.Hash
	n      uint64
	owned  bool // added by the test (a Put body): the store need not close it
	verify bool
	want   string
	wantN  uint64
	err    error
	uri    string // of the request a response body answers
	read   bool
	empty  bool // an answer's body of Content-Length 0, which the store may leave to the host
}

func (s *testStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.h.Write(p[:n])
	s.n += uint64(n)
	if err == io.EOF && s.verify {
		if got := "sha256:" + hex.EncodeToString(s.h.Sum(nil)); got != s.want || s.n != s.wantN {
			s.err = fmt.Errorf("corrupted download: want %s (%d bytes), got %s (%d bytes)", s.want, s.wantN, got, s.n)
			return n, s.err
		}
	}
	return n, err
}

func (h *testHost) add(s *testStream) abi.Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	h.streams[h.next] = s
	return h.next
}

func (h *testHost) get(id abi.Stream) *testStream {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.streams[id]
	if s == nil {
		h.t.Errorf("stream %d is not open", id)
		return &testStream{r: strings.NewReader(""), h: sha256.New(), err: errors.New("not open")}
	}
	return s
}

func (h *testHost) remove(id abi.Stream) *testStream {
	s := h.get(id)
	h.mu.Lock()
	delete(h.streams, id)
	h.mu.Unlock()
	return s
}

// AddReader registers a body for Put.
func (h *testHost) AddReader(r io.Reader) abi.Stream {
	return h.add(&testStream{r: r, h: sha256.New(), owned: true})
}

// Take hands the stream Get returned over to the test.
func (h *testHost) Take(id abi.Stream) io.ReadCloser {
	s := h.remove(id)
	return struct {
		io.Reader
		io.Closer
	}{s, closerFunc(func() error {
		if s.c != nil {
			return s.c.Close()
		}
		return nil
	})}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// endCall does what the host does when an export returns: it closes what is
// left, and here fails the test for response bodies the store forgot (but
// empty ones, which discard leaves to the host).
func (h *testHost) endCall() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, r := range h.pending {
		// The host cancels what was never finished, and closes its answer.
		h.abandoned++
		if r.resp != nil {
			h.streams[r.resp.Body].c.Close()
			delete(h.streams, r.resp.Body)
		}
		delete(h.pending, p)
	}
	for id, s := range h.streams {
		if !s.owned && !s.empty {
			h.t.Errorf("stream %d (a response body) left open by the store", id)
		}
		if s.c != nil {
			s.c.Close()
		}
		delete(h.streams, id)
	}
}

func (h *testHost) RoundTrip(req *abi.Request) (*abi.Response, error) {
	url := req.URL
	switch {
	case strings.HasPrefix(url, "/"):
		url = h.base + url
	case !strings.HasPrefix(url, h.base+"/"):
		return nil, fmt.Errorf("request to %s is outside the store's registry: refused", url)
	}
	var body io.Reader
	switch req.BodyKind {
	case abi.BodyBytes:
		body = bytes.NewReader(req.Bytes)
	case abi.BodyStreamed:
		// Hide the stream's concrete type so that net/http sends it
		// chunked, as the real host does.
		body = struct{ io.Reader }{h.get(req.Stream)}
	}
	hr, err := http.NewRequest(req.Method, url, body)
	if err != nil {
		return nil, err
	}
	for _, hd := range req.Header {
		hr.Header.Add(hd[0], hd[1])
	}
	resp, err := h.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the registry: %v", err)
	}
	h.mu.Lock()
	h.requests = append(h.requests, fmt.Sprintf("%s %s %d", req.Method, hr.URL.RequestURI(), resp.StatusCode))
	h.events = append(h.events, "request "+hr.URL.RequestURI())
	h.mu.Unlock()
	var hdr []abi.Header
	for k, vs := range resp.Header {
		for _, v := range vs {
			hdr = append(hdr, abi.Header{k, v})
		}
	}
	id := h.add(&testStream{r: resp.Body, c: resp.Body, h: sha256.New(), uri: hr.URL.RequestURI(), empty: resp.Header.Get("Content-Length") == "0"})
	return &abi.Response{Status: resp.StatusCode, Header: hdr, Body: id}, nil
}

func (h *testHost) Start(req *abi.Request) abi.Pending {
	resp, err := h.RoundTrip(req)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.started++
	h.pending[h.started] = startedRequest{resp, err}
	return h.started
}

func (h *testHost) Finish(p abi.Pending) (*abi.Response, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.pending[p]
	if !ok {
		h.t.Errorf("request %d finished but not pending", p)
		return nil, fmt.Errorf("request %d is not pending", p)
	}
	delete(h.pending, p)
	return r.resp, r.err
}

func (h *testHost) Read(id abi.Stream, p []byte) (int, error) {
	if len(p) == 0 {
		h.t.Errorf("streams.read of stream %d into 0 bytes", id)
	}
	s := h.get(id)
	if !s.read && s.uri != "" {
		s.read = true
		h.mu.Lock()
		h.events = append(h.events, "read "+s.uri)
		h.mu.Unlock()
	}
	n, err := io.ReadAtLeast(s, p, 1)
	if err == io.EOF || err == nil || n == 0 {
		return n, err
	}
	return n, nil // the error shows again at the next read
}

func (h *testHost) Digest(id abi.Stream) (string, uint64) {
	s := h.get(id)
	return "sha256:" + hex.EncodeToString(s.h.Sum(nil)), s.n
}

func (h *testHost) Slice(id abi.Stream, skip, length uint64) abi.Stream {
	h.mu.Lock()
	h.slices++
	h.mu.Unlock()
	src := h.remove(id)
	r := io.MultiReader(readerFunc(func([]byte) (int, error) {
		if _, err := io.CopyN(io.Discard, src, int64(skip)); err != nil && err != io.EOF {
			return 0, err
		}
		return 0, io.EOF
	}), io.LimitReader(src, int64(length)))
	return h.add(&testStream{r: r, c: src.c, h: sha256.New()})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func (h *testHost) Verify(id abi.Stream, digest string, size uint64) {
	s := h.get(id)
	// As every host, a copy of what it keeps (abi.Host).
	s.verify, s.want, s.wantN = true, strings.Clone(digest), size
}

func (h *testHost) Close(id abi.Stream) {
	h.mu.Lock()
	h.closes++
	h.mu.Unlock()
	if s := h.remove(id); s.c != nil {
		s.c.Close()
	}
}

func (h *testHost) CacheGet(key string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.cache[key]
	return v, ok
}

func (h *testHost) CacheSet(key, value string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cache[strings.Clone(key)] = strings.Clone(value)
}

func (h *testHost) CacheRemove(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.cache, key)
}

// Plan and Keep are the windows interface of a host without read-ahead:
// every read fetches its range, as a host whose cache is off answers.
func (h *testHost) Plan(_ string, _, off uint64, n uint32) (abi.Stream, abi.Range) {
	return 0, abi.Range{Offset: off, Length: n}
}

func (h *testHost) Keep(body abi.Stream, _ string, size uint64, window abi.Range, off uint64, n uint32) (abi.Stream, error) {
	want := uint64(n)
	if off < size {
		want = min(want, size-off)
	}
	if off == window.Offset && want == uint64(window.Length) {
		return body, nil
	}
	return h.Slice(body, off-window.Offset, want), nil
}

func (h *testHost) Log(level abi.Level, msg string) {
	if strings.Contains(strings.ToLower(msg), "authorization") {
		h.t.Errorf("log line mentions credentials: %s", msg)
	}
}

// takeRequests returns the requests made since the last call.
func (h *testHost) takeRequests() []string { return h.take(&h.requests) }

// takeEvents returns the events recorded since the last call.
func (h *testHost) takeEvents() []string { return h.take(&h.events) }

func (h *testHost) take(log *[]string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := *log
	*log = nil
	return l
}
