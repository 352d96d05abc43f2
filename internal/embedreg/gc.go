package embedreg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// CollectPath is where a registry takes a request to collect its garbage
// (POST, from a loopback address); the answer is a CollectResult in JSON.
const CollectPath = "/_ocibackup/collect"

// CollectResult says what a garbage collection gave back.
type CollectResult struct {
	// Freed is how much the storage directory's files went down by.
	Freed int64 `json:"freed"`
}

// Distribution's garbage collection deletes every blob that no manifest
// references, and with RemoveUntagged every manifest that no tag points
// to (deleted objects: their tags were deleted). It is only safe when
// nothing writes meanwhile: a blob pushed before its manifest would be
// swept in between. A registry collects either stopped, still holding the
// directory's lock (Collect), or serving with writes held off (the gate).
// Its in-memory blob descriptor cache would go on claiming swept blobs
// exist: a serving registry gets a new application after each collection.

// gate is the registry's handler: distribution's application, made
// read-only while a collection runs, and the collection endpoint.
type gate struct {
	cur atomic.Pointer[handlers.App]
	// writes is held shared by every request that may write, for its
	// duration, and exclusively by a collection.
	writes  sync.RWMutex
	collect sync.Mutex // one collection at a time
	reg     *Registry
}

func newGate(app *handlers.App, reg *Registry) *gate {
	g := &gate{reg: reg}
	g.cur.Store(app)
	return g
}

func (g *gate) app() *handlers.App { return g.cur.Load() }

func (g *gate) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == CollectPath {
		g.serveCollect(w, req)
		return
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		// A client retries a 503 (ocistore's store does, with backoff).
		if !g.writes.TryRLock() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "the registry is collecting garbage: writes wait until it is done", http.StatusServiceUnavailable)
			return
		}
		defer g.writes.RUnlock()
	}
	g.app().ServeHTTP(w, req)
}

func (g *gate) serveCollect(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if !loopback(req.RemoteAddr) {
		http.Error(w, "garbage collection is only taken from this machine", http.StatusForbidden)
		return
	}
	res, err := g.collectServing(req.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

// collectServing collects while the registry serves: writes are held off
// (new ones get 503, those in progress are waited for), then the
// application is replaced by a new one, with an empty cache.
func (g *gate) collectServing(ctx context.Context) (*CollectResult, error) {
	g.collect.Lock()
	defer g.collect.Unlock()
	g.writes.Lock()
	defer g.writes.Unlock()
	// A client that goes away does not cut the sweep short.
	res, err := collect(context.WithoutCancel(ctx), g.reg.Dir, false)
	// Even a collection that failed half-way may have swept blobs that
	// the old application's cache remembers.
	app, aerr := newApp(g.reg.Dir)
	if aerr != nil {
		return nil, errors.Join(err, aerr)
	}
	g.cur.Swap(app).Shutdown()
	return res, err
}

// Collect stops the registry and collects its garbage before it lets the
// directory go: no other registry can serve it meanwhile. Uploads left
// unfinished are removed too: nothing can be writing them. The registry
// is closed afterwards, as by Close.
func (r *Registry) Collect() (*CollectResult, error) {
	var res *CollectResult
	var cerr error
	ran := false
	err := r.close(func() {
		ran = true
		res, cerr = collect(context.Background(), r.Dir, true)
	})
	if !ran {
		return nil, errors.New("the registry was closed before its garbage could be collected")
	}
	return res, errors.Join(cerr, err)
}

// collect runs distribution's garbage collection on dir, whose lock the
// caller holds with nothing writing, and with purge removes every
// unfinished upload (a serving registry leaves them to its weekly purge:
// a client may be in the middle of one).
func collect(ctx context.Context, dir string, purge bool) (*CollectResult, error) {
	// The data only: the log grows meanwhile.
	data := filepath.Join(dir, "docker")
	before, err := DirSize(data)
	if err != nil {
		return nil, err
	}
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: dir, MaxThreads: 100})
	ns, err := storage.NewRegistry(ctx, driver, storage.EnableDelete)
	if err != nil {
		return nil, fmt.Errorf("the registry's garbage collection: %w", err)
	}
	if err := storage.MarkAndSweep(ctx, driver, ns, storage.GCOpts{RemoveUntagged: true, Quiet: true}); err != nil {
		return nil, fmt.Errorf("the registry's garbage collection (the registry is unchanged or partly collected; run maintenance again): %w", err)
	}
	if purge {
		if _, errs := storage.PurgeUploads(ctx, driver, time.Now(), true); len(errs) > 0 {
			return nil, fmt.Errorf("removing the registry's unfinished uploads (run maintenance again): %w", errors.Join(errs...))
		}
	}
	after, err := DirSize(data)
	if err != nil {
		return nil, err
	}
	return &CollectResult{Freed: before - after}, nil
}

// loopback tells whether a request's remote address is on this machine.
func loopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// dirSize is the bytes of the files under dir.
func DirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // nothing stored yet
		}
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}
