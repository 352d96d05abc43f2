package host

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// A registry may echo what it was sent: the Authorization header in an
// error body, a token in a header, a password in a malformed status line
// that Go quotes in its error. Every text that comes from a registry (or a
// host it redirects to) goes through the scrubber of its store before it
// reaches an error, a log line or the guest: headers, bodies that are not
// payload (error bodies, tag lists, answers to uploads) and transport
// errors. Payload (the 2xx answers to GET and HEAD of blobs and manifests,
// and of redirect targets) is content-addressed and verified: it stays
// byte for byte.
//
// Each secret the host holds is scrubbed in every form it may come back
// in: as is, URL-encoded, JSON-escaped, and base64 (alone, and as the
// user:password of a Basic header).

// protocolWords are parts of every request and answer: a secret that is
// one of them, or part of one, shows nothing by being echoed.
const protocolWords = "/v2/ /blobs/uploads/ /manifests/ /tags/list?n=&last= sha256: _state= digest="

// minSecret is the length under which a secret is not scrubbed: shorter
// strings occur by chance in digests and upload locations.
const minSecret = 4

// maxTokensKept bounds how many obtained tokens are scrubbed: a token is
// replaced every few minutes, and an echo can only bring back one the
// registry was recently sent.
const maxTokensKept = 8

// scrubber replaces secrets in what a registry says. It is safe for
// concurrent use; secrets are added as the host learns them.
type scrubber struct {
	// public is what every message and request shows anyway: the
	// registry, the repository and the words of the protocol. A secret
	// found in it (a weak password such as the repository's name) is not
	// scrubbed: hiding it would hide nothing, and would break the upload
	// locations and tag names that hold it.
	public string

	mu      sync.RWMutex
	secrets []string
	forms   []string // longest first, so that a form is replaced before one of its parts
	maxLen  int
	tokens  []string // obtained tokens, oldest first
	replace *strings.Replacer
}

// addCredentials adds the secrets of c.
func (s *scrubber) addCredentials(c *credentials) {
	if c == nil {
		return
	}
	var secrets []string
	if c.password != "" {
		secrets = append(secrets, c.password, c.username+":"+c.password)
	}
	secrets = append(secrets, c.identityToken, c.registryToken)
	s.add(secrets...)
}

// addToken adds a token obtained from a token service, forgetting the
// oldest beyond maxTokensKept.
func (s *scrubber) addToken(tok string) {
	if len(tok) < minSecret || strings.Contains(s.public, tok) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.tokens, tok) {
		return
	}
	s.tokens = append(s.tokens, tok)
	if len(s.tokens) > maxTokensKept {
		s.tokens = s.tokens[1:]
	}
	s.rebuild()
}

// add adds secrets, in every form they may be echoed in.
func (s *scrubber) add(secrets ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, secret := range secrets {
		if len(secret) >= minSecret && !strings.Contains(s.public, secret) && !slices.Contains(s.secrets, secret) {
			s.secrets = append(s.secrets, secret)
		}
	}
	s.rebuild()
}

