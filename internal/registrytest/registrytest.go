// Package registrytest starts real OCI registries on 127.0.0.1 for tests:
// the distribution v3 binary, Debian's docker-registry (distribution v2.8)
// and go-containerregistry's in-process registry, and test doubles of other
// registries: distribution behind a front that answers as zot, Quay,
// Harbor or GHCR do where it changes what a client does (doubles.go,
// zot.go, quay.go). Each one listens on a free port, keeps its storage in
// t.TempDir(), logs to a file that is printed when the test fails, and is
// stopped by t.Cleanup.
//
// The binaries are installed by `make tools`. A missing binary fails the
// test: suites never skip a registry silently.
package registrytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Versions and names of the registries.
const (
	DistributionVersion = "v3.1.2"

	NameDistributionDelete   = "distribution-delete"
	NameDistributionNoDelete = "distribution-nodelete"
	NameDockerRegistry       = "docker-registry-v2.8"
	NameInProcess            = "ggcr-inprocess"
)

// Environment variables that name the binaries, overriding the defaults
// (<repo root>/build/bin/registry-v3.1.2 and /usr/bin/docker-registry).
const (
	EnvDistribution   = "OCISTORE_REGISTRY_V3"
	EnvDockerRegistry = "OCISTORE_DOCKER_REGISTRY"
)

// ReadyTimeout bounds the wait for a registry to answer GET /v2/.
const ReadyTimeout = 10 * time.Second

// Options configure a registry started from a binary.
type Options struct {
	// Delete enables DELETE of manifests and blobs
	// (storage.delete.enabled). Without it the registry answers 405.
	Delete bool
	// AccessLog keeps the registry's access log (one line per request) in
	// its log file. Off by default: only warnings and errors are logged.
	AccessLog bool
}

// Registry is a running (or stopped) registry.
type Registry struct {
	// Name says which kind of registry this is.
	Name string
	// URL is the base URL, "http://127.0.0.1:PORT", without a trailing
	// slash.
	URL string
	// Host is "127.0.0.1:PORT", as go-containerregistry's references want.
	Host string
	// Dir is the storage directory. It outlives Stop and Restart.
	Dir string
	// Delete tells whether the registry accepts DELETE.
	Delete bool
	// LogPath is the file the registry logs to.
	LogPath string

	// instance is sent by the registry in an X-Registrytest-Instance header,
	// so that readiness is never taken from another process on the port.
	instance string
	// readyClient, if not nil, is the client readiness is polled with
	// (one that trusts the registry's CA, for TLS).
	readyClient *http.Client
	// readyAuth makes a 401 (authentication required) to GET /v2/ count as
	// ready, as it does for a registry that requires authentication.
	readyAuth bool

	mu      sync.Mutex
	start   func() error // starts the registry on Host, storing in Dir
	stop    func() error // stops it; nil while stopped
	logFile *os.File
}

// Stop stops the registry at once, as a crash would: the process is killed
// (the in-process registry closes its listener and every connection). A
// stopped registry answers nothing until Restart. Stop may be called from
// any goroutine; stopping a stopped registry does nothing.
func (r *Registry) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopLocked()
}

func (r *Registry) stopLocked() error {
	if r.stop == nil {
		return nil
	}
	err := r.stop()
	r.stop = nil
	return err
}

// Restart stops the registry if it runs and starts it again on the same
// port with the same storage, and returns once it answers GET /v2/. It may
// be called from any goroutine.
func (r *Registry) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stopLocked(); err != nil {
		return err
	}
	return r.start()
}

// Running tells whether the registry has been started and not stopped.
func (r *Registry) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stop != nil
}

// Log returns what the registry logged so far.
func (r *Registry) Log() string {
	b, err := os.ReadFile(r.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", r.LogPath, err)
	}
	return string(b)
}

// maxLogShown bounds the log printed for a failed test.
const maxLogShown = 64 << 10

func (r *Registry) logTail() string {
	s := r.Log()
	if len(s) > maxLogShown {
		s = "[...]\n" + s[len(s)-maxLogShown:]
	}
	return s
}

// Factory starts one kind of registry for a test.
type Factory struct {
	// Name is the registry's name, for subtests.
	Name string
	// Delete tells whether the registry accepts DELETE.
	Delete bool
	// Start starts a registry that lives until the end of t.
	Start func(t testing.TB) *Registry
}

