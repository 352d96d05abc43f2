// Package faultproxy is a reverse proxy for tests that stands on
// 127.0.0.1 in front of a real registry and breaks the requests it is told
// to: connection resets while a request body is being received or a
// response body sent, answers the registry gave but the client never gets,
// truncated bodies, error statuses (500, 502, 503, 429 with Retry-After),
// slow answers, a whole 200 answer to a Range request, a wrong
// Docker-Content-Digest and corrupted bytes.
//
// Faults are programmed per request with rules: a rule applies its fault to
// the next Times requests its matcher accepts. Requests no rule takes pass
// through untouched, streamed both ways. The proxy keeps the client's Host
// header, so the absolute upload locations a registry hands out point back
// at the proxy.
package faultproxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Kind is what a fault does.
type Kind int

const (
	// Pass forwards the request and its answer untouched.
	Pass Kind = iota
	// Status answers Fault.Status (with Fault.Header) without asking the
	// registry, and without reading the request body.
	Status
	// ResetRequest receives Fault.Bytes bytes of the request body (or all
	// of it, if shorter), then resets the connection: the registry sees
	// nothing.
	ResetRequest
	// LoseResponse forwards the request, then resets the connection
	// instead of answering: the registry did the work, the client never
	// learns it.
	LoseResponse
	// ResetResponse forwards the request, sends the answer's headers and
	// Fault.Bytes bytes of its body, then resets the connection.
	ResetResponse
	// Truncate forwards the request and sends the answer with its full
	// Content-Length but only half of its body, then closes the
	// connection.
	Truncate
	// Delay receives the request body, then waits Fault.Delay before
	// forwarding the request; if the client gives up meanwhile (or the
	// proxy is closed), the request is dropped.
	Delay
	// IgnoreRange forwards the request without its Range header: the
	// answer is a 200 with the whole body.
	IgnoreRange
	// WrongDigest forwards the request and replaces the
	// Docker-Content-Digest of the answer with another valid digest.
	WrongDigest
	// Corrupt forwards the request and flips the last byte of the
	// answer's body.
	Corrupt
)

var kindNames = [...]string{"pass", "status", "reset-request", "lose-response", "reset-response", "truncate", "delay", "ignore-range", "wrong-digest", "corrupt"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// Fault is what the proxy does to one request.
type Fault struct {
	Kind   Kind
	Status int           // Status
	Header http.Header   // Status: headers of the answer (Retry-After...)
	Bytes  int64         // ResetRequest, ResetResponse: bytes let through first
	Delay  time.Duration // Delay
}

// Matcher selects requests.
type Matcher func(*http.Request) bool

// Rule applies Fault to the next Times requests Match accepts; Times 0
// means every one.
type Rule struct {
	Match Matcher
	Fault Fault
	Times int
}

// Entry is a request the proxy saw: "PATCH /v2/r/blobs/uploads/x" and what
// it did to it.
type Entry struct {
	Method string
	Path   string
	Fault  Kind
	Status int // the status the client was sent, or 0 if none
}

func (e Entry) String() string {
	return fmt.Sprintf("%s %s %s %d", e.Method, e.Path, e.Fault, e.Status)
}

// Proxy is a fault-injecting reverse proxy.
type Proxy struct {
	// URL is the proxy's base URL, "http://127.0.0.1:PORT"; Host is
	// "127.0.0.1:PORT".
	URL  string
	Host string

	target *url.URL
	srv    *httptest.Server
	client *http.Client

	mu    sync.Mutex
	rules []*rule
	log   []Entry

	closing   chan struct{} // closed by Close: delayed requests give up
	closeOnce sync.Once
}

type rule struct {
	Rule
	hits int
}

// Handle is a rule added to a proxy.
type Handle struct {
	p *Proxy
	r *rule
}

// Hits tells how many requests the rule took so far.
func (h Handle) Hits() int {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	return h.r.hits
}

// Start starts a proxy to target ("http://127.0.0.1:PORT"), stopped at the
// end of t.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy to target; Close stops it.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: target %q must be http://host:port", target)
	}
	p := &Proxy{
		target:  u,
		closing: make(chan struct{}),
		client: &http.Client{
			Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
	p.srv = httptest.NewServer(p) // listens on 127.0.0.1
	p.URL = p.srv.URL
	p.Host = strings.TrimPrefix(p.srv.URL, "http://")
	return p, nil
}

// Close stops the proxy and breaks the connections it holds.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() { close(p.closing) })
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.client.CloseIdleConnections()
}

