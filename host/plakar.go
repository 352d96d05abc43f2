package host

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"
)

// Plakar runs its plugins with their standard error on the user's terminal
// and gives them nothing but the store's configuration (go-kloset-sdk
// v1.1.0: Init carries the protocol and the configuration map; the
// manifest's fixed arguments are the only others). So the plugin finds
// Plakar's places and follows its manners itself:
//
//   - caches go under Plakar's cache directory, <user cache dir>/plakar
//     (where Plakar keeps its own), in ocistore/, unless
//     $OCISTORE_CACHE_DIR says otherwise;
//   - only warnings and errors are logged, each cause once per process
//     (a process serves one Plakar command): retries are not the user's
//     business unless they fail, and then the error says why;
//   - a store that cannot be made is reported by its first call rather
//     than by Init: Kloset (storage.Open and storage.Create) prints an
//     Init error itself before returning it to Plakar, which prints it
//     again.

// PlakarPlugin prepares the process to serve the store to Plakar, and
// returns the constructor to serve (sdk.EntrypointStorage's).
func PlakarPlugin() storage.StoreFn {
	if os.Getenv(EnvCacheDir) == "" {
		if base, err := os.UserCacheDir(); err == nil {
			defaultCacheRoot = filepath.Join(base, "plakar", "ocistore")
		}
	}
	slog.SetDefault(slog.New(newOnceHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	return func(ctx context.Context, proto string, config map[string]string) (storage.Store, error) {
		s, err := New(ctx, proto, config)
		if err != nil {
			return &failedStore{err: err, location: config["location"]}, nil
		}
		return s, nil
	}
}

// defaultCacheRoot replaces <user cache dir>/ocistore as the caches' root
// when it is set (PlakarPlugin).
var defaultCacheRoot string

// failedStore is a store that could not be made: every call returns why.
type failedStore struct {
	err      error
	location string
}

func (s *failedStore) Create(context.Context, []byte) error       { return s.err }
func (s *failedStore) Open(context.Context) ([]byte, error)       { return nil, s.err }
func (s *failedStore) Ping(context.Context) error                 { return s.err }
func (s *failedStore) Origin() string                             { return s.location }
func (s *failedStore) Type() string                               { return "oci" }
func (s *failedStore) Root() string                               { return "" }
func (s *failedStore) Flags() location.Flags                      { return 0 }
func (s *failedStore) Mode(context.Context) (storage.Mode, error) { return 0, s.err }
func (s *failedStore) Size(context.Context) (int64, error)        { return 0, s.err }
func (s *failedStore) List(context.Context, storage.StorageResource) ([]objects.MAC, error) {
	return nil, s.err
}
func (s *failedStore) Put(context.Context, storage.StorageResource, objects.MAC, io.Reader) (int64, error) {
	return 0, s.err
}
func (s *failedStore) Get(context.Context, storage.StorageResource, objects.MAC, *storage.Range) (io.ReadCloser, error) {
	return nil, s.err
}
func (s *failedStore) Delete(context.Context, storage.StorageResource, objects.MAC) error {
	return s.err
}
func (s *failedStore) Close(context.Context) error { return nil }

// onceHandler logs each cause once: records whose message and attributes
// differ only in numbers and hexadecimal names (MACs, digests, ports,
// durations, attempts) are one cause.
type onceHandler struct {
	next slog.Handler
	seen *sync.Map
}

func newOnceHandler(next slog.Handler) slog.Handler {
	return &onceHandler{next: next, seen: &sync.Map{}}
}

var variablePart = regexp.MustCompile(`[0-9a-f]{8,}|[0-9]+(\.[0-9]+)?`)

func (h *onceHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *onceHandler) Handle(ctx context.Context, r slog.Record) error {
	key := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		key += " " + a.String()
		return true
	})
	if _, dup := h.seen.LoadOrStore(variablePart.ReplaceAllString(key, "#"), true); dup {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *onceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &onceHandler{next: h.next.WithAttrs(attrs), seen: h.seen}
}

func (h *onceHandler) WithGroup(name string) slog.Handler {
	return &onceHandler{next: h.next.WithGroup(name), seen: h.seen}
}
