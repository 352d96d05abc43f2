package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/plakar-oci/ocistore/host/blobcache"
)

// DefaultMaxDocumentSize bounds the response bodies the guest reads itself.
// Those are manifests, indexes, tag lists and error documents: the
// distribution spec caps manifests at 4 MiB, and the margin leaves room for
// a tag list or an error document a little larger than that.
const DefaultMaxDocumentSize = 4<<20 + 64<<10

// DefaultCacheSize is the number of entries of the cache an Env creates when
// it is given none. An entry (a MAC and a digest) is about 200 bytes.
const DefaultCacheSize = 100_000

// Config is what an Env is built from.
type Config struct {
	// Registry is the registry's base URL: scheme, host and optional port,
	// e.g. "https://ghcr.io" or "http://127.0.0.1:5000".
	Registry string

	// Client performs the requests. Credentials and TLS settings belong in
	// its transport. The Env works on a copy, so its CheckRedirect can be
	// wrapped with the allow-list without touching the caller's client.
	// When nil, a client over Transport is used.
	Client *http.Client
	// Transport is used when Client is nil; when both are nil,
	// http.DefaultTransport.
	Transport http.RoundTripper

	// Logger receives the guest's logs and the host's warnings; nil means
	// slog.Default().
	Logger *slog.Logger

	// MaxDocumentSize bounds the response bodies the guest reads through
	// streams.read; 0 means DefaultMaxDocumentSize.
	MaxDocumentSize int64

	// Cache is the cache the guest sees. It is meant to be shared by every
	// store of the process, so the host should create one and pass it to
	// every Env; when nil, the Env creates its own of CacheSize entries
	// (0 means DefaultCacheSize).
	Cache     *LRU
	CacheSize int

	// Windows holds the read-ahead windows of blobs (windows.go); nil
	// turns read-ahead off: every ranged read fetches its range.
	Windows *blobcache.Cache

	// AllowedHosts are hosts besides the registry that the guest's
	// requests may name and that redirects may reach over the registry's
	// scheme, as "host" (default port of the scheme) or "host:port". More
	// can be added later with Env.Allow. Without them, the guest reaches
	// the registry only, and redirects of downloads leave it for https
	// URLs only (see allow.go). Credentials are never sent to them: the
	// host's transport adds them for the registry alone.
	AllowedHosts []string
}

// Env is what the sessions of one store share. It is safe for concurrent
// use.
type Env struct {
	base     url.URL // scheme and host of the registry, nothing else
	baseKey  string  // host:port of the registry, lower case, port explicit
	client   *http.Client
	log      *slog.Logger // with plugin=oci
	maxDoc   int64
	cache    *LRU
	windows  *blobcache.Cache
	allowMu  sync.Mutex                      // serialises writers of allowed
	allowed  atomic.Pointer[map[string]bool] // copy on write: read on every request
	registry string                          // base URL, for messages
	loopback bool                            // the registry is on this machine (localhost, a loopback address)
}

// NewEnv checks cfg and builds an Env.
func NewEnv(cfg Config) (*Env, error) {
	base, err := parseRegistry(cfg.Registry)
	if err != nil {
		return nil, err
	}
	e := &Env{
		base:     *base,
		baseKey:  hostKey(base),
		maxDoc:   cfg.MaxDocumentSize,
		cache:    cfg.Cache,
		windows:  cfg.Windows,
		registry: base.String(),
		loopback: isLoopbackHost(base.Hostname()),
	}
	if e.maxDoc <= 0 {
		e.maxDoc = DefaultMaxDocumentSize
	}
	if e.cache == nil {
		e.cache = NewLRU(cfg.CacheSize)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	// With formats the attribute once instead of on every record.
	e.log = logger.With("plugin", "oci")

	var c http.Client
	if cfg.Client != nil {
		c = *cfg.Client
	} else {
		c.Transport = cfg.Transport
	}
	next := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		// The client has already resolved the Location against the
		// previous hop: every hop is checked as an absolute URL. Whether
		// it is a download is decided by the first request: a POST
		// answered 303 becomes a GET, but its hop is no download.
		method := req.Method
		if len(via) > 0 && via[0].Method != http.MethodGet && via[0].Method != http.MethodHead {
			method = via[0].Method
		}
		if err := e.check(req.URL, true, method); err != nil {
			return err
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	e.client = &c

	empty := map[string]bool{}
	e.allowed.Store(&empty)
	for _, h := range cfg.AllowedHosts {
		if err := e.Allow(h); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// parseRegistry accepts a base URL made of a scheme and a host only, so that
// requests can be resolved by setting the scheme and host of a path.
func parseRegistry(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("no registry URL: give the registry as scheme://host[:port], e.g. https://ghcr.io")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("registry URL %q is not a URL: %v; give it as scheme://host[:port]", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("registry URL %q: scheme must be http or https; give it as scheme://host[:port]", raw)
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("registry URL %q must be scheme://host[:port] and nothing else: the repository goes elsewhere in the configuration", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// Allow adds a host that requests and redirects may reach besides the
// registry, such as storage that hands out absolute upload URLs or that a
// plain-HTTP registry redirects downloads to. hostport is "host" (the
// scheme's default port) or "host:port". The token service a registry
// announces needs no entry: the host's transport talks to it, never the
// guest.
func (e *Env) Allow(hostport string) error {
	key, err := allowKey(hostport)
	if err != nil {
		return err
	}
	e.allowMu.Lock()
	defer e.allowMu.Unlock()
	old := *e.allowed.Load()
	if old[key] {
		return nil
	}
	m := make(map[string]bool, len(old)+1)
	for k := range old {
		m[k] = true
	}
	m[key] = true
	e.allowed.Store(&m)
	return nil
}

func allowKey(hostport string) (string, error) {
	if hostport == "" || strings.ContainsAny(hostport, "/?#@ ") {
		return "", fmt.Errorf("allowed host %q must be host or host:port, without scheme or path", hostport)
	}
	u, err := url.Parse("//" + hostport)
	if err != nil || u.Host != hostport || u.Hostname() == "" {
		return "", fmt.Errorf("allowed host %q must be host or host:port, without scheme or path", hostport)
	}
	host := strings.ToLower(u.Hostname())
	if u.Port() == "" {
		// No port: whatever the default port of the scheme used.
		return host, nil
	}
	return joinHostPort(host, u.Port()), nil
}

// Registry returns the registry's base URL.
func (e *Env) Registry() string { return e.registry }

// Cache returns the cache the guest sees.
func (e *Env) Cache() *LRU { return e.cache }

// Logger returns the logger the guest's logs go to (with plugin=oci).
func (e *Env) Logger() *slog.Logger { return e.log }

// NewSession starts the session of one export call. ctx bounds every
// request of the session and every read of its streams, including a stream
// the host takes: it must outlive the reads of a taken stream.
func (e *Env) NewSession(ctx context.Context) *Session {
	s := &Session{env: e, ctx: ctx}
	s.streams.items = s.inline[:0]
	return s
}