// Add adds a rule; rules are tried in the order they were added.
func (p *Proxy) Add(r Rule) Handle {
	p.mu.Lock()
	defer p.mu.Unlock()
	ru := &rule{Rule: r}
	p.rules = append(p.rules, ru)
	return Handle{p, ru}
}

// Once is Add of a rule that applies f to the next request m accepts.
func (p *Proxy) Once(m Matcher, f Fault) Handle { return p.Add(Rule{Match: m, Fault: f, Times: 1}) }

// Always is Add of a rule that applies f to every request m accepts.
func (p *Proxy) Always(m Matcher, f Fault) Handle { return p.Add(Rule{Match: m, Fault: f}) }

// Clear removes every rule.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
}

// Requests returns the requests seen since the last call.
func (p *Proxy) Requests() []Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.log
	p.log = nil
	return l
}

// pick returns the fault of the first rule that takes r.
func (p *Proxy) pick(r *http.Request) Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ru := range p.rules {
		if (ru.Times == 0 || ru.hits < ru.Times) && ru.Match(r) {
			ru.hits++
			return ru.Fault
		}
	}
	return Fault{Kind: Pass}
}

func (p *Proxy) record(r *http.Request, k Kind, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, Entry{Method: r.Method, Path: r.URL.Path, Fault: k, Status: status})
}

// hopHeaders are not forwarded (RFC 9110, 7.6.1), nor Expect: the proxy
// answers 100-continue itself when it reads the body.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect", "Proxy-Connection",
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := p.pick(r)
	switch f.Kind {
	case Status:
		p.record(r, f.Kind, f.Status)
		for k, vs := range f.Header {
			w.Header()[k] = vs
		}
		w.Header().Set("Content-Type", "application/json")
		// Not reading the body: a client that sent Expect: 100-continue
		// never sends it.
		w.Header().Set("Connection", "close")
		w.WriteHeader(f.Status)
		json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{
			"code": "FAULTPROXY", "message": fmt.Sprintf("injected %d", f.Status),
		}}})
		return
	case ResetRequest:
		p.record(r, f.Kind, 0)
		io.CopyN(io.Discard, r.Body, f.Bytes)
		p.reset(w, nil)
		return
	case Delay:
		// The body is taken first: the server notices that a client went
		// away only once the request body is read.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			p.record(r, f.Kind, 0)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			p.record(r, f.Kind, 0)
			return
		case <-p.closing:
			p.record(r, f.Kind, 0)
			p.reset(w, nil)
			return
		}
	case IgnoreRange:
		r.Header.Del("Range")
	}

	resp, err := p.forward(r)
	if err != nil {
		p.record(r, f.Kind, http.StatusBadGateway)
		http.Error(w, "faultproxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	header := resp.Header.Clone()
	for _, h := range hopHeaders {
		header.Del(h)
	}

	switch f.Kind {
	case Pass, Delay, IgnoreRange:
		p.record(r, f.Kind, resp.StatusCode)
		for k, vs := range header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		return
	}

	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.record(r, f.Kind, http.StatusBadGateway)
		http.Error(w, "faultproxy: reading the registry's answer: "+err.Error(), http.StatusBadGateway)
		return
	}
	switch f.Kind {
	case LoseResponse:
		p.record(r, f.Kind, 0)
		p.reset(w, nil)
	case ResetResponse:
		p.record(r, f.Kind, resp.StatusCode)
		p.reset(w, rawResponse(resp.StatusCode, header, len(body), body[:min(int64(len(body)), f.Bytes)]))
	case Truncate:
		p.record(r, f.Kind, resp.StatusCode)
		p.closeAfter(w, rawResponse(resp.StatusCode, header, len(body), body[:len(body)/2]))
	case WrongDigest, Corrupt:
		p.record(r, f.Kind, resp.StatusCode)
		if f.Kind == WrongDigest {
			sum := sha256.Sum256([]byte("not what you asked for"))
			header.Set("Docker-Content-Digest", "sha256:"+hex.EncodeToString(sum[:]))
		} else if len(body) > 0 {
			body[len(body)-1] ^= 0xff
		}
		for k, vs := range header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	default:
		panic(fmt.Sprintf("faultproxy: unknown fault %v", f.Kind))
	}
}

