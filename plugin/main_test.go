package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/kcontext"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/artifact"
	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/pluginproc"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// The plugin executable, built once for the test binary.
var (
	buildDir  string
	buildExe  string
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func pluginExecutable(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "ocistore-plugin-"); buildErr != nil {
			return
		}
		buildExe, buildErr = pluginproc.Build(".", buildDir)
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildExe
}

// plugin is one plugin process, connected as plakar connects it
// (package pluginproc), stopped at the end of the test.
type plugin struct {
	*pluginproc.Process
	stderr *syncBuffer
}

func spawn(tb testing.TB, env []string) *plugin {
	tb.Helper()
	stderr := &syncBuffer{}
	proc, err := pluginproc.Spawn(pluginExecutable(tb), env, stderr)
	if err != nil {
		tb.Fatal(err)
	}
	p := &plugin{Process: proc, stderr: stderr}
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("plugin stderr:\n%s", stderr.String())
		}
	})
	return p
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// pluginEnv is the environment of a plugin process, with its caches in dir.
var pluginEnv = pluginproc.Env

func randomMAC() objects.MAC {
	var mac objects.MAC
	rand.Read(mac[:])
	return mac
}

// TestStoreOverGRPC drives the plugin executable through plakar's gRPC
// client against a real registry: every storage.Store method.
func TestStoreOverGRPC(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	p := spawn(t, pluginEnv(t.TempDir()))

	st, err := p.Store(ctx, map[string]string{"location": "oci://" + reg.Host + "/plakar/repo"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Type() != "oci" || st.Origin() != reg.Host || st.Root() != "plakar/repo" {
		t.Errorf("Init: type %q, origin %q, root %q", st.Type(), st.Origin(), st.Root())
	}
	klosetConfig := []byte("the repository's serialized configuration")
	if err := st.Create(ctx, klosetConfig); err != nil {
		t.Fatal(err)
	}
	if err := st.Create(ctx, klosetConfig); err == nil {
		t.Error("a second create succeeded")
	}
	if got, err := st.Open(ctx); err != nil || !bytes.Equal(got, klosetConfig) {
		t.Errorf("open: %q, %v", got, err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Error(err)
	}
	if mode, err := st.Mode(ctx); err != nil || mode != storage.ModeRead|storage.ModeWrite {
		t.Errorf("mode: %v, %v", mode, err)
	}

	// A packfile of several gRPC chunks (1 MiB each), a state and a lock.
	objs := map[storage.StorageResource][]byte{
		storage.StorageResourcePackfile: make([]byte, 3<<20+12345),
		storage.StorageResourceState:    []byte("state"),
		storage.StorageResourceLock:     []byte("lock"),
	}
	rand.Read(objs[storage.StorageResourcePackfile])
	macs := map[storage.StorageResource]objects.MAC{}
	for res, data := range objs {
		mac := randomMAC()
		macs[res] = mac
		n, err := st.Put(ctx, res, mac, bytes.NewReader(data))
		if err != nil || n != int64(len(data)) {
			t.Fatalf("put %s: %d, %v", res, n, err)
		}
	}
	for res, data := range objs {
		list, err := st.List(ctx, res)
		if err != nil || !slices.Contains(list, macs[res]) {
			t.Errorf("list %s: %d MACs, %v", res, len(list), err)
		}
		rd, err := st.Get(ctx, res, macs[res], nil)
		if err != nil {
			t.Fatalf("get %s: %v", res, err)
		}
		got, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("get %s: %d bytes, %v", res, len(got), err)
		}
	}
	pack := objs[storage.StorageResourcePackfile]
	rd, err := st.Get(ctx, storage.StorageResourcePackfile, macs[storage.StorageResourcePackfile], &storage.Range{Offset: 1<<20 - 10, Length: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(got, pack[1<<20-10:2<<20-10]) {
		t.Errorf("ranged get: %d bytes, %v", len(got), err)
	}
	if size, err := st.Size(ctx); err != nil || size < int64(len(pack)) {
		t.Errorf("size: %d, %v", size, err)
	}

	packMAC := macs[storage.StorageResourcePackfile]
	if err := st.Delete(ctx, storage.StorageResourcePackfile, packMAC); err != nil {
		t.Fatal(err)
	}
	if list, err := st.List(ctx, storage.StorageResourcePackfile); err != nil || slices.Contains(list, packMAC) {
		t.Errorf("list after delete: %v", err)
	}
	if rd, err := st.Get(ctx, storage.StorageResourcePackfile, packMAC, nil); err == nil {
		_, err = io.ReadAll(rd)
		rd.Close()
		if err == nil {
			t.Error("get of a deleted packfile succeeded")
		}
	}
	if err := st.Close(ctx); err != nil {
		t.Error(err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("the plugin did not exit cleanly: %v\n%s", err, p.stderr.String())
	}

	// A bad configuration is reported by the first call, with the store's
	// message: Kloset prints an error of Init itself before Plakar does.
	p = spawn(t, pluginEnv(t.TempDir()))
	bad, err := p.Store(ctx, map[string]string{"location": "s3://bucket"})
	if err != nil {
		t.Fatalf("Init with an s3 location: %v; want the error from the first call", err)
	}
	if _, err := bad.Open(ctx); err == nil || !strings.Contains(err.Error(), "oci://") {
		t.Errorf("Open with an s3 location: %v", err)
	}
}

// TestPlakarManners runs the plugin as Plakar does, with no cache setting
// of ours, against a registry that answers every request 429 with a
// Retry-After longer than the store waits: the compiled module goes to
// Plakar's cache directory, retries are not logged, and the warning of the
// cause comes once, not once per call.
func TestPlakarManners(t *testing.T) {
	ctx := context.Background()
	var requests atomic.Int64
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Retry-After", "60")
		http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
	}))
	t.Cleanup(reg.Close)
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != host.EnvCacheDir && k != "XDG_CACHE_HOME" && k != "HOME" {
			env = append(env, kv)
		}
	}
	env = append(env, "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	p := spawn(t, env)
	st, err := p.Store(ctx, map[string]string{"location": "oci://" + strings.TrimPrefix(reg.URL, "http://") + "/plakar/manners"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := st.List(ctx, storage.StorageResourcePackfile); err == nil || !strings.Contains(err.Error(), "429") {
			t.Fatalf("list from a registry that answers 429: %v", err)
		}
	}
	st.Close(ctx)
	if err := p.Stop(); err != nil {
		t.Errorf("the plugin did not exit cleanly: %v", err)
	}
	if requests.Load() < 3 {
		t.Fatalf("the registry got %d requests", requests.Load())
	}
	stderr := p.stderr.String()
	if strings.Contains(stderr, "INFO") || strings.Contains(stderr, "trying again") {
		t.Errorf("the plugin logged below warnings:\n%s", stderr)
	}
	if n := strings.Count(stderr, "asks to wait"); n != 1 {
		t.Errorf("the warning of the cause was logged %d times, want once:\n%s", n, stderr)
	}
	if m, _ := filepath.Glob(filepath.Join(home, "cache", "plakar", "ocistore", "wazero-*")); len(m) != 1 {
		t.Errorf("no compiled-module cache in Plakar's cache directory (%s): %v", filepath.Join(home, "cache", "plakar"), m)
	}
	if _, err := os.Stat(filepath.Join(home, "cache", "ocistore")); err == nil {
		t.Error("the plugin made a cache of its own beside Plakar's")
	}

	// An unreachable registry: the retries stay quiet, the error says it.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	p = spawn(t, env)
	st, err = p.Store(ctx, map[string]string{"location": "oci://" + strings.TrimPrefix(closed.URL, "http://") + "/plakar/manners"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.List(ctx, storage.StorageResourcePackfile); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("list from an unreachable registry: %v", err)
	}
	st.Close(ctx)
	p.Stop()
	if stderr := p.stderr.String(); strings.Contains(stderr, "trying again") {
		t.Errorf("the plugin logged its retries:\n%s", stderr)
	}
}

// TestPluginKeyOverGRPC has the plugin executable run a module pulled by
// digest from a registry (through the plugin key), then, in a new process
// with that registry stopped, from its on-disk cache.
func TestPluginKeyOverGRPC(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	plugins := registrytest.Distribution(t, registrytest.Options{})
	digest, err := artifact.Push(ctx, plugins.Host+"/plugins/ocistore:v1", host.EmbeddedGuest(), artifact.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := plugins.Host + "/plugins/ocistore@" + digest
	cache := t.TempDir()
	config := map[string]string{"location": "oci://" + reg.Host + "/plakar/keyed", "plugin": ref}

	roundTrip := func(t *testing.T, create bool) {
		p := spawn(t, pluginEnv(cache))
		st, err := p.Store(ctx, config)
		if err != nil {
			t.Fatal(err)
		}
		if create {
			if err := st.Create(ctx, []byte("config")); err != nil {
				t.Fatal(err)
			}
		}
		mac := randomMAC()
		if _, err := st.Put(ctx, storage.StorageResourceState, mac, strings.NewReader("state")); err != nil {
			t.Fatal(err)
		}
		rd, err := st.Get(ctx, storage.StorageResourceState, mac, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rd)
		rd.Close()
		if string(got) != "state" {
			t.Errorf("get: %q", got)
		}
		st.Close(ctx)
		if err := p.Stop(); err != nil {
			t.Errorf("exit: %v", err)
		}
	}
	roundTrip(t, true)
	if _, err := os.Stat(filepath.Join(cache, "modules", "sha256", strings.TrimPrefix(digest, "sha256:"), "module.wasm")); err != nil {
		t.Fatalf("the module is not cached: %v", err)
	}
	if err := plugins.Stop(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, false)

	// A tag is refused, with a message that says what to do, by the first
	// call.
	p := spawn(t, pluginEnv(t.TempDir()))
	config["plugin"] = plugins.Host + "/plugins/ocistore:v1"
	st, err := p.Store(ctx, config)
	if err != nil {
		t.Fatalf("Init with a tag: %v; want the error from the first call", err)
	}
	if _, err := st.Open(ctx); err == nil || !strings.Contains(err.Error(), "pinned by digest") {
		t.Errorf("Open with a tag: %v", err)
	}
}

// BenchmarkPluginStart measures what plakar waits for when it opens a
// store: the plugin process started, connected and initialized (the module
// compiled or loaded from the cache), then closed. Cold: an empty cache
// each time; warm: the compiled code on disk.
func BenchmarkPluginStart(b *testing.B) {
	ctx := context.Background()
	config := map[string]string{"location": "oci://127.0.0.1:1/bench"}
	start := func(b *testing.B, cache string) {
		p := spawn(b, pluginEnv(cache))
		if _, err := p.Store(ctx, config); err != nil {
			b.Fatal(err)
		}
		if err := p.Stop(); err != nil {
			b.Fatal(err)
		}
	}
	pluginExecutable(b)
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			start(b, b.TempDir())
		}
	})
	warm := b.TempDir()
	start(b, warm)
	b.Run("warm", func(b *testing.B) {
		for b.Loop() {
			start(b, warm)
		}
	})
}

// TestPluginFinishesDeleteOnShutdown releases a lock through plakar's gRPC
// client and closes the plugin's pipes while the release is under way, as
// Plakar does when a command ends right after Kloset started releasing its
// lock: the plugin ends its server, finishes the release, and only then
// exits. The release is held at a proxy until the plugin has ended its
// server (closed its standard output).
func TestPluginFinishesDeleteOnShutdown(t *testing.T) {
	for _, deletes := range []bool{false, true} {
		t.Run(fmt.Sprintf("delete=%v", deletes), func(t *testing.T) {
			ctx := context.Background()
			reg := registrytest.Distribution(t, registrytest.Options{Delete: deletes})
			proxy := faultproxy.Start(t, reg.URL)
			p := spawn(t, pluginEnv(t.TempDir()))
			st, err := p.Store(ctx, map[string]string{"location": "oci://" + proxy.Host + "/plakar/shutdown"})
			if err != nil {
				t.Fatal(err)
			}
			mac := randomMAC()
			if _, err := st.Put(ctx, storage.StorageResourceLock, mac, bytes.NewReader([]byte("a lock"))); err != nil {
				t.Fatal(err)
			}
			// Kloset lists the locks before it releases its own.
			if _, err := st.List(ctx, storage.StorageResourceLock); err != nil {
				t.Fatal(err)
			}

			arrived, proceed := make(chan struct{}), make(chan struct{})
			var hold sync.Once
			var killed atomic.Bool
			proxy.Add(faultproxy.Rule{Match: func(r *http.Request) bool {
				if r.Method == http.MethodGet || r.Method == http.MethodHead {
					return false
				}
				hold.Do(func() {
					close(arrived)
					select {
					case <-proceed:
					case <-r.Context().Done():
						killed.Store(true)
					}
				})
				return false
			}})
			go st.Delete(ctx, storage.StorageResourceLock, mac) // Plakar does not wait for it
			<-arrived
			p.CloseInput() // Plakar exits: the plugin's standard input ends
			close(proceed)
			if err := p.Stop(); err != nil {
				t.Fatalf("the plugin exited with %v", err)
			}
			if killed.Load() {
				t.Fatal("the plugin exited with its delete in flight")
			}
			check, err := host.New(ctx, "oci", map[string]string{"location": "oci://" + reg.Host + "/plakar/shutdown"})
			if err != nil {
				t.Fatal(err)
			}
			defer check.Close(ctx)
			locks, err := check.List(ctx, storage.StorageResourceLock)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(locks, mac) {
				t.Fatal("the lock is still there after the plugin exited")
			}
		})
	}
}

// TestPluginKilledAtEveryStepOfRelease releases a lock through plakar's
// gRPC client and kills the plugin process (SIGKILL) as the release's
// request k+1 reaches the registry, for every k, on a registry that
// refuses DELETE and on one that deletes: the lock is then whole if none
// of the requests that went through wrote anything, and released
// otherwise.
func TestPluginKilledAtEveryStepOfRelease(t *testing.T) {
	for _, deletes := range []bool{false, true} {
		t.Run(fmt.Sprintf("delete=%v", deletes), func(t *testing.T) {
			ctx := context.Background()
			reg := registrytest.Distribution(t, registrytest.Options{Delete: deletes})
			proxy := faultproxy.Start(t, reg.URL)
			env := pluginEnv(t.TempDir())
			for k := 0; ; k++ {
				repo := fmt.Sprintf("plakar/killed-%d", k)
				p := spawn(t, env)
				st, err := p.Store(ctx, map[string]string{"location": "oci://" + proxy.Host + "/" + repo})
				if err != nil {
					t.Fatal(err)
				}
				mac, data := randomMAC(), []byte(fmt.Sprintf("lock %d", k))
				if _, err := st.Put(ctx, storage.StorageResourceLock, mac, bytes.NewReader(data)); err != nil {
					t.Fatal(err)
				}
				if _, err := st.List(ctx, storage.StorageResourceLock); err != nil {
					t.Fatal(err)
				}
				proxy.Requests()
				var seen atomic.Int32
				var killed atomic.Bool
				proxy.Add(faultproxy.Rule{
					Match: func(*http.Request) bool {
						if int(seen.Add(1)) <= k {
							return false
						}
						if !killed.Swap(true) {
							p.Kill()
						}
						return true
					},
					Fault: faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Hour},
				})
				err = st.Delete(ctx, storage.StorageResourceLock, mac)
				p.Stop()
				proxy.Clear()
				sent := proxy.Requests()
				if !killed.Load() && err != nil {
					t.Fatalf("k=%d: the release failed with no fault: %v", k, err)
				}
				wrote := false
				for i, e := range sent {
					if i < k && (e.Method == "PUT" || e.Method == "DELETE") && e.Status/100 == 2 {
						wrote = true
					}
				}

				check, err := host.New(ctx, "oci", map[string]string{"location": "oci://" + reg.Host + "/" + repo})
				if err != nil {
					t.Fatal(err)
				}
				locks, err := check.List(ctx, storage.StorageResourceLock)
				check.Close(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if listed := slices.Contains(locks, mac); listed == wrote {
					t.Fatalf("k=%d: after %v (wrote %v), the lock is listed: %v", k, sent, wrote, listed)
				}
				if !killed.Load() {
					t.Logf("the release is %d requests", k)
					return
				}
			}
		})
	}
}

// TestBadLocationSaidOnce opens and creates a store whose location has no
// repository path the way Plakar does, through Kloset's storage.Open and
// storage.Create over the plugin executable: the cause reaches Plakar
// once, in the error it prints, and neither Kloset nor the plugin prints
// it besides (Kloset prints a constructor's error itself).
func TestBadLocationSaidOnce(t *testing.T) {
	const cause = "a repository path is required after the registry"
	p := spawn(t, pluginEnv(t.TempDir()))
	// Plakar registers the protocol with its plugin's client
	// (plugins.RegisterStorage); the test binary has host.New there.
	if err := storage.Unregister("oci"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		storage.Unregister("oci")
		storage.Register("oci", 0, host.New)
	})
	if err := storage.Register("oci", 0, func(ctx context.Context, _ string, config map[string]string) (storage.Store, error) {
		return p.Store(ctx, config)
	}); err != nil {
		t.Fatal(err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	printed := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		printed <- string(b)
	}()
	stderr := os.Stderr
	os.Stderr = w
	kctx := kcontext.NewKContext()
	_, _, openErr := storage.Open(kctx, map[string]string{"location": "oci://127.0.0.1:5000"})
	_, createErr := storage.Create(kctx, map[string]string{"location": "oci://127.0.0.1:5000/"}, []byte("a configuration"))
	os.Stderr = stderr
	w.Close()
	kloset := <-printed

	for name, err := range map[string]error{"open": openErr, "create": createErr} {
		if err == nil || strings.Count(err.Error(), cause) != 1 {
			t.Errorf("%s: %v; want the cause once", name, err)
		}
	}
	if strings.Contains(kloset, cause) {
		t.Errorf("Kloset printed the cause before returning it to Plakar:\n%s", kloset)
	}
	if strings.Contains(p.stderr.String(), cause) {
		t.Errorf("the plugin printed the cause besides returning it:\n%s", p.stderr.String())
	}
}
