package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/plakar-oci/ocistore/abi"
)

// logBuffer collects what the Env logs, for tests that check warnings.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newEnv(t *testing.T, cfg Config) (*Env, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	env, err := NewEnv(cfg)
	if err != nil {
		t.Fatalf("NewEnv: %v", err)
	}
	return env, logs
}

func newRegistry(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return srv
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// testData is deterministic and not trivially compressible or repetitive
// at the chunk size, so that a misplaced chunk changes the digest.
func testData(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// onlyReader hides any WriterTo or Seeker, as a Kloset Put body may.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// sandboxRead is streams.read as the sandbox makes it: ReadSize, then Read
// into that room; an empty slice at the end of the stream.
func sandboxRead(s *Session, h abi.Stream, limit uint32) ([]byte, error) {
	size, err := s.ReadSize(h, limit)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := s.Read(h, buf)
	if err == io.EOF {
		return []byte{}, nil
	}
	return buf[:n], err
}

func roundTrip(t *testing.T, s *Session, req *abi.Request) *abi.Response {
	t.Helper()
	resp, err := s.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return resp
}

// readAll reads a stream as the guest does, through streams.read.
func readAll(s *Session, h abi.Stream, chunk uint32) ([]byte, error) {
	var out []byte
	for {
		b, err := sandboxRead(s, h, chunk)
		if err != nil {
			return out, err
		}
		if len(b) == 0 {
			return out, nil
		}
		out = append(out, b...)
	}
}

func TestStreamedUploadToRegistry(t *testing.T) {
	srv := newRegistry(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	data := testData(3<<20 + 12345)
	want := digestOf(data)

	resp := roundTrip(t, s, &abi.Request{Method: http.MethodPost, URL: "/v2/test/repo/blobs/uploads/"})
	if resp.Status != http.StatusAccepted {
		t.Fatalf("POST upload: status %d", resp.Status)
	}
	s.Close(resp.Body)
	loc := resp.Get("Location")
	if loc == "" {
		t.Fatal("POST upload: no Location")
	}

	body := s.AddReader(onlyReader{bytes.NewReader(data)})
	// The registry hands out locations; an absolute one on the registry
	// itself must be allowed.
	resp = roundTrip(t, s, &abi.Request{
		Method:   http.MethodPatch,
		URL:      srv.URL + loc,
		Header:   []abi.Header{{"Content-Type", "application/octet-stream"}},
		BodyKind: abi.BodyStreamed,
		Stream:   body,
	})
	if resp.Status != http.StatusAccepted {
		t.Fatalf("PATCH upload: status %d", resp.Status)
	}
	s.Close(resp.Body)
	got, n := s.Digest(body)
	if got != want || n != uint64(len(data)) {
		t.Fatalf("Digest after PATCH = %s (%d bytes), want %s (%d bytes)", got, n, want, len(data))
	}

	loc = resp.Get("Location")
	resp = roundTrip(t, s, &abi.Request{Method: http.MethodPut, URL: loc + "?digest=" + want})
	if resp.Status != http.StatusCreated {
		b, _ := readAll(s, resp.Body, 4096)
		t.Fatalf("PUT upload: status %d: %s", resp.Status, b)
	}
	if d := resp.Get("Docker-Content-Digest"); d != want {
		t.Fatalf("PUT upload: Docker-Content-Digest %q, want %q", d, want)
	}
	s.Close(resp.Body)

	resp = roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/v2/test/repo/blobs/" + want})
	if resp.Status != http.StatusOK {
		t.Fatalf("GET blob: status %d", resp.Status)
	}
	s.Verify(resp.Body, want, uint64(len(data)))
	rc, err := s.Take(resp.Body)
	if err != nil {
		t.Fatalf("Take: %v", err)
	}
	back, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the blob back: %v", err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("closing the taken stream: %v", err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("the blob read back differs from the one uploaded")
	}
	if _, err := s.Take(resp.Body); err == nil {
		t.Fatal("a taken stream can be taken again")
	}
}

func TestManifestThroughRead(t *testing.T) {
	srv := newRegistry(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	cfg := []byte("{}")
	cfgDigest := digestOf(cfg)
	resp := roundTrip(t, s, &abi.Request{
		Method: http.MethodPost, URL: "/v2/test/repo/blobs/uploads/?digest=" + cfgDigest,
		BodyKind: abi.BodyBytes, Bytes: cfg,
	})
	if resp.Status != http.StatusCreated {
		t.Fatalf("monolithic upload: status %d", resp.Status)
	}

	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[]}`, cfgDigest))
	mt := "application/vnd.oci.image.manifest.v1+json"
	resp = roundTrip(t, s, &abi.Request{
		Method: http.MethodPut, URL: "/v2/test/repo/manifests/latest",
		Header:   []abi.Header{{"content-type", mt}},
		BodyKind: abi.BodyBytes, Bytes: manifest,
	})
	if resp.Status != http.StatusCreated {
		b, _ := readAll(s, resp.Body, 4096)
		t.Fatalf("PUT manifest: status %d: %s", resp.Status, b)
	}

	resp = roundTrip(t, s, &abi.Request{
		Method: http.MethodGet, URL: "/v2/test/repo/manifests/latest",
		Header: []abi.Header{{"Accept", mt}},
	})
	if resp.Status != http.StatusOK {
		t.Fatalf("GET manifest: status %d", resp.Status)
	}
	// Names are canonical.
	if got := resp.Get("Content-Type"); got != mt {
		t.Fatalf("Content-Type %q, want %q", got, mt)
	}
	for _, h := range resp.Header {
		if h[0] != http.CanonicalHeaderKey(h[0]) {
			t.Fatalf("header name %q is not canonical", h[0])
		}
	}
	// A small max, so that the loop over streams.read is exercised.
	got, err := readAll(s, resp.Body, 7)
	if err != nil {
		t.Fatalf("reading the manifest: %v", err)
	}
	if !bytes.Equal(got, manifest) {
		t.Fatalf("manifest read back %q, want %q", got, manifest)
	}
	if d, n := s.Digest(resp.Body); d != digestOf(manifest) || n != uint64(len(manifest)) {
		t.Fatalf("Digest of the manifest = %s (%d), want %s (%d)", d, n, digestOf(manifest), len(manifest))
	}
}

func TestHeaders(t *testing.T) {
	var seen http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.Header().Add("Link", "<a>")
		w.Header().Add("Link", "<b>")
		w.Header().Set("X-Z", "z")
		w.Header().Set("Content-Length", "0")
	}))
	defer srv.Close()
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	resp := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/", Header: []abi.Header{
		{"accept", "a/b"}, {"Accept", "c/d"}, {"X-Thing", "1"},
	}})
	if got := seen.Values("Accept"); len(got) != 2 || got[0] != "a/b" || got[1] != "c/d" {
		t.Fatalf("server saw Accept %q, want [a/b c/d]", got)
	}
	var links []string
	for i, h := range resp.Header {
		if i > 0 && resp.Header[i-1][0] > h[0] {
			t.Fatalf("response headers not sorted: %q", resp.Header)
		}
		if h[0] == "Link" {
			links = append(links, h[1])
		}
	}
	if len(links) != 2 || links[0] != "<a>" || links[1] != "<b>" {
		t.Fatalf("Link values %q, want [<a> <b>]", links)
	}
	if b, err := sandboxRead(s, resp.Body, 100); err != nil || len(b) != 0 {
		t.Fatalf("Read of an empty body = %q, %v; want empty, nil", b, err)
	}
}

// TestRequestLog checks that the host logs each request at debug level,
// by path: queries of upload locations carry upload state.
func TestRequestLog(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	env, logs := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()
	roundTrip(t, s, &abi.Request{Method: http.MethodPatch, URL: "/v2/r/blobs/uploads/u1?_state=secret"})
	got := logs.String()
	if !strings.Contains(got, "method=PATCH path=/v2/r/blobs/uploads/u1 status=202") || strings.Contains(got, "secret") {
		t.Fatalf("log of the request:\n%s", got)
	}
}

func TestAllowList(t *testing.T) {
	var otherHits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherHits.Add(1)
		io.WriteString(w, "other")
	}))
	defer other.Close()
	otherHost := strings.TrimPrefix(other.URL, "http://")

	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, other.URL+"/stolen?token=secret", http.StatusTemporaryRedirect)
		case "/here":
			http.Redirect(w, r, "/there", http.StatusFound)
		case "/there":
			io.WriteString(w, "there")
		default:
			http.NotFound(w, r)
		}
	}))
	defer reg.Close()

	env, logs := newEnv(t, Config{Registry: reg.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	refused := func(t *testing.T, url, dest string, redirect bool) {
		t.Helper()
		_, err := s.RoundTrip(&abi.Request{Method: http.MethodGet, URL: url})
		var re *RefusedError
		if !errors.As(err, &re) {
			t.Fatalf("GET %s: error %v, want a RefusedError", url, err)
		}
		if re.Redirect != redirect {
			t.Fatalf("GET %s: Redirect = %v, want %v", url, re.Redirect, redirect)
		}
		msg := err.Error()
		if !strings.Contains(msg, dest) || !strings.Contains(msg, "outside the store's registry") {
			t.Fatalf("GET %s: message %q does not name %s as outside the store's registry", url, msg, dest)
		}
		if strings.Contains(msg, "secret") {
			t.Fatalf("message %q shows the query", msg)
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), dest) {
			t.Fatalf("refusal of %s not logged at warn level; logs:\n%s", dest, logs)
		}
	}

	t.Run("absolute URL to another host", func(t *testing.T) {
		refused(t, other.URL+"/v2/", other.URL+"/v2/", false)
	})
	t.Run("network-path reference to another host", func(t *testing.T) {
		refused(t, "//"+otherHost+"/v2/", other.URL+"/v2/", false)
	})
	t.Run("other scheme", func(t *testing.T) {
		refused(t, "ftp://"+strings.TrimPrefix(reg.URL, "http://")+"/x", "ftp://", false)
	})
	t.Run("redirect to another host", func(t *testing.T) {
		refused(t, "/away", other.URL+"/stolen", true)
	})
	if n := otherHits.Load(); n != 0 {
		t.Fatalf("the other host was reached %d times", n)
	}

	t.Run("relative path without slash", func(t *testing.T) {
		if _, err := s.RoundTrip(&abi.Request{Method: http.MethodGet, URL: "v2/"}); err == nil || !strings.Contains(err.Error(), "starting with /") {
			t.Fatalf("GET v2/: error %v, want one about the leading /", err)
		}
	})

	t.Run("redirect on the registry followed", func(t *testing.T) {
		resp := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/here"})
		if b, err := readAll(s, resp.Body, 100); err != nil || string(b) != "there" {
			t.Fatalf("GET /here: %d %q %v, want the body of /there", resp.Status, b, err)
		}
	})

	t.Run("allowed host", func(t *testing.T) {
		if err := env.Allow(otherHost); err != nil {
			t.Fatalf("Allow(%s): %v", otherHost, err)
		}
		resp := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/away"})
		if b, err := readAll(s, resp.Body, 100); err != nil || string(b) != "other" {
			t.Fatalf("GET /away once allowed: %d %q %v", resp.Status, b, err)
		}
		resp = roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: other.URL + "/x"})
		s.Close(resp.Body)
	})

	t.Run("bad allowed host", func(t *testing.T) {
		for _, h := range []string{"", "https://x", "x/y", "a@b"} {
			if err := env.Allow(h); err == nil {
				t.Errorf("Allow(%q) accepted", h)
			}
		}
	})
}

func TestAllowDefaultPort(t *testing.T) {
	env, _ := newEnv(t, Config{Registry: "https://registry.example", AllowedHosts: []string{"Auth.Example", "blobs.example:8443"}})
	for _, c := range []struct {
		url string
		ok  bool
	}{
		{"https://registry.example/v2/", true},
		{"https://REGISTRY.example:443/v2/", true},
		{"http://registry.example/v2/", false}, // no downgrade
		{"https://registry.example:444/v2/", false},
		{"https://auth.example/token", true},
		{"https://auth.example:443/token", true},
		{"https://auth.example:8443/token", false},
		{"http://auth.example/token", false},
		{"https://blobs.example:8443/b", true},
		{"https://blobs.example/b", false},
	} {
		_, err := env.resolve(c.url)
		if (err == nil) != c.ok {
			t.Errorf("resolve(%s): error %v, want allowed=%v", c.url, err, c.ok)
		}
	}
}

func TestNewEnvRejectsBadRegistry(t *testing.T) {
	for _, r := range []string{"", "127.0.0.1:5000", "ftp://x", "http://x/v2", "http://u:p@x", "http://x?q"} {
		if _, err := NewEnv(Config{Registry: r}); err == nil {
			t.Errorf("NewEnv(%q) accepted", r)
		}
	}
	if _, err := NewEnv(Config{Registry: "http://127.0.0.1:5000/"}); err != nil {
		t.Errorf("NewEnv with a trailing slash: %v", err)
	}
}

func TestCallerClientUntouched(t *testing.T) {
	client := &http.Client{}
	env, _ := newEnv(t, Config{Registry: "http://127.0.0.1:1", Client: client})
	if client.CheckRedirect != nil {
		t.Fatal("NewEnv changed the caller's client")
	}
	if env.client == client {
		t.Fatal("the Env uses the caller's client itself")
	}
}

// blobServer serves body for every request.
func blobServer(t *testing.T, body []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestVerify(t *testing.T) {
	body := []byte("the bytes the registry sends")
	srv := blobServer(t, body)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	get := func() abi.Stream {
		return roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/blob"}).Body
	}

	t.Run("good", func(t *testing.T) {
		h := get()
		// Upper-case hex is the same digest.
		s.Verify(h, "sha256:"+strings.ToUpper(digestOf(body)[7:]), uint64(len(body)))
		if got, err := readAll(s, h, 5); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("verified read = %q, %v", got, err)
		}
	})
	t.Run("other digest", func(t *testing.T) {
		h := get()
		want := digestOf([]byte("the bytes the registry meant"))
		s.Verify(h, want, uint64(len(body)))
		_, err := readAll(s, h, 5)
		if err == nil || !strings.Contains(err.Error(), "corrupted download: expected "+want) || !strings.Contains(err.Error(), "got "+digestOf(body)) {
			t.Fatalf("read of a corrupted body: %v", err)
		}
	})
	t.Run("other size", func(t *testing.T) {
		h := get()
		s.Verify(h, digestOf(body), uint64(len(body))+1)
		_, err := readAll(s, h, 5)
		want := fmt.Sprintf("(%d bytes), got %s (%d bytes)", len(body)+1, digestOf(body), len(body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("read of a short body: %v, want it to contain %q", err, want)
		}
	})
	t.Run("taken", func(t *testing.T) {
		h := get()
		s.Verify(h, digestOf([]byte("x")), 1)
		rc, err := s.Take(h)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "corrupted download") {
			t.Fatalf("io.ReadAll of a corrupted taken stream: %v", err)
		}
	})
}

func TestSlice(t *testing.T) {
	srv := blobServer(t, []byte("0123456789"))
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	for _, c := range []struct {
		skip, length uint64
		want         string
	}{
		{3, 4, "3456"},
		{0, 10, "0123456789"},
		{8, 100, "89"},
		{20, 5, ""},
		{2, 0, ""},
	} {
		h := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/"}).Body
		sl := s.Slice(h, c.skip, c.length)
		if sl == 0 || sl == h {
			t.Fatalf("Slice returned handle %d for %d", sl, h)
		}
		if _, err := sandboxRead(s, h, 10); err == nil {
			t.Fatal("the sliced stream can still be read")
		}
		got, err := readAll(s, sl, 3)
		if err != nil || string(got) != c.want {
			t.Fatalf("Slice(%d, %d) = %q, %v; want %q", c.skip, c.length, got, err, c.want)
		}
		if d, n := s.Digest(sl); d != digestOf([]byte(c.want)) || n != uint64(len(c.want)) {
			t.Fatalf("Digest of Slice(%d, %d) = %s (%d)", c.skip, c.length, d, n)
		}
		s.Close(sl)
	}

	// A slice of a host reader, verified.
	h := s.AddReader(strings.NewReader("abcdefgh"))
	sl := s.Slice(h, 2, 3)
	s.Verify(sl, digestOf([]byte("cde")), 3)
	rc, err := s.Take(sl)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(rc); err != nil || string(got) != "cde" {
		t.Fatalf("taken slice = %q, %v", got, err)
	}
}

func TestResponseCap(t *testing.T) {
	const limit = 1000
	big := testData(limit + 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := limit
		if r.URL.Path == "/big" {
			n++
		}
		writeDoc(w, r, big[:n])
	}))
	defer srv.Close()
	env, _ := newEnv(t, Config{Registry: srv.URL, MaxDocumentSize: limit})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	// Chunked answers have no Content-Length: the cap cannot rely on it.
	for _, q := range []string{"", "?chunked"} {
		h := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/fits" + q}).Body
		if got, err := readAll(s, h, 300); err != nil || len(got) != limit {
			t.Fatalf("reading %d bytes%s: %d bytes, %v", limit, q, len(got), err)
		}
		h = roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/big" + q}).Body
		_, err := readAll(s, h, 1<<20)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
			t.Fatalf("reading %d bytes%s: %v, want an error naming the limit", limit+1, q, err)
		}
		// The host reads blobs; the cap is for the guest's documents.
		h = roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/big" + q}).Body
		rc, err := s.Take(h)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(rc); err != nil || len(got) != limit+1 {
			t.Fatalf("taking %d bytes%s: %d bytes, %v", limit+1, q, len(got), err)
		}
		rc.Close()
	}
}

// TestReadSizes checks how much one streams.read hands over: all of a
// document whose length is known (up to knownChunk, and what the guest
// asks for), readChunk at a time otherwise.
func TestReadSizes(t *testing.T) {
	const n = 80 << 10
	data := testData(n)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeDoc(w, r, data)
	}))
	defer srv.Close()
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()
	for _, tt := range []struct {
		query string
		limit uint32
		want  int
	}{
		{"", 1 << 20, n},
		{"", 1000, 1000},
		{"?chunked", 1 << 20, readChunk},
	} {
		h := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/doc" + tt.query}).Body
		got, err := sandboxRead(s, h, tt.limit)
		if err != nil || len(got) != tt.want || !bytes.Equal(got, data[:len(got)]) {
			t.Errorf("Read(%s, %d) = %d bytes, %v; want the first %d", tt.query, tt.limit, len(got), err, tt.want)
		}
	}
}

// writeDoc answers data with a Content-Length, or, for a request with the
// query parameter chunked, without one and in two writes.
func writeDoc(w http.ResponseWriter, r *http.Request, data []byte) {
	if r.URL.Query().Has("chunked") {
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		w.Write(data[len(data)/2:])
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Write(data)
}

// slowServer answers after up to 2 s, or when the client goes away.
func slowServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall-body" {
			w.Write([]byte("start"))
			w.(http.Flusher).Flush()
		}
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestCancelSlowResponse(t *testing.T) {
	srv := slowServer(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	s := env.NewSession(ctx)
	defer s.CloseAll()

	_, err := s.RoundTrip(&abi.Request{Method: http.MethodGet, URL: "/slow"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip past the deadline: %v, want context.DeadlineExceeded", err)
	}
}

func TestCancelStalledBody(t *testing.T) {
	srv := slowServer(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	s := env.NewSession(ctx)
	defer s.CloseAll()

	resp := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/stall-body"})
	_, err := readAll(s, resp.Body, 1024)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reading a stalled body past the deadline: %v, want context.DeadlineExceeded", err)
	}
}

func TestCancelHostReader(t *testing.T) {
	env, _ := newEnv(t, Config{Registry: "http://127.0.0.1:1"})
	ctx, cancel := context.WithCancel(context.Background())
	s := env.NewSession(ctx)
	defer s.CloseAll()
	h := s.AddReader(strings.NewReader("data"))
	cancel()
	if _, err := sandboxRead(s, h, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read of a host reader after cancel: %v, want context.Canceled", err)
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		env, _ := newEnv(t, Config{Registry: "http://" + addr})
		_, err = env.NewSession(context.Background()).RoundTrip(&abi.Request{Method: http.MethodGet, URL: "/v2/"})
		want := "cannot reach registry " + addr + ": connection refused: is the registry running and is the location right?"
		if err == nil || err.Error() != want {
			t.Fatalf("error %v, want %q", err, want)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(http.NotFoundHandler())
		// The server's side of the failed handshake is expected.
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		defer srv.Close()
		env, _ := newEnv(t, Config{Registry: srv.URL})
		_, err := env.NewSession(context.Background()).RoundTrip(&abi.Request{Method: http.MethodGet, URL: "/v2/"})
		host := strings.TrimPrefix(srv.URL, "https://")
		if err == nil || !strings.HasPrefix(err.Error(), "TLS handshake with registry "+host+" failed: ") || !strings.Contains(err.Error(), "ca_file") {
			t.Fatalf("error %v, want a TLS handshake failure that mentions ca_file", err)
		}
	})
	t.Run("TLS to plain HTTP", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		defer srv.Close()
		env, _ := newEnv(t, Config{Registry: strings.Replace(srv.URL, "http://", "https://", 1)})
		_, err := env.NewSession(context.Background()).RoundTrip(&abi.Request{Method: http.MethodGet, URL: "/v2/"})
		if err == nil || !strings.Contains(err.Error(), "use_tls=false") {
			t.Fatalf("error %v, want one that suggests use_tls=false", err)
		}
	})
	t.Run("trusted CA", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		defer srv.Close()
		env, _ := newEnv(t, Config{Registry: srv.URL, Client: srv.Client()})
		s := env.NewSession(context.Background())
		defer s.CloseAll()
		if resp := roundTrip(t, s, &abi.Request{Method: http.MethodGet, URL: "/v2/"}); resp.Status != http.StatusNotFound {
			t.Fatalf("status %d", resp.Status)
		}
	})
	// A registry that redirects downloads to a host this machine cannot
	// resolve or reach: the error names that host and the redirect, not
	// the store's location.
	t.Run("redirect to an unreachable host", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := l.Addr().String()
		l.Close()
		reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			target := map[string]string{"/unresolvable": "https://blobs.example.invalid/data", "/refused": "https://" + closed + "/data"}[r.URL.Path]
			http.Redirect(w, r, target+"?sig=secret", http.StatusTemporaryRedirect)
		}))
		defer reg.Close()
		env, _ := newEnv(t, Config{Registry: reg.URL})
		s := env.NewSession(context.Background())
		defer s.CloseAll()
		for path, want := range map[string]string{
			"/unresolvable": "cannot resolve blobs.example.invalid",
			"/refused":      "cannot reach " + closed + ": connection refused",
		} {
			_, err := s.RoundTrip(&abi.Request{Method: http.MethodGet, URL: path})
			if err == nil {
				t.Fatalf("GET %s succeeded", path)
			}
			msg := err.Error()
			for _, w := range []string{want, "registry " + strings.TrimPrefix(reg.URL, "http://") + " redirected GET", "reachable from this machine"} {
				if !strings.Contains(msg, w) {
					t.Errorf("GET %s: %q does not say %q", path, msg, w)
				}
			}
			if strings.Contains(msg, "location") || strings.Contains(msg, "secret") {
				t.Errorf("GET %s: %q blames the store's location or shows the query", path, msg)
			}
		}
	})
	t.Run("failing body", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
		defer srv.Close()
		env, _ := newEnv(t, Config{Registry: srv.URL})
		s := env.NewSession(context.Background())
		defer s.CloseAll()
		boom := errors.New("disk on fire")
		h := s.AddReader(io.MultiReader(strings.NewReader("some"), errReader{boom}))
		_, err := s.RoundTrip(&abi.Request{Method: http.MethodPatch, URL: "/up", BodyKind: abi.BodyStreamed, Stream: h})
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "sending the body") {
			t.Fatalf("error %v, want one about sending the body that wraps the source's", err)
		}
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestBodies(t *testing.T) {
	type seen struct {
		length  int64
		chunked bool
		body    string
	}
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.ContentLength, len(r.TransferEncoding) > 0 && r.TransferEncoding[0] == "chunked", string(b)}
	}))
	defer srv.Close()
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	for _, c := range []struct {
		name string
		req  abi.Request
		want seen
	}{
		{"empty", abi.Request{Method: http.MethodPut}, seen{0, false, ""}},
		{"bytes", abi.Request{Method: http.MethodPut, BodyKind: abi.BodyBytes, Bytes: []byte("abc")}, seen{3, false, "abc"}},
		{"streamed", abi.Request{Method: http.MethodPatch, BodyKind: abi.BodyStreamed, Stream: s.AddReader(strings.NewReader("stream"))}, seen{-1, true, "stream"}},
		{"streamed with length", abi.Request{Method: http.MethodPatch, Header: []abi.Header{{"Content-Length", "6"}},
			BodyKind: abi.BodyStreamed, Stream: s.AddReader(strings.NewReader("sized!"))}, seen{6, false, "sized!"}},
	} {
		c.req.URL = "/"
		resp := roundTrip(t, s, &c.req)
		s.Close(resp.Body)
		if g := <-got; g != c.want {
			t.Errorf("%s: server saw %+v, want %+v", c.name, g, c.want)
		}
	}
	short := s.AddReader(strings.NewReader("short"))
	_, err := s.RoundTrip(&abi.Request{Method: http.MethodPatch, URL: "/", Header: []abi.Header{{"Content-Length", "10"}}, BodyKind: abi.BodyStreamed, Stream: short})
	if err == nil || !strings.Contains(err.Error(), "Content-Length") {
		t.Errorf("a body shorter than its Content-Length: %v, want an error about the length", err)
	}
	select {
	case <-got: // the server may or may not have seen the truncated request
	default:
	}
	if _, err := s.RoundTrip(&abi.Request{Method: http.MethodPut, URL: "/", BodyKind: abi.BodyStreamed, Stream: 999}); err == nil {
		t.Error("a request with an unknown body stream was sent")
	}
}

func TestHandles(t *testing.T) {
	env, logs := newEnv(t, Config{Registry: "http://127.0.0.1:1"})
	s := env.NewSession(context.Background())

	seen := map[abi.Stream]bool{}
	for round := 0; round < 3; round++ {
		var hs []abi.Stream
		for i := 0; i < 6; i++ {
			h := s.AddReader(strings.NewReader("x"))
			if h == 0 || seen[h] {
				t.Fatalf("handle %d is 0 or reused", h)
			}
			seen[h] = true
			hs = append(hs, h)
		}
		// Emptying the table lets it be reused, with new numbers.
		for _, h := range hs {
			s.Close(h)
		}
	}

	if _, err := sandboxRead(s, 0, 10); err == nil {
		t.Fatal("Read of handle 0 succeeded")
	}
	if _, err := sandboxRead(s, 12345, 10); err == nil {
		t.Fatal("Read of an unknown handle succeeded")
	}
	s.Close(12345)
	s.Verify(12345, "sha256:00", 1)
	if d, n := s.Digest(12345); d != "" || n != 0 {
		t.Fatalf("Digest of an unknown handle = %q, %d", d, n)
	}
	if s.Slice(12345, 0, 1) != 0 {
		t.Fatal("Slice of an unknown handle returned a handle")
	}
	if !strings.Contains(logs.String(), "level=DEBUG") {
		t.Fatal("operations on unknown handles are not logged at debug level")
	}

	// CloseAll closes what is left; the reader of a taken stream is the
	// host's to close.
	closed := 0
	h1 := s.add(&stream{r: strings.NewReader(""), c: closerFunc(func() { closed++ }), h: sha256.New(), hint: -1})
	h2 := s.add(&stream{r: strings.NewReader(""), c: closerFunc(func() { closed++ }), h: sha256.New(), hint: -1})
	rc, err := s.Take(h2)
	if err != nil {
		t.Fatal(err)
	}
	s.CloseAll()
	if closed != 1 {
		t.Fatalf("CloseAll closed %d streams, want 1", closed)
	}
	if _, err := sandboxRead(s, h1, 1); err == nil {
		t.Fatal("a stream can be read after CloseAll")
	}
	rc.Close()
	if closed != 2 {
		t.Fatal("closing a taken stream does not close what it reads")
	}
	if h := s.AddReader(strings.NewReader("")); seen[h] || h <= h2 {
		t.Fatalf("handle %d after CloseAll reuses an old number", h)
	}
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

func TestDigestOfHostReader(t *testing.T) {
	env, _ := newEnv(t, Config{Registry: "http://127.0.0.1:1"})
	s := env.NewSession(context.Background())
	defer s.CloseAll()
	h := s.AddReader(strings.NewReader("hello world"))
	if d, n := s.Digest(h); d != digestOf(nil) || n != 0 {
		t.Fatalf("Digest before reading = %s (%d)", d, n)
	}
	if b, err := sandboxRead(s, h, 5); err != nil || string(b) != "hello" {
		t.Fatalf("Read = %q, %v", b, err)
	}
	if d, n := s.Digest(h); d != digestOf([]byte("hello")) || n != 5 {
		t.Fatalf("Digest after 5 bytes = %s (%d)", d, n)
	}
	if _, err := sandboxRead(s, h, 0); err == nil {
		t.Fatal("Read with max 0 succeeded")
	}
}

func TestLog(t *testing.T) {
	env, logs := newEnv(t, Config{Registry: "http://127.0.0.1:1"})
	s := env.NewSession(context.Background())
	s.Log(abi.LevelDebug, "d-msg")
	s.Log(abi.LevelInfo, "i-msg")
	s.Log(abi.LevelWarn, "w-msg")
	s.Log(abi.LevelError, "e-msg")
	out := logs.String()
	for _, want := range []string{"level=DEBUG msg=d-msg plugin=oci", "level=INFO msg=i-msg plugin=oci", "level=WARN msg=w-msg plugin=oci", "level=ERROR msg=e-msg plugin=oci"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
}

func TestLRU(t *testing.T) {
	c := NewLRU(3)
	c.Set("a", "1")
	c.Set("b", "2")
	c.Set("c", "3")
	if v, ok := c.Get("a"); !ok || v != "1" {
		t.Fatalf("Get(a) = %q, %v", v, ok)
	}
	c.Set("d", "4") // b is now the least recently used
	if _, ok := c.Get("b"); ok {
		t.Fatal("b survived eviction")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.Get(k); !ok {
			t.Fatalf("%s was evicted", k)
		}
	}
	c.Set("a", "10") // update, and a becomes the most recent: c is the oldest
	c.Set("e", "5")
	if _, ok := c.Get("c"); ok {
		t.Fatal("c survived eviction")
	}
	if v, _ := c.Get("a"); v != "10" {
		t.Fatalf("Get(a) after update = %q", v)
	}
	c.Remove("a")
	c.Remove("missing")
	if _, ok := c.Get("a"); ok || c.Len() != 2 {
		t.Fatalf("after Remove: a present=%v, Len=%d", ok, c.Len())
	}
	c.Set("f", "6") // reuses a's slot, no eviction
	if c.Len() != 3 {
		t.Fatalf("Len = %d, want 3", c.Len())
	}
	for _, k := range []string{"d", "e", "f"} {
		if _, ok := c.Get(k); !ok {
			t.Fatalf("%s missing", k)
		}
	}

	// The session's cache is the Env's, and a shared LRU is shared.
	shared := NewLRU(10)
	e1, _ := newEnv(t, Config{Registry: "http://127.0.0.1:1", Cache: shared})
	e2, _ := newEnv(t, Config{Registry: "http://127.0.0.1:2", Cache: shared})
	e1.NewSession(context.Background()).CacheSet("k", "v")
	if v, ok := e2.NewSession(context.Background()).CacheGet("k"); !ok || v != "v" {
		t.Fatalf("shared cache: %q, %v", v, ok)
	}
	e2.NewSession(context.Background()).CacheRemove("k")
	if _, ok := shared.Get("k"); ok {
		t.Fatal("CacheRemove did not remove")
	}
}

func TestLRUConcurrent(t *testing.T) {
	c := NewLRU(100)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := fmt.Sprint((g*7 + i) % 300)
				c.Set(k, k)
				if v, ok := c.Get(k); ok && v != k {
					t.Errorf("Get(%s) = %s", k, v)
				}
				if i%5 == 0 {
					c.Remove(k)
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 100 {
		t.Fatalf("Len = %d, over the bound", n)
	}
}

// The hot path, bytes flowing through a stream, must not allocate per read.
func TestStreamReadDoesNotAllocate(t *testing.T) {
	data := testData(1 << 20)
	r := bytes.NewReader(data)
	st := newStream(r)
	buf := make([]byte, 32<<10)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := st.Read(buf); err == io.EOF {
			r.Reset(data)
		}
	})
	if allocs != 0 {
		t.Fatalf("stream.Read allocates %.1f times per call", allocs)
	}
}

func BenchmarkStreamRead(b *testing.B) {
	data := testData(1 << 20)
	env, _ := NewEnv(Config{Registry: "http://127.0.0.1:1", Logger: slog.New(slog.DiscardHandler)})
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s := env.NewSession(context.Background())
		rc, _ := s.Take(s.AddReader(bytes.NewReader(data)))
		for {
			if _, err := rc.Read(buf); err != nil {
				break
			}
		}
		s.CloseAll()
	}
}