// rebuild computes the forms of the secrets and tokens. s.mu is held.
func (s *scrubber) rebuild() {
	// A new slice: readers hold the old one.
	var forms []string
	seen := map[string]bool{}
	for _, secret := range slices.Concat(s.secrets, s.tokens) {
		quoted, _ := json.Marshal(secret)
		for _, f := range []string{
			secret,
			url.QueryEscape(secret),
			url.PathEscape(secret),
			string(quoted[1 : len(quoted)-1]),
			base64.StdEncoding.EncodeToString([]byte(secret)),
			base64.RawStdEncoding.EncodeToString([]byte(secret)),
			base64.URLEncoding.EncodeToString([]byte(secret)),
			base64.RawURLEncoding.EncodeToString([]byte(secret)),
		} {
			if !seen[f] {
				seen[f] = true
				forms = append(forms, f)
			}
		}
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	pairs := make([]string, 0, 2*len(forms))
	s.maxLen = 0
	for _, f := range forms {
		pairs = append(pairs, f, redacted)
		s.maxLen = max(s.maxLen, len(f))
	}
	s.forms, s.replace = forms, nil
	if len(forms) > 0 {
		s.replace = strings.NewReplacer(pairs...)
	}
}

// String returns text without the secrets.
func (s *scrubber) String(text string) string {
	s.mu.RLock()
	r := s.replace
	s.mu.RUnlock()
	if r == nil {
		return text
	}
	return r.Replace(text)
}

// Error returns err with its message scrubbed, still wrapping err for
// errors.Is and errors.As (which tell kinds of failure, not text).
func (s *scrubber) Error(err error) error {
	if err == nil {
		return nil
	}
	if msg := s.String(err.Error()); msg != err.Error() {
		return &scrubbedError{msg, err}
	}
	return err
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// wellFormed are the header values that are protocol data the registry
// computed (digests, lengths, ranges, upload ids): a secret found in one
// is a coincidence of a short secret, and replacing it would break the
// protocol.
var wellFormed = regexp.MustCompile(`^(?:"?sha256:[0-9a-f]{64}"?|(?:bytes[ =])?[0-9]+(?:-[0-9]+)?(?:/(?:[0-9]+|\*))?|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)

// Response scrubs resp: its headers, and its body unless it is payload.
func (s *scrubber) Response(resp *http.Response, payload bool) *http.Response {
	s.mu.RLock()
	r, forms, maxLen := s.replace, s.forms, s.maxLen
	s.mu.RUnlock()
	if r == nil || resp == nil {
		return resp
	}
	for name, values := range resp.Header {
		for i, v := range values {
			if !wellFormed.MatchString(v) {
				values[i] = r.Replace(v)
			}
		}
		resp.Header[name] = values
	}
	if !payload && resp.Body != nil && resp.Body != http.NoBody && resp.ContentLength != 0 {
		// The length may change: the body ends where it ends.
		resp.Body = &scrubReader{rc: resp.Body, r: r, forms: forms, keep: maxLen - 1}
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
	}
	return resp
}

// scrubReader scrubs a body as it is read. It holds back the last keep
// bytes of what it read until it knows whether they start a secret.
type scrubReader struct {
	rc    io.ReadCloser
	r     *strings.Replacer
	forms []string
	keep  int
	raw   []byte // read, not yet scrubbed
	out   []byte // scrubbed, not yet returned
	err   error
}

func (b *scrubReader) Read(p []byte) (int, error) {
	for len(b.out) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		var chunk [32 << 10]byte
		n, err := b.rc.Read(chunk[:])
		b.raw = append(b.raw, chunk[:n]...)
		b.err = err
		b.flush(err != nil)
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

// flush moves what can no longer be part of a secret from raw to out,
// scrubbed: all of it at the end of the body, else all but the last keep
// bytes, and more if a secret starts before that point and ends after it.
func (b *scrubReader) flush(end bool) {
	cut := len(b.raw)
	if !end {
		cut = max(0, len(b.raw)-b.keep)
		for moved := true; moved; {
			moved = false
			for _, f := range b.forms {
				// Any occurrence from here on that starts before cut
				// ends after it.
				from := max(0, cut-len(f)+1)
				if i := bytes.Index(b.raw[from:], []byte(f)); i >= 0 && from+i < cut {
					cut, moved = from+i+len(f), true
				}
			}
		}
	}
	if cut == 0 {
		return
	}
	b.out = append(b.out, b.r.Replace(string(b.raw[:cut]))...)
	b.raw = append(b.raw[:0], b.raw[cut:]...)
}

func (b *scrubReader) Close() error { return b.rc.Close() }

// scrubHandler scrubs log lines: their message and attributes, which may
// quote what a registry said.
type scrubHandler struct {
	next slog.Handler
	s    *scrubber
}

func (h *scrubHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *scrubHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, h.s.String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h *scrubHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	scrubbed := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		scrubbed[i] = h.attr(a)
	}
	return &scrubHandler{next: h.next.WithAttrs(scrubbed), s: h.s}
}

func (h *scrubHandler) WithGroup(name string) slog.Handler {
	return &scrubHandler{next: h.next.WithGroup(name), s: h.s}
}

// attr scrubs the text of a: strings, errors and whatever else prints as
// text; numbers, times and durations hold no secret.
func (h *scrubHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.s.String(v.String()))
	case slog.KindAny:
		return slog.String(a.Key, h.s.String(fmt.Sprint(v.Any())))
	case slog.KindGroup:
		group := v.Group()
		scrubbed := make([]any, len(group))
		for i, g := range group {
			scrubbed[i] = h.attr(g)
		}
		return slog.Group(a.Key, scrubbed...)
	}
	return slog.Attr{Key: a.Key, Value: v}
}
