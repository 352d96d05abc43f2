// Package embedreg runs an OCI registry in this process: distribution
// v3's registry, used as a library, with its storage in a directory
// (filesystem driver), deletes enabled, plain HTTP and no authentication.
// It is what lets ocibackup work with nothing else installed: the data
// stay in the directory across restarts.
//
// One registry at a time serves a directory: Start takes a lock on it,
// and says who serves it when another process does.
//
// The blobs of deleted objects stay until distribution's garbage
// collection, which never runs beside a write: Collect runs it on a
// stopped registry that still holds the directory, and a serving one runs
// it on request (CollectPath) with writes held off (gc.go).
//
// Only the filesystem storage driver is linked in (distribution's drivers
// register themselves in their packages' init, in distribution's own
// table: nothing of Kloset's or go-containerregistry's is touched).
package embedreg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/sirupsen/logrus"
)

// Options configure a registry.
type Options struct {
	// Addr is where to listen, host:port; "127.0.0.1:0" (a free port on
	// the loopback interface) if empty.
	Addr string
	// Dir is the storage directory, created if need be. Required.
	Dir string
	// Log receives the registry's warnings and errors; nil means
	// Dir/registry.log.
	Log io.Writer
	// Server marks a registry that serves until it is stopped (the
	// registry command), as opposed to one that lives as long as a
	// command: others may use the former's address (see InUseError).
	Server bool
}

// Registry is a running registry.
type Registry struct {
	// Addr is the address it listens on, host:port.
	Addr string
	// Dir is its storage directory.
	Dir string

	srv      *http.Server
	gate     *gate
	lock     *os.File
	logFile  *os.File
	done     chan struct{} // closed when Serve returns
	serveErr error
	once     sync.Once
	err      error
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return "http://" + r.Addr }

// InUseError is returned by Start when another process serves Dir.
type InUseError struct {
	Dir string
	// Addr is where that process serves it, if it said so.
	Addr string
	// Server tells whether that process is a server, which stays up, or a
	// command, which stops when it is done.
	Server bool
}

func (e *InUseError) Error() string {
	if e.Addr != "" {
		return fmt.Sprintf("the registry storage %s is in use by another process, serving it at %s", e.Dir, e.Addr)
	}
	return fmt.Sprintf("the registry storage %s is in use by another process", e.Dir)
}

const (
	lockName = ".ocibackup-registry.lock"
	addrName = ".ocibackup-registry.json"
)

// owner is what the process that holds the lock says about itself.
type owner struct {
	Addr   string `json:"addr"`
	PID    int    `json:"pid"`
	Server bool   `json:"server"`
}

// logMu guards logrus's standard logger, which distribution logs to.
var logMu sync.Mutex

// Start starts a registry and returns once it accepts connections.
func Start(opts Options) (*Registry, error) {
	if opts.Dir == "" {
		return nil, errors.New("embedreg: no storage directory")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("the registry storage: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	r := &Registry{Dir: dir, lock: lock, done: make(chan struct{})}
	fail := func(err error) (*Registry, error) {
		r.release()
		return nil, err
	}

	logw := opts.Log
	if logw == nil {
		f, err := os.OpenFile(filepath.Join(dir, "registry.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fail(err)
		}
		r.logFile, logw = f, f
	}
	logMu.Lock()
	logrus.SetOutput(logw)
	logrus.SetLevel(logrus.WarnLevel)
	logrus.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	logMu.Unlock()

	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fail(fmt.Errorf("the registry cannot listen on %s: %w", addr, err))
	}
	r.Addr = ln.Addr().String()

	app, err := newApp(dir)
	if err != nil {
		ln.Close()
		return fail(err)
	}
	r.gate = newGate(app, r)
	r.srv = &http.Server{
		Handler:           r.gate,
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() {
		defer close(r.done)
		r.serveErr = r.srv.Serve(ln)
	}()

	b, _ := json.Marshal(owner{Addr: r.Addr, PID: os.Getpid(), Server: opts.Server})
	if err := os.WriteFile(filepath.Join(dir, addrName), b, 0o600); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// newApp builds distribution's application on dir; it panics on a bad
// configuration, which is turned into an error.
func newApp(dir string) (app *handlers.App, err error) {
	secret := make([]byte, 32)
	rand.Read(secret)
	config := &configuration.Configuration{
		Version: "0.1",
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": dir},
			"delete":     configuration.Parameters{"enabled": true},
			"cache":      configuration.Parameters{"blobdescriptor": "inmemory"},
			"redirect":   configuration.Parameters{"disable": true},
			// Uploads left half-way (an interrupted backup) are removed
			// after a week.
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{
				"enabled":  true,
				"age":      "168h",
				"interval": "24h",
				"dryrun":   false,
			}},
		},
	}
	config.Log.Level = "warn"
	config.HTTP.Secret = hex.EncodeToString(secret)
	config.HTTP.Headers = http.Header{"X-Content-Type-Options": []string{"nosniff"}}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the registry does not start: %v", p)
		}
	}()
	return handlers.NewApp(context.Background(), config), nil
}

// Close stops the registry: requests in flight get a few seconds to
// finish.
func (r *Registry) Close() error { return r.close(nil) }

// close stops the registry, runs stopped (if not nil) while the directory
// is still locked, and lets the directory go.
func (r *Registry) close(stopped func()) error {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := r.srv.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			err = r.srv.Close()
		}
		<-r.done
		if r.serveErr != nil && !errors.Is(r.serveErr, http.ErrServerClosed) {
			err = errors.Join(err, r.serveErr)
		}
		r.gate.app().Shutdown()
		os.Remove(filepath.Join(r.Dir, addrName))
		if stopped != nil {
			stopped()
		}
		r.release()
		r.err = err
	})
	return r.err
}

// Done is closed when the registry stops serving: after Close, or by
// itself if its listener fails (Err says why).
func (r *Registry) Done() <-chan struct{} { return r.done }

// Err is why the registry stopped serving, once Done is closed.
func (r *Registry) Err() error {
	<-r.done
	if errors.Is(r.serveErr, http.ErrServerClosed) {
		return nil
	}
	return r.serveErr
}

func (r *Registry) release() {
	if r.lock != nil {
		unlockDir(r.lock)
		r.lock = nil
	}
	if r.logFile != nil {
		r.logFile.Close()
		r.logFile = nil
	}
}

// lockDir takes dir's lock, or says who holds it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("the registry storage lock: %w", err)
	}
	held, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("the registry storage lock: %w", err)
	}
	if !held {
		f.Close()
		e := &InUseError{Dir: dir}
		if b, err := os.ReadFile(filepath.Join(dir, addrName)); err == nil {
			var o owner
			if json.Unmarshal(b, &o) == nil {
				e.Addr, e.Server = o.Addr, o.Server
			}
		}
		return nil, e
	}
	return f, nil
}

func unlockDir(f *os.File) {
	unlock(f)
	f.Close()
}
