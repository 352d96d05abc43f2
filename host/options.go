package host

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/host/blobcache"
	"github.com/plakar-oci/ocistore/host/session"
)

// StoreOption tunes a store beyond its configuration map: what a program
// that embeds the store decides, not what a user writes in a Kloset
// location. NewStore and NewNativeStore take them.
type StoreOption func(*storeOptions)

type storeOptions struct {
	wrapTransport func(http.RoundTripper) http.RoundTripper
	readAhead     int64
	logger        *slog.Logger
}

// WithTransport wraps the HTTP transport every request of the store goes
// through, credentials already added: for instrumentation (counting or
// timing requests) or a proxy. wrap is called once, when the store is made.
func WithTransport(wrap func(http.RoundTripper) http.RoundTripper) StoreOption {
	return func(o *storeOptions) { o.wrapTransport = wrap }
}

// WithReadAheadLimit sets the largest put body the host reads ahead of the
// guest (session.DefaultReadAheadLimit by default), so that the blob goes
// up in one request that names its digest: a put costs three requests
// instead of four. Bodies that are not io.ReadSeekers are held in memory
// up to this size while they are sent. A negative limit never reads ahead:
// every put streams its body as Kloset produces it.
func WithReadAheadLimit(n int64) StoreOption {
	return func(o *storeOptions) { o.readAhead = n }
}

// WithLogger sets the logger of the store's requests and of the guest's
// logs: by default the Plugin's for a sandboxed store, slog.Default() for a
// native one.
func WithLogger(l *slog.Logger) StoreOption {
	return func(o *storeOptions) { o.logger = l }
}

func newStoreOptions(logger *slog.Logger, opts []StoreOption) storeOptions {
	o := storeOptions{logger: logger}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	return o
}

// newStoreEnv is what every store starts from, sandboxed or native: the
// configuration, checked, and the services the store logic calls (the HTTP
// client with credentials and TLS, the allow-list, the cache and the log).
func newStoreEnv(config map[string]string, o storeOptions) (*Config, *session.Env, error) {
	c, err := ParseConfig(config)
	if err != nil {
		return nil, nil, err
	}
	client, err := newClient(c, o.logger)
	if err != nil {
		return nil, nil, err
	}
	if o.wrapTransport != nil {
		client.Transport = o.wrapTransport(client.Transport)
	}
	scheme := "https://"
	if !c.UseTLS {
		scheme = "http://"
	}
	windows, err := openWindows(c, o.logger)
	if err != nil {
		return nil, nil, err
	}
	env, err := session.NewEnv(session.Config{Registry: scheme + c.Location.Registry, Client: client, Logger: o.logger, Windows: windows})
	if err != nil {
		return nil, nil, err
	}
	return c, env, nil
}

// openWindows opens the read-ahead cache the configuration names: nil when
// read-ahead is off. A directory the configuration names must work; the
// default one (under the user's cache directory) may not, on a read-only
// home: the store then reads without read-ahead, and says so.
func openWindows(c *Config, log *slog.Logger) (*blobcache.Cache, error) {
	if c.ReadAheadSize == 0 {
		return nil, nil
	}
	if c.ReadAheadDir != "" {
		w, err := blobcache.Open(c.ReadAheadDir, c.ReadAheadSize)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		return w, nil
	}
	// Beside the host's other caches (Plakar's cache directory for its
	// plugin), and off where they are off.
	root, err := cacheRoot("")
	if err != nil {
		root = filepath.Join(os.TempDir(), fmt.Sprintf("ocistore-%d", os.Getuid()))
	}
	if root == "" {
		return nil, nil
	}
	w, err := blobcache.Open(filepath.Join(root, "readahead"), c.ReadAheadSize)
	if err != nil {
		log.Warn("oci store: the default read-ahead cache cannot be used, so every ranged read is a request: set readahead_cache_dir to a writable directory", "error", err)
		return nil, nil
	}
	return w, nil
}

// readAhead prepares the body of a put before the call takes an instance,
// so that a slow reader does not hold one (see session.ReadAhead).
func readAhead(ctx context.Context, res storage.StorageResource, rd io.Reader, o storeOptions) (*session.Body, error) {
	body, err := session.ReadAhead(ctx, rd, o.readAhead)
	if err != nil {
		return nil, fmt.Errorf("oci store: reading the %s to put: %w", res, err)
	}
	return body, nil
}