// All returns every registry the contract suites run against, in a fixed
// order. It fails t at once if a binary is missing, saying which make target
// installs it.
func All(t testing.TB) []Factory {
	t.Helper()
	v3 := distributionBinary(t)
	v2 := dockerRegistryBinary(t)
	return append([]Factory{
		{Name: NameDistributionDelete, Delete: true, Start: func(t testing.TB) *Registry {
			t.Helper()
			return startBinary(t, NameDistributionDelete, v3, Options{Delete: true}, configOptions{})
		}},
		{Name: NameDistributionNoDelete, Delete: false, Start: func(t testing.TB) *Registry {
			t.Helper()
			return startBinary(t, NameDistributionNoDelete, v3, Options{Delete: false}, configOptions{})
		}},
		{Name: NameDockerRegistry, Delete: true, Start: func(t testing.TB) *Registry {
			t.Helper()
			return startBinary(t, NameDockerRegistry, v2, Options{Delete: true}, configOptions{dockerRegistry: true})
		}},
		{Name: NameInProcess, Delete: true, Start: func(t testing.TB) *Registry {
			t.Helper()
			return InProcess(t)
		}},
	}, doubleFactories()...)
}

// Distribution starts the distribution v3.1.2 registry binary.
func Distribution(t testing.TB, opts Options) *Registry {
	t.Helper()
	name := NameDistributionNoDelete
	if opts.Delete {
		name = NameDistributionDelete
	}
	return startBinary(t, name, distributionBinary(t), opts, configOptions{})
}

// DockerRegistry starts Debian's docker-registry (distribution v2.8).
func DockerRegistry(t testing.TB, opts Options) *Registry {
	t.Helper()
	name := NameDockerRegistry
	if !opts.Delete {
		name += "-nodelete"
	}
	return startBinary(t, name, dockerRegistryBinary(t), opts, configOptions{dockerRegistry: true})
}

// InProcess starts go-containerregistry's registry (pkg/registry) in this
// process. Blobs are kept in Dir; manifests in memory, which Stop and
// Restart keep. It always accepts DELETE.
func InProcess(t testing.TB) *Registry {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := createLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	storage := filepath.Join(dir, "storage")
	if err := os.Mkdir(storage, 0o755); err != nil {
		t.Fatal(err)
	}
	handler := registry.New(
		registry.Logger(newLogger(logFile)),
		registry.WithBlobHandler(registry.NewDiskBlobHandler(storage)),
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{
		Name:    NameInProcess,
		Host:    ln.Addr().String(),
		Dir:     storage,
		Delete:  true,
		LogPath: logPath,
		logFile: logFile,
	}
	r.URL = "http://" + r.Host
	serve := func(ln net.Listener) {
		srv := &httptest.Server{
			Listener: ln,
			Config:   &http.Server{Handler: handler, ErrorLog: newLogger(logFile)},
		}
		srv.Start()
		r.stop = func() error {
			srv.CloseClientConnections()
			srv.Close()
			return nil
		}
	}
	r.start = func() error {
		ln, err := net.Listen("tcp", r.Host)
		if err != nil {
			return fmt.Errorf("%s: listening again on %s: %w", r.Name, r.Host, err)
		}
		serve(ln)
		return waitReady(context.Background(), r, nil)
	}
	serve(ln)
	register(t, r)
	if err := waitReady(context.Background(), r, nil); err != nil {
		t.Fatal(err) // the cleanup prints the log
	}
	return r
}

// createLog creates a registry's log file. It is opened for appending: the
// registry process and this package both write to it.
func createLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
}

func newLogger(w io.Writer) *log.Logger {
	return log.New(w, "", log.LstdFlags|log.Lmicroseconds)
}

// register stops r and closes its log at the end of t, and prints the log
// if t failed.
func register(t testing.TB, r *Registry) {
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stopping %s: %v", r.Name, err)
		}
		if t.Failed() {
			t.Logf("%s registry at %s, log %s:\n%s", r.Name, r.URL, r.LogPath, r.logTail())
		}
		r.logFile.Close()
	})
}