// forward sends r to the registry, keeping the client's Host.
func (p *Proxy) forward(r *http.Request) (*http.Response, error) {
	u := *p.target
	u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	var body io.Reader
	if r.ContentLength != 0 {
		body = r.Body
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), body)
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host
	out.ContentLength = r.ContentLength
	if body == nil {
		out.ContentLength = 0
	}
	return p.client.Do(out)
}

// rawResponse is an HTTP/1.1 answer with a Content-Length of length,
// whatever part of the body follows.
func rawResponse(status int, header http.Header, length int, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	header = header.Clone()
	header.Set("Content-Length", strconv.Itoa(length))
	header.Set("Connection", "close")
	header.Write(&b)
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// reset writes raw, if any, then resets the connection (RST, not FIN).
func (p *Proxy) reset(w http.ResponseWriter, raw []byte) {
	conn, buf := hijack(w)
	if conn == nil {
		return
	}
	if raw != nil {
		buf.Write(raw)
		buf.Flush()
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	conn.Close()
}

// closeAfter writes raw, then closes the connection cleanly.
func (p *Proxy) closeAfter(w http.ResponseWriter, raw []byte) {
	conn, buf := hijack(w)
	if conn == nil {
		return
	}
	buf.Write(raw)
	buf.Flush()
	conn.Close()
}

func hijack(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "faultproxy: cannot hijack: "+err.Error(), http.StatusInternalServerError)
		return nil, nil
	}
	return conn, buf
}

// Matchers.

// Method accepts requests of method m whose path contains part.
func Method(m, part string) Matcher {
	return func(r *http.Request) bool { return r.Method == m && strings.Contains(r.URL.Path, part) }
}

var (
	// UploadStart is POST /v2/<name>/blobs/uploads/.
	UploadStart = Method(http.MethodPost, "/blobs/uploads/")
	// UploadPatch is the PATCH that streams a blob.
	UploadPatch = Method(http.MethodPatch, "/blobs/uploads/")
	// UploadCommit is the PUT ?digest= that closes an upload.
	UploadCommit = Method(http.MethodPut, "/blobs/uploads/")
	// BlobGet is a GET of a blob, whole or ranged.
	BlobGet = Method(http.MethodGet, "/blobs/sha256:")
	// ManifestGet, ManifestHead, ManifestPut and ManifestDelete act on
	// /v2/<name>/manifests/<reference>.
	ManifestGet    = Method(http.MethodGet, "/manifests/")
	ManifestHead   = Method(http.MethodHead, "/manifests/")
	ManifestPut    = Method(http.MethodPut, "/manifests/")
	ManifestDelete = Method(http.MethodDelete, "/manifests/")
	// TagList is GET /v2/<name>/tags/list.
	TagList = Method(http.MethodGet, "/tags/list")
)

// Ranged accepts requests with a Range header.
func Ranged(m Matcher) Matcher {
	return func(r *http.Request) bool { return r.Header.Get("Range") != "" && m(r) }
}

// Tagged accepts requests whose path ends with a reference that starts
// with prefix (a manifest tag such as "packfile-").
func Tagged(m Matcher, prefix string) Matcher {
	return func(r *http.Request) bool {
		ref := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		return strings.HasPrefix(ref, prefix) && m(r)
	}
}

// Any accepts every request.
func Any(*http.Request) bool { return true }

// RetryAfter is the header of a 429 or 503 asking to wait d.
func RetryAfter(d time.Duration) http.Header {
	return http.Header{"Retry-After": {strconv.Itoa(int(d / time.Second))}}
}