// startBinary starts the registry binary bin with the configuration that
// opts and c make.
func startBinary(t testing.TB, name, bin string, opts Options, c configOptions) *Registry {
	t.Helper()
	r, dir := newBinaryRegistry(t, name, opts)
	serveBinary(t, r, bin, dir, opts, c)
	return r
}

// newBinaryRegistry makes the Registry of a registry binary, not started,
// with its storage and log in a new directory dir, stopped at the end of
// t.
func newBinaryRegistry(t testing.TB, name string, opts Options) (r *Registry, dir string) {
	t.Helper()
	dir = t.TempDir()
	storage := filepath.Join(dir, "storage")
	if err := os.Mkdir(storage, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := createLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	r = &Registry{Name: name, Dir: storage, Delete: opts.Delete, LogPath: logPath, logFile: logFile, instance: randomSecret()}
	register(t, r)
	return r, dir
}

// serveBinary starts bin for r, made by newBinaryRegistry in dir, on a free
// port of 127.0.0.1 with the configuration that opts and c make, written
// to dir/config.yml, and returns once it is ready.
func serveBinary(t testing.TB, r *Registry, bin, dir string, opts Options, c configOptions) {
	t.Helper()
	cfgPath := filepath.Join(dir, "config.yml")
	r.start = func() error {
		return startProcess(r, bin, cfgPath)
	}
	scheme := "http"
	if c.tlsCert != "" {
		scheme = "https"
	}

	// The port is picked by listening on port 0 and closing the listener,
	// so another process may take it before the registry does: try again.
	const attempts = 5
	for i := 1; ; i++ {
		host, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		r.Host, r.URL = host, scheme+"://"+host
		if err := os.WriteFile(cfgPath, []byte(registryConfig(host, r.Dir, r.instance, opts, c)), 0o600); err != nil {
			t.Fatal(err)
		}
		err = r.Restart()
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || i == attempts {
			t.Fatal(err) // the cleanup prints the log
		}
		fmt.Fprintf(r.logFile, "registrytest: %s was taken, trying another port\n", host)
	}
}

var errAddrInUse = errors.New("address already in use")

// startProcess starts the registry binary and waits until it is ready.
func startProcess(r *Registry, bin, cfgPath string) error {
	fmt.Fprintf(r.logFile, "registrytest: starting %s serve %s on %s\n", bin, cfgPath, r.Host)
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Env = registryEnv()
	cmd.Stdout = r.logFile
	cmd.Stderr = r.logFile
	cmd.SysProcAttr = sysProcAttr()
	exited := make(chan struct{})
	started := make(chan error, 1)
	var waitErr error
	go func() {
		defer close(exited)
		// The process is killed if the thread that started it ends (see
		// sysProcAttr): hold this thread until the process is gone.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waitErr = cmd.Wait()
	}()
	if err := <-started; err != nil {
		<-exited
		return fmt.Errorf("%s: %w", r.Name, err)
	}
	r.stop = func() error {
		select {
		case <-exited:
			return nil // it died by itself: the log tells why
		default:
		}
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return err
		}
		<-exited
		fmt.Fprintf(r.logFile, "registrytest: killed %s\n", r.Name)
		return nil
	}
	err := waitReady(context.Background(), r, exited)
	if err == nil {
		return nil
	}
	r.stopLocked()
	select {
	case <-exited:
		if strings.Contains(r.Log(), "address already in use") {
			return fmt.Errorf("%s: %s: %w", r.Name, r.Host, errAddrInUse)
		}
		return fmt.Errorf("%s exited before it was ready (%v)", r.Name, waitErr)
	default:
	}
	return err
}

// registryEnv is the environment of a registry process: the test's, less
// any REGISTRY_* setting that would override the configuration file, with
// OpenTelemetry exports off.
func registryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"OTEL_SDK_DISABLED=true",
		"OTEL_TRACES_EXPORTER=none",
		"OTEL_METRICS_EXPORTER=none",
		"OTEL_LOGS_EXPORTER=none",
	)
}

// waitReady polls GET /v2/ until the registry answers 200 (or 401 if
// r.readyAuth), for at most ReadyTimeout, with r.readyClient if set.
// exited, if not nil, is closed when the process exits.
func waitReady(ctx context.Context, r *Registry, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	client := r.readyClient
	if client == nil {
		client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case r.instance != "" && resp.Header.Get(instanceHeader) != r.instance:
				err = fmt.Errorf("GET /v2/: %s, from another server", resp.Status)
			case r.readyAuth && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized):
				return nil
			case resp.StatusCode == http.StatusOK && resp.Header.Get("Docker-Distribution-Api-Version") == "registry/2.0":
				return nil
			default:
				err = fmt.Errorf("GET /v2/: %s", resp.Status)
			}
		}
		last = err
		select {
		case <-exited:
			return fmt.Errorf("%s exited before it was ready", r.Name)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s after %v: %v", r.Name, r.URL, ReadyTimeout, last)
		case <-tick.C:
		}
	}
}

// freeAddr returns "127.0.0.1:PORT" for a port nothing listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

const instanceHeader = "X-Registrytest-Instance"

func randomSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// configOptions say how a registry's configuration differs from the
// plain distribution v3 one.
type configOptions struct {
	// dockerRegistry leaves out http.relativeurls and http.draintimeout,
	// for docker-registry v2.8.
	dockerRegistry bool
	// logLevel is the log level; "" means warn.
	logLevel string
	// tlsCert and tlsKey, if set, are the files of the certificate and key
	// to serve TLS with.
	tlsCert, tlsKey string
	// auth is the auth section, in YAML, if any.
	auth string
}

// registryConfig configures a registry binary that listens on addr,
// stores in storage and sends instance in the header
// X-Registrytest-Instance: loopback only, plain HTTP unless c says TLS,
// no debug server, no redirects, no upload purging, warnings only unless
// c says another level. The in-memory blob descriptor cache is on, as in
// the project's default configuration.
func registryConfig(addr, storage, instance string, opts Options, c configOptions) string {
	level := c.logLevel
	if level == "" {
		level = "warn"
	}
	var httpExtra string
	if !c.dockerRegistry {
		httpExtra = "  relativeurls: false\n  draintimeout: 0s\n"
	}
	if c.tlsCert != "" {
		httpExtra += fmt.Sprintf("  tls:\n    certificate: %q\n    key: %q\n", c.tlsCert, c.tlsKey)
	}
	return fmt.Sprintf(`version: 0.1
log:
  level: %s
  formatter: text
  accesslog:
    disabled: %t
storage:
  filesystem:
    rootdirectory: %q
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: %t
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  net: tcp
  secret: %q
%s  headers:
    X-Content-Type-Options: [nosniff]
    %s: [%q]
%s`, level, !opts.AccessLog, storage, opts.Delete, addr, randomSecret(), httpExtra, instanceHeader, instance, c.auth)
}

// distributionConfig configures distribution v3 (see registryConfig).
func distributionConfig(addr, storage, instance string, opts Options) string {
	return registryConfig(addr, storage, instance, opts, configOptions{})
}

// distributionBinary finds the distribution v3 binary or fails t.
func distributionBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvDistribution); p != "" {
		return mustExecutable(t, p, "$"+EnvDistribution)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("distribution %s: %v", DistributionVersion, err)
	}
	return mustExecutable(t, filepath.Join(root, "build", "bin", "registry-"+DistributionVersion), "distribution "+DistributionVersion)
}

// dockerRegistryBinary finds Debian's docker-registry or fails t.
func dockerRegistryBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvDockerRegistry); p != "" {
		return mustExecutable(t, p, "$"+EnvDockerRegistry)
	}
	if p, err := exec.LookPath("docker-registry"); err == nil {
		return p
	}
	return mustExecutable(t, "/usr/bin/docker-registry", "docker-registry (Debian package docker-registry)")
}

func mustExecutable(t testing.TB, path, what string) string {
	t.Helper()
	st, err := os.Stat(path)
	if err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return path
	}
	if err == nil {
		err = errors.New("not an executable file")
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing at %s (%v): CI must install it with `make tools` (the Makefile's tools target) before the tests", what, path, err)
	}
	t.Fatalf("%s is missing at %s (%v): run `make tools`", what, path, err)
	return ""
}

// repoRoot finds the root of this module: the directory with the go.mod
// of github.com/plakar-oci/ocistore, above the working directory (a test's
// package directory) or else above this source file.
func repoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && bytes.Contains(b, []byte("module github.com/plakar-oci/ocistore\n")) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("the repository root (go.mod of github.com/plakar-oci/ocistore) is not above the working directory")
}
