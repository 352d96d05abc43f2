package host_test

// Reliability: faults, bad registries and bad input never lose data or
// hang. Every test here goes through the real wasm store (the embedded
// guest, or a deliberately faulty one) against real registries on
// 127.0.0.1, most of them behind internal/faultproxy.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	kresources "github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/snapshot"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// TestMain runs a child process of TestReliabilityConcurrentBackups (see
// runChild) when the test binary is started as one, and the tests
// otherwise.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	// The stores' read-ahead windows go to a cache of this run, not the
	// user's: a test sees only the windows its own run fetched.
	dir, err := os.MkdirTemp("", "ocistore-host-test-cache-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CACHE_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newStoreWith makes a store over the embedded guest (compiled once for the
// test binary, as openStore does) with store options.
func newStoreWith(t *testing.T, config map[string]string, opts ...host.StoreOption) *host.Store {
	t.Helper()
	pluginOnce.Do(func() {
		plugin, pluginErr = host.Load(context.Background(), host.EmbeddedGuest(), host.Options{})
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	s, err := host.NewStore(context.Background(), plugin, config, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// streamed is the store option that makes every put stream its body, as
// Kloset produces it, instead of reading it ahead: the upload path whose
// retries depend on how much of the body went out.
var streamed = host.WithReadAheadLimit(-1)

// faultRig is a registry behind a fault proxy, and the stores on it.
type faultRig struct {
	reg   *registrytest.Registry
	proxy *faultproxy.Proxy
}

func newFaultRig(t *testing.T, reg *registrytest.Registry) *faultRig {
	return &faultRig{reg: reg, proxy: faultproxy.Start(t, reg.URL)}
}

// store makes a new store (with empty caches, as another process on
// another machine has) on repository repo through the proxy.
func (r *faultRig) store(t *testing.T, repo string, opts ...host.StoreOption) *host.Store {
	t.Helper()
	return newStoreWith(t, map[string]string{"location": "oci://" + r.proxy.Host + "/" + repo, "readahead_cache_dir": t.TempDir()}, opts...)
}

// readAll reads a Get through: the bytes, and the error of the Get or of
// the read.
func readAll(ctx context.Context, s storage.Store, res storage.StorageResource, mac objects.MAC, rng *storage.Range) ([]byte, error) {
	rd, err := s.Get(ctx, res, mac, rng)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// mustNotList fails t if res lists mac.
func mustNotList(t *testing.T, s storage.Store, res storage.StorageResource, mac objects.MAC) {
	t.Helper()
	for _, m := range list(t, s, res) {
		if m == mac {
			t.Fatalf("%s %x is listed after a failed put", res, mac[:4])
		}
	}
	if _, err := s.Get(context.Background(), res, mac, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("get of %s %x after a failed put: %v, want fs.ErrNotExist", res, mac[:4], err)
	}
}

// waitHits waits until h took n requests, for at most 10 s.
func waitHits(t *testing.T, h faultproxy.Handle, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.Hits() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy saw %d requests of the rule, want %d", h.Hits(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const packfile = storage.StorageResourcePackfile

// TestReliabilityPutFaults breaks each request of a put, through the
// streamed upload path and the read-ahead one. A put either succeeds, and
// the object reads back whole, or fails with an error, and the object is
// nowhere: never listed half-written.
func TestReliabilityPutFaults(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: true}))
	p := rig.proxy
	data := randomBytes(1 << 20)

	// Faults the store recovers from: the put succeeds.
	for _, tt := range []struct {
		name  string
		rule  faultproxy.Rule
		opts  []host.StoreOption
		check func(t *testing.T, log []faultproxy.Entry)
	}{
		{name: "POST answered 502 twice",
			rule: faultproxy.Rule{Match: faultproxy.UploadStart, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 502}, Times: 2}},
		{name: "PATCH refused with 503 before the body", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadPatch, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}, Times: 1},
			check: func(t *testing.T, log []faultproxy.Entry) {
				// 100-continue kept the body unsent: the upload started over.
				if n := countEntries(log, "PATCH", 0); n != 2 {
					t.Errorf("%d PATCHes, want 2: %v", n, log)
				}
			}},
		{name: "PATCH answer lost after the whole body", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadPatch, Fault: faultproxy.Fault{Kind: faultproxy.LoseResponse}, Times: 1},
			check: func(t *testing.T, log []faultproxy.Entry) {
				// Recovered from the upload session, not sent again.
				if n := countEntries(log, "PATCH", 0); n != 1 {
					t.Errorf("%d PATCHes, want 1: %v", n, log)
				}
			}},
		{name: "PATCH answer reset after the whole body", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadPatch, Fault: faultproxy.Fault{Kind: faultproxy.ResetResponse}, Times: 1},
			check: func(t *testing.T, log []faultproxy.Entry) {
				if n := countEntries(log, "PATCH", 0); n != 1 {
					t.Errorf("%d PATCHes, want 1: %v", n, log)
				}
			}},
		{name: "commit answer lost", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadCommit, Fault: faultproxy.Fault{Kind: faultproxy.LoseResponse}, Times: 1}},
		{name: "commit answered 500", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadCommit, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 500}, Times: 1}},
		{name: "manifest PUT answer lost",
			rule: faultproxy.Rule{Match: faultproxy.ManifestPut, Fault: faultproxy.Fault{Kind: faultproxy.LoseResponse}, Times: 1}},
		{name: "manifest PUT reset mid-request",
			rule: faultproxy.Rule{Match: faultproxy.ManifestPut, Fault: faultproxy.Fault{Kind: faultproxy.ResetRequest, Bytes: 10}, Times: 1}},
		{name: "manifest PUT answered 503 twice",
			rule: faultproxy.Rule{Match: faultproxy.ManifestPut, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}, Times: 2}},
		{name: "read-ahead PUT answer lost",
			rule: faultproxy.Rule{Match: faultproxy.UploadCommit, Fault: faultproxy.Fault{Kind: faultproxy.LoseResponse}, Times: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := rig.store(t, "reliability/put", tt.opts...)
			p.Clear()
			p.Requests()
			h := p.Add(tt.rule)
			mac := randomMAC()
			put(t, s, packfile, mac, data)
			log := p.Requests()
			p.Clear()
			if h.Hits() == 0 {
				t.Fatalf("the fault never applied: %v", log)
			}
			if tt.check != nil {
				tt.check(t, log)
			}
			// Read back through a store that never saw the put.
			if got := get(t, rig.store(t, "reliability/put"), packfile, mac, nil); !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes that differ from the %d put", len(got), len(data))
			}
		})
	}

	// Faults the store cannot recover from: the put fails, promptly, with
	// a transient error, and leaves nothing behind.
	for _, tt := range []struct {
		name string
		rule faultproxy.Rule
		opts []host.StoreOption
		want string
	}{
		{name: "PATCH reset mid-upload", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadPatch, Fault: faultproxy.Fault{Kind: faultproxy.ResetRequest, Bytes: 64 << 10}, Times: 1},
			want: "cannot be retried"},
		{name: "every commit answered 503", opts: []host.StoreOption{streamed},
			rule: faultproxy.Rule{Match: faultproxy.UploadCommit, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}},
			want: "503"},
		{name: "every read-ahead PUT answered 503",
			rule: faultproxy.Rule{Match: faultproxy.UploadCommit, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}},
			want: "503"},
		{name: "every manifest PUT answered 502",
			rule: faultproxy.Rule{Match: faultproxy.ManifestPut, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 502}},
			want: "502"},
		{name: "429 asking to wait an hour",
			rule: faultproxy.Rule{Match: faultproxy.ManifestPut, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 429, Header: faultproxy.RetryAfter(time.Hour)}},
			want: "asks to wait 1h0m0s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := rig.store(t, "reliability/put-fails", tt.opts...)
			p.Clear()
			p.Add(tt.rule)
			mac := randomMAC()
			start := time.Now()
			_, err := s.Put(context.Background(), packfile, mac, bytes.NewReader(data))
			elapsed := time.Since(start)
			p.Clear()
			if err == nil {
				t.Fatal("the put succeeded")
			}
			if !errors.Is(err, host.ErrTransient) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("put: %v; want a transient error saying %q", err, tt.want)
			}
			// The retry budget bounds a failing call (retry.go: 2.5 s of
			// waits, plus the requests).
			if elapsed > 6*time.Second {
				t.Errorf("the put took %v to fail", elapsed)
			}
			mustNotList(t, s, packfile, mac)
			// The same object can be put afterwards.
			put(t, s, packfile, mac, data)
			if got := get(t, s, packfile, mac, nil); !bytes.Equal(got, data) {
				t.Fatal("the object put again reads back wrong")
			}
		})
	}

	t.Run("429 with Retry-After is honoured", func(t *testing.T) {
		s := rig.store(t, "reliability/put")
		p.Clear()
		h := p.Once(faultproxy.ManifestPut, faultproxy.Fault{Kind: faultproxy.Status, Status: 429, Header: faultproxy.RetryAfter(time.Second)})
		start := time.Now()
		put(t, s, packfile, randomMAC(), data[:1000])
		if elapsed := time.Since(start); h.Hits() != 1 || elapsed < time.Second {
			t.Errorf("the put took %v after %d 429s; it must wait the second asked for", elapsed, h.Hits())
		}
	})
}

func countEntries(log []faultproxy.Entry, method string, status int) int {
	n := 0
	for _, e := range log {
		if e.Method == method && (status == 0 || e.Status == status) {
			n++
		}
	}
	return n
}

// TestReliabilityGetFaults breaks downloads: a get either returns the
// right bytes, or fails (the call or the read), never with wrong bytes.
func TestReliabilityGetFaults(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: true}))
	p := rig.proxy
	// Larger than the first read-ahead window twice, so that a ranged
	// read fetches a window with a Range, not the whole blob.
	data := randomBytes(2_000_000)
	mac := randomMAC()
	put(t, rig.store(t, "reliability/get"), packfile, mac, data)
	ctx := context.Background()

	// Recovered: the get returns the right bytes. Each subtest reads
	// through a new store, whose cache is empty: it reads the manifest.
	for _, tt := range []struct {
		name string
		rule faultproxy.Rule
		rng  *storage.Range
	}{
		{name: "manifest GET answered 503 then 500", rule: faultproxy.Rule{Match: faultproxy.ManifestGet, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}, Times: 2}},
		{name: "manifest body truncated", rule: faultproxy.Rule{Match: faultproxy.ManifestGet, Fault: faultproxy.Fault{Kind: faultproxy.Truncate}, Times: 1}},
		{name: "manifest reset mid-body", rule: faultproxy.Rule{Match: faultproxy.ManifestGet, Fault: faultproxy.Fault{Kind: faultproxy.ResetResponse, Bytes: 20}, Times: 1}},
		{name: "manifest with a wrong Docker-Content-Digest", rule: faultproxy.Rule{Match: faultproxy.ManifestGet, Fault: faultproxy.Fault{Kind: faultproxy.WrongDigest}, Times: 1}},
		{name: "manifest bytes corrupted", rule: faultproxy.Rule{Match: faultproxy.ManifestGet, Fault: faultproxy.Fault{Kind: faultproxy.Corrupt}, Times: 2}},
		{name: "blob GET answered 502", rule: faultproxy.Rule{Match: faultproxy.BlobGet, Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 502}, Times: 1}},
		{name: "blob GET reset before an answer", rule: faultproxy.Rule{Match: faultproxy.BlobGet, Fault: faultproxy.Fault{Kind: faultproxy.LoseResponse}, Times: 1}},
		{name: "blob with a wrong Docker-Content-Digest", rule: faultproxy.Rule{Match: faultproxy.BlobGet, Fault: faultproxy.Fault{Kind: faultproxy.WrongDigest}, Times: 1}},
		{name: "200 with the whole blob to a Range", rng: &storage.Range{Offset: 12345, Length: 1000},
			rule: faultproxy.Rule{Match: faultproxy.Ranged(faultproxy.BlobGet), Fault: faultproxy.Fault{Kind: faultproxy.IgnoreRange}, Times: 1}},
		{name: "ranged GET answered 503", rng: &storage.Range{Offset: 299_000, Length: 5000},
			rule: faultproxy.Rule{Match: faultproxy.Ranged(faultproxy.BlobGet), Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}, Times: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := rig.store(t, "reliability/get")
			p.Clear()
			h := p.Add(tt.rule)
			got, err := readAll(ctx, s, packfile, mac, tt.rng)
			p.Clear()
			want := data
			if tt.rng != nil {
				want = data[tt.rng.Offset:min(uint64(len(data)), tt.rng.Offset+uint64(tt.rng.Length))]
			}
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("get: %d bytes, %v; want the %d right ones", len(got), err, len(want))
			}
			if h.Hits() == 0 {
				t.Fatal("the fault never applied")
			}
		})
	}

	// Detected: the bytes never come back as good. Reading fails at the
	// end of the body, where the host checks the blob's digest, or before.
	// The error comes with the last bytes read: like any io.Reader's, what
	// a read returns with an error is not to be used.
	for _, tt := range []struct {
		name  string
		fault faultproxy.Fault
		want  string
	}{
		{"blob bytes corrupted", faultproxy.Fault{Kind: faultproxy.Corrupt}, "corrupted download"},
		{"blob body truncated", faultproxy.Fault{Kind: faultproxy.Truncate}, "unexpected EOF"},
		{"blob reset mid-download", faultproxy.Fault{Kind: faultproxy.ResetResponse, Bytes: 100_000}, "reset"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := rig.store(t, "reliability/get")
			p.Clear()
			p.Once(faultproxy.BlobGet, tt.fault)
			got, err := readAll(ctx, s, packfile, mac, nil)
			p.Clear()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("get: %d bytes, %v; want a failed read saying %q", len(got), err, tt.want)
			}
			if len(got) >= len(data) && tt.fault.Kind != faultproxy.Corrupt {
				t.Fatalf("%d bytes read before the failure, of %d", len(got), len(data))
			}
			// The next get, on the same store, works.
			if got, err := readAll(ctx, s, packfile, mac, nil); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("get after the fault: %d bytes, %v", len(got), err)
			}
		})
	}

	t.Run("manifest always with a wrong digest", func(t *testing.T) {
		s := rig.store(t, "reliability/get")
		p.Clear()
		p.Always(faultproxy.ManifestGet, faultproxy.Fault{Kind: faultproxy.WrongDigest})
		_, err := s.Get(ctx, packfile, mac, nil)
		p.Clear()
		if !errors.Is(err, host.ErrTransient) || !strings.Contains(err.Error(), "is corrupted") {
			t.Fatalf("get: %v; want a transient error about a corrupted manifest", err)
		}
	})

	t.Run("tag list faults", func(t *testing.T) {
		s := rig.store(t, "reliability/get")
		for _, f := range []faultproxy.Fault{
			{Kind: faultproxy.Status, Status: 503},
			{Kind: faultproxy.Truncate},
			{Kind: faultproxy.ResetResponse, Bytes: 5},
			{Kind: faultproxy.Status, Status: 429, Header: faultproxy.RetryAfter(0)},
		} {
			p.Clear()
			h := p.Once(faultproxy.TagList, f)
			if got := list(t, s, packfile); !sameMACs(got, mac) || h.Hits() != 1 {
				t.Fatalf("list with %v: %d MACs, %d hits", f.Kind, len(got), h.Hits())
			}
		}
		p.Clear()
	})

	t.Run("delete answer lost", func(t *testing.T) {
		s := rig.store(t, "reliability/get")
		other := randomMAC()
		put(t, s, packfile, other, data[:100])
		p.Clear()
		p.Once(faultproxy.ManifestDelete, faultproxy.Fault{Kind: faultproxy.LoseResponse})
		if err := s.Delete(ctx, packfile, other); err != nil {
			t.Fatalf("delete: %v", err)
		}
		p.Clear()
		mustNotList(t, s, packfile, other)
	})

	t.Run("slow answer past the deadline", func(t *testing.T) {
		s := rig.store(t, "reliability/get")
		p.Clear()
		h := p.Once(faultproxy.ManifestGet, faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Minute})
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := s.Get(dctx, packfile, mac, nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
			t.Fatalf("get: %v after %v; want context.DeadlineExceeded soon after 300ms", err, time.Since(start))
		}
		if h.Hits() != 1 {
			t.Fatal("the slow answer was never asked for")
		}
		if got, err := readAll(ctx, s, packfile, mac, nil); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("get after the deadline: %d bytes, %v", len(got), err)
		}
	})
}

// TestReliabilityCancel cancels calls in the middle: each returns promptly
// with context.Canceled, and the store's next calls work (the instance
// that was cancelled is replaced).
func TestReliabilityCancel(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: true}))
	p := rig.proxy
	data := randomBytes(200_000)
	mac := randomMAC()
	put(t, rig.store(t, "reliability/cancel"), packfile, mac, data)

	for _, tt := range []struct {
		name  string
		match faultproxy.Matcher
		fault faultproxy.Fault
		call  func(ctx context.Context, s *host.Store) error
		// asleep cancels once the guest said it waits before a retry,
		// rather than once the proxy has the request.
		asleep bool
		// within bounds the return after the cancellation.
		within time.Duration
	}{
		{"get waiting for a blob", faultproxy.BlobGet, faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Minute},
			func(ctx context.Context, s *host.Store) error {
				_, err := readAll(ctx, s, packfile, mac, nil)
				return err
			}, false, time.Second},
		{"list waiting for the tag list", faultproxy.TagList, faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Minute},
			func(ctx context.Context, s *host.Store) error { _, err := s.List(ctx, packfile); return err }, false, time.Second},
		{"put waiting for its upload", faultproxy.UploadPatch, faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Minute},
			func(ctx context.Context, s *host.Store) error {
				_, err := s.Put(ctx, packfile, randomMAC(), bytes.NewReader(data))
				return err
			}, false, time.Second},
		{"get asleep in a retry wait", faultproxy.ManifestGet, faultproxy.Fault{Kind: faultproxy.Status, Status: 503, Header: faultproxy.RetryAfter(2 * time.Second)},
			func(ctx context.Context, s *host.Store) error { _, err := s.Get(ctx, packfile, mac, nil); return err }, true, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			retrying := &signalHandler{match: "trying again", seen: make(chan struct{})}
			s := rig.store(t, "reliability/cancel", streamed, host.WithLogger(slog.New(retrying)))
			p.Clear()
			h := p.Always(tt.match, tt.fault)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- tt.call(ctx, s) }()
			if tt.asleep {
				select {
				case <-retrying.seen:
				case <-time.After(10 * time.Second):
					t.Fatal("the guest never said it would retry")
				}
			} else {
				waitHits(t, h, 1)
			}
			cancel()
			start := time.Now()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the call did not return 30 s after it was cancelled")
			}
			p.Clear()
			elapsed := time.Since(start)
			if !errors.Is(err, context.Canceled) || elapsed > tt.within {
				t.Fatalf("cancelled call: %v after %v; want context.Canceled within %v", err, elapsed, tt.within)
			}
			t.Logf("returned %v after the cancellation", elapsed.Round(time.Millisecond))
			// Later calls on the same store work.
			if got, err := readAll(context.Background(), s, packfile, mac, nil); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("get after the cancellation: %d bytes, %v", len(got), err)
			}
			if got := list(t, s, packfile); !containsMAC(got, mac) {
				t.Fatal("list after the cancellation lacks the object")
			}
		})
	}
}

// signalHandler is a slog.Handler that closes seen at the first record
// whose message contains match.
type signalHandler struct {
	match string
	once  sync.Once
	seen  chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *signalHandler) WithGroup(string) slog.Handler            { return h }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}

func containsMAC(macs []objects.MAC, mac objects.MAC) bool {
	for _, m := range macs {
		if m == mac {
			return true
		}
	}
	return false
}

// buildFaultyGuest builds the guest with faults on demand (guest/faults.go).
func buildFaultyGuest(t *testing.T) []byte {
	t.Helper()
	// go test puts its own GOROOT/bin first on PATH.
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the faulty guest needs the go command: %v", err)
	}
	out := t.TempDir() + "/faultyguest.wasm"
	cmd := exec.Command(goTool, "build", "-trimpath", "-buildmode=c-shared", "-tags", "faults", "-o", out, "../guest")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the faulty guest: %v\n%s", err, b)
	}
	wasm, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return wasm
}

// faultyMAC is a MAC that makes the faulty guest misbehave.
func faultyMAC(mode string) objects.MAC {
	var mac objects.MAC
	copy(mac[:], "fault:"+mode)
	return mac
}

// TestReliabilityFaultyGuest runs a guest that traps, panics, exits, runs
// out of memory, hands the host a bad pointer or spins, in the middle of a
// call: the host returns an error (it never panics), replaces the
// instance, and the next calls work.
func TestReliabilityFaultyGuest(t *testing.T) {
	wasm := buildFaultyGuest(t)
	var logs bytes.Buffer
	var logMu sync.Mutex
	p, err := host.Load(context.Background(), wasm, host.Options{
		CacheDir:         "off",
		MemoryLimitPages: 512, // 32 MiB
		Logger:           newTestLogger(&logs, &logMu),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	reg := registrytest.InProcess(t)
	// One instance at a time: every fault hits the instance the next call
	// would get, if the host did not replace it.
	s, err := host.NewStore(context.Background(), p, map[string]string{
		"location": "oci://" + reg.Host + "/reliability/faulty", "concurrency": "1",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	ctx := context.Background()
	if err := s.Create(ctx, []byte("config")); err != nil {
		t.Fatal(err)
	}
	good, data := randomMAC(), randomBytes(5000)
	put(t, s, packfile, good, data)

	for _, tt := range []struct {
		mode string
		want string // in the error
	}{
		{"trap", "out of bounds memory access"},
		{"panic", "unreachable"}, // Go traps after printing the panic
		{"exit", "exit_code(3)"},
		{"oom", "unreachable"}, // after "fatal error: out of memory", checked below
		{"badptr", "outside its memory"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			start := time.Now()
			_, err := s.Put(ctx, packfile, faultyMAC(tt.mode), bytes.NewReader([]byte("x")))
			if err == nil || !strings.Contains(err.Error(), "failed inside the sandbox (the instance is replaced)") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("put with a %s: %v; want the sandbox failure, saying %q", tt.mode, err, tt.want)
			}
			if elapsed := time.Since(start); elapsed > 20*time.Second {
				t.Errorf("the %s took %v", tt.mode, elapsed)
			}
			t.Logf("%s: %v", tt.mode, err)
			// The same store goes on: a fresh instance serves the next calls.
			if got := get(t, s, packfile, good, nil); !bytes.Equal(got, data) {
				t.Fatal("get after the fault returned other bytes")
			}
			if got := list(t, s, packfile); !sameMACs(got, good) {
				t.Fatalf("list after the fault: %d MACs", len(got))
			}
		})
	}

	t.Run("hang", func(t *testing.T) {
		hctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := s.Get(hctx, packfile, faultyMAC("hang"), nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Fatalf("get that spins: %v after %v; want context.DeadlineExceeded soon after 300ms", err, time.Since(start))
		}
		if got := get(t, s, packfile, good, nil); !bytes.Equal(got, data) {
			t.Fatal("get after the hang returned other bytes")
		}
	})

	logMu.Lock()
	defer logMu.Unlock()
	for _, want := range []string{"faultyguest: deliberate panic", "out of memory"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("%q is not in the host's log of the guest's output:\n%s", want, logs.String())
		}
	}
}

// TestReliabilityDeleteFaults checks deletion on a registry that refuses
// DELETE (tombstones) under faults: a delete that fails half-way leaves
// the object whole and listed; one that succeeds leaves it gone.
func TestReliabilityDeleteFaults(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: false}))
	p := rig.proxy
	s := rig.store(t, "reliability/tombstones")
	ctx := context.Background()
	data := randomBytes(1000)
	mac := randomMAC()
	put(t, s, storage.StorageResourceLock, mac, data)

	// The lock's tag cannot be moved to the tombstone: the delete fails
	// and the lock is still there, whole.
	p.Add(faultproxy.Rule{Match: faultproxy.Tagged(faultproxy.ManifestPut, "lock-"), Fault: faultproxy.Fault{Kind: faultproxy.Status, Status: 503}})
	if err := s.Delete(ctx, storage.StorageResourceLock, mac); !errors.Is(err, host.ErrTransient) {
		t.Fatalf("delete with the tag PUT failing: %v, want a transient error", err)
	}
	p.Clear()
	if got := list(t, s, storage.StorageResourceLock); !sameMACs(got, mac) {
		t.Fatalf("after a failed delete: %d locks, want the one", len(got))
	}
	if got := get(t, s, storage.StorageResourceLock, mac, nil); !bytes.Equal(got, data) {
		t.Fatal("the lock reads back wrong after a failed delete")
	}
	// With the answers lost once each, the delete goes through.
	p.Once(faultproxy.ManifestPut, faultproxy.Fault{Kind: faultproxy.LoseResponse})
	p.Once(faultproxy.ManifestHead, faultproxy.Fault{Kind: faultproxy.Status, Status: 500})
	if err := s.Delete(ctx, storage.StorageResourceLock, mac); err != nil {
		t.Fatalf("delete: %v", err)
	}
	p.Clear()
	if got := list(t, s, storage.StorageResourceLock); len(got) != 0 {
		t.Fatalf("after delete: %d locks", len(got))
	}
	// Put again under the same MAC, as Kloset refreshes a lock.
	put(t, s, storage.StorageResourceLock, mac, data[:10])
	if got := list(t, rig.store(t, "reliability/tombstones"), storage.StorageResourceLock); !sameMACs(got, mac) {
		t.Fatalf("after put again: %d locks", len(got))
	}
}

// newTestLogger logs into w, under mu.
func newTestLogger(w io.Writer, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w, mu: mu}, nil))
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// --- Kloset over a failing registry ---

var reliabilityPassphrase = []byte("reliability passphrase, for the tests")

// reliabilitySource generates a small source tree (n files up to 128 KiB
// and one of 1 MiB, from seed) and describes it as a snapshot must hold it.
func reliabilitySource(t *testing.T, seed uint64, n int) *sourceTree {
	t.Helper()
	dir := t.TempDir()
	randBytes, err := generateFiles(dir, seed, n, 128<<10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	src, err := newSourceTree(dir, randBytes)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// createStore creates an encrypted store at cfg.
func createStore(t *testing.T, cfg map[string]string) {
	t.Helper()
	if _, err := vault.Create(context.Background(), cfg, reliabilityPassphrase, nil); err != nil {
		t.Fatal(err)
	}
}

// waitNoLocks waits until the repository has no lock left, for at most
// 15 s: Kloset deletes a backup's lock in the background once the
// snapshot is closed.
func waitNoLocks(t *testing.T, repo *repository.Repository) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		locks, err := repo.GetLocks()
		if err != nil {
			t.Fatalf("listing the locks: %v", err)
		}
		if len(locks) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d locks still there after 15 s", len(locks))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killingStore kills the registry when the first packfile is put, and
// starts it again once that put has failed: the registry is gone, then
// back, in the middle of the backup.
type killingStore struct {
	storage.Store
	t    *testing.T
	reg  *registrytest.Registry
	once sync.Once
	err  chan error // the failed put's error
}

func (k *killingStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	first := false
	if res == storage.StorageResourcePackfile {
		k.once.Do(func() { first = true })
	}
	if !first {
		return k.Store.Put(ctx, res, mac, rd)
	}
	if err := k.reg.Stop(); err != nil {
		k.t.Errorf("killing the registry: %v", err)
	}
	n, err := k.Store.Put(ctx, res, mac, rd)
	k.err <- err
	if rerr := k.reg.Restart(); rerr != nil {
		k.t.Errorf("restarting the registry: %v", rerr)
	}
	return n, err
}

// TestReliabilityRegistryRestart kills the registry process in the middle
// of a Kloset backup and starts it again: the backup fails cleanly (an
// error, in bounded time), the next backup succeeds, check passes and the
// restore is byte-identical.
func TestReliabilityRegistryRestart(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/reliability/restart"}
	createStore(t, cfg)
	src := reliabilitySource(t, 7, 25)

	killer := &killingStore{t: t, reg: reg, err: make(chan error, 1)}
	v := openVault(t, cfg, reliabilityPassphrase, func(s storage.Store) storage.Store {
		killer.Store = s
		return killer
	})
	start := time.Now()
	_, err := v.backup(src)
	if err == nil {
		t.Fatal("the backup succeeded with the registry killed in the middle")
	}
	t.Logf("backup with the registry killed: failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if time.Since(start) > time.Minute {
		t.Errorf("the backup took %v to fail", time.Since(start))
	}
	select {
	case perr := <-killer.err:
		if !errors.Is(perr, host.ErrTransient) {
			t.Errorf("the put to the killed registry failed with %v, want a transient error", perr)
		}
	default:
		t.Fatal("no packfile was put: the registry was never killed")
	}
	if !reg.Running() {
		t.Fatal("the registry is not running again")
	}

	// The next backup, as a new plakar process would run it.
	v2 := openVault(t, cfg, reliabilityPassphrase, nil)
	id, err := v2.backup(src)
	if err != nil {
		t.Fatalf("the backup after the restart: %v", err)
	}
	v2.checkClean(t, "backup after the restart")
	if ids := v2.snapshotIDs(t); len(ids) != 1 || ids[0] != id {
		t.Fatalf("snapshots: %x, want only %x: the failed backup left one", ids, id)
	}
	v2.check(t, id)
	v2.restoreSame(t, id, src)
}

// Child processes: TestReliabilityConcurrentBackups starts the test binary
// again with these variables set; TestMain then runs runChild, which backs
// up one source into the repository and prints the snapshot's identifier.
const (
	childEnv      = "OCISTORE_RELIABILITY_CHILD"
	childLocation = "OCISTORE_RELIABILITY_LOCATION"
	childRoot     = "OCISTORE_RELIABILITY_ROOT"
	childCache    = "OCISTORE_RELIABILITY_CACHE"
	childPeers    = "OCISTORE_RELIABILITY_PEERS"
	childBarrier  = "OCISTORE_RELIABILITY_BARRIER"
)

func runChild() int {
	id, err := childBackup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "reliability child: %v\n", err)
		return 1
	}
	fmt.Printf("snapshot %x\n", id)
	return 0
}

// barrierStore holds the first packfile put until the repository has
// peers locks, and then until every peer has seen as many (each marks it
// with a file in dir): every backup holds its lock at the same time as the
// others, and none lets its lock go before the others have seen it. With
// the first half alone, a backup could see both locks, finish and delete
// its own before a slower one looked. It waits for these events with no
// deadline of its own: a peer that fails makes the parent stop every child
// at once, so that a loaded machine, slow as it may be, never fails it.
type barrierStore struct {
	storage.Store
	peers int
	dir   string
	once  sync.Once
	err   error
}

func (b *barrierStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	if res == storage.StorageResourcePackfile {
		b.once.Do(func() {
			b.err = poll(func() (bool, error) {
				locks, err := b.Store.List(ctx, storage.StorageResourceLock)
				return err == nil && len(locks) >= b.peers, err
			})
			if b.err == nil {
				b.err = os.WriteFile(filepath.Join(b.dir, fmt.Sprint(os.Getpid())), nil, 0o644)
			}
			if b.err == nil {
				b.err = poll(func() (bool, error) {
					seen, err := os.ReadDir(b.dir)
					return err == nil && len(seen) >= b.peers, err
				})
			}
		})
		if b.err != nil {
			return -1, b.err
		}
	}
	return b.Store.Put(ctx, res, mac, rd)
}

// poll asks ready every 20 ms until it says yes or fails.
func poll(ready func() (bool, error)) error {
	for {
		ok, err := ready()
		if ok || err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func childBackup() (id objects.MAC, err error) {
	var peers int
	fmt.Sscan(os.Getenv(childPeers), &peers)
	var (
		mu        sync.Mutex
		errEvents []string
	)
	cfg := map[string]string{"location": os.Getenv(childLocation)}
	v, err := vault.Open(context.Background(), cfg, reliabilityPassphrase, &vault.Options{
		CacheDir: os.Getenv(childCache),
		Client:   "ocistore-reliability-child",
		Log:      os.Stderr,
		Events: func(e vault.Event) {
			if e.Level == "error" {
				mu.Lock()
				errEvents = append(errEvents, formatEvent(e))
				mu.Unlock()
			}
		},
		WrapStore: func(s storage.Store) storage.Store {
			return &barrierStore{Store: s, peers: peers, dir: os.Getenv(childBarrier)}
		},
	})
	if err != nil {
		return objects.NilMac, err
	}
	defer func() {
		if cerr := v.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	r, err := v.Backup(os.Getenv(childRoot), nil)
	if err != nil {
		return objects.NilMac, err
	}
	if r.NumErrors > 0 {
		return objects.NilMac, fmt.Errorf("the snapshot %x records %d errors: %s", r.ID[:4], r.NumErrors, strings.Join(r.Errors, "; "))
	}
	// Kloset deletes the lock in the background: wait for it, or the
	// process would leave it behind.
	counter := v.Store()
	deleteLock := vault.StoreOp{Method: "Delete", Resource: storage.StorageResourceLock}
	if !counter.WaitCalls(deleteLock, 1, 30*time.Second) || counter.Stats().Errors[deleteLock] > 0 {
		return objects.NilMac, fmt.Errorf("the lock was not deleted: %s", counter.Stats())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errEvents) > 0 {
		return objects.NilMac, fmt.Errorf("error events: %s", strings.Join(errEvents, "; "))
	}
	return r.ID, nil
}

// TestReliabilityConcurrentBackups runs two backups at once, from two
// processes (the test binary started again), into one repository on a
// registry that refuses DELETE: each holds its lock while the other runs
// (the children wait until the store lists both locks before putting
// their first packfile), both snapshots are there and check, and both
// locks are gone (tombstones) once they are done.
func TestReliabilityConcurrentBackups(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/reliability/concurrent"}
	createStore(t, cfg)
	srcs := []*sourceTree{reliabilitySource(t, 11, 20), reliabilitySource(t, 12, 20)}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type result struct {
		out, errOut bytes.Buffer
		err         error
	}
	results := make([]*result, len(srcs))
	barrier := t.TempDir()
	var wg sync.WaitGroup
	for i, src := range srcs {
		r := &result{}
		results[i] = r
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			childEnv+"=backup",
			childLocation+"="+cfg["location"],
			childRoot+"="+src.root,
			childCache+"="+t.TempDir(),
			childPeers+"="+fmt.Sprint(len(srcs)),
			childBarrier+"="+barrier,
		)
		cmd.Stdout, cmd.Stderr = &r.out, &r.errOut
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.err = cmd.Run(); r.err != nil {
				cancel() // the others would wait for it at their barrier
			}
		}()
	}
	wg.Wait()
	// Every failure is reported: one backup's failure often explains
	// another's (a backup that gave up lets its lock go).
	for i, r := range results {
		if r.err != nil {
			t.Errorf("backup process %d: %v\nstdout:\n%s\nstderr:\n%s", i, r.err, r.out.String(), r.errOut.String())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	ids := make([]objects.MAC, len(srcs))
	for i, r := range results {
		var hexID string
		if _, err := fmt.Sscanf(r.out.String(), "snapshot %s", &hexID); err != nil {
			t.Fatalf("backup process %d printed %q", i, r.out.String())
		}
		b, err := hex.DecodeString(hexID)
		if err != nil || len(b) != len(ids[i]) {
			t.Fatalf("backup process %d printed %q", i, r.out.String())
		}
		copy(ids[i][:], b)
	}

	// Another process opens the repository: both snapshots, no lock.
	v := openVault(t, cfg, reliabilityPassphrase, nil)
	if got, want := v.snapshotIDs(t), sortedMACs(ids...); !slices.Equal(got, want) {
		t.Fatalf("snapshots: %x, want %x", got, want)
	}
	if locks, err := v.Repository().GetLocks(); err != nil || len(locks) != 0 {
		t.Fatalf("locks after both backups: %x, %v", locks, err)
	}
	v.check(t, ids...)
	for i, id := range ids {
		v.restoreSame(t, id, srcs[i])
	}
}

// gateStore holds the first packfile put of a backup until release is
// closed, and closes reached when it gets there: the backup is then under
// way, holding its lock.
type gateStore struct {
	storage.Store
	once             sync.Once
	reached, release chan struct{}
}

func (g *gateStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	if res == storage.StorageResourcePackfile {
		g.once.Do(func() {
			close(g.reached)
			<-g.release
		})
	}
	return g.Store.Put(ctx, res, mac, rd)
}

// errLocked: maintenance found another lock.
var errLocked = errors.New("the repository is locked")

// exclusiveLock takes the exclusive lock `plakar maintenance` takes: put
// it, then give up if any other lock that is not stale is there.
func exclusiveLock(repo *repository.Repository, id objects.MAC) (release func(), err error) {
	var buf bytes.Buffer
	if err := repository.NewExclusiveLock(repo.AppContext().Hostname).SerializeToStream(&buf); err != nil {
		return nil, err
	}
	if _, err := repo.PutLock(id, &buf); err != nil {
		return nil, err
	}
	locks, err := repo.GetLocks()
	if err != nil {
		repo.DeleteLock(id)
		return nil, err
	}
	for _, other := range locks {
		if other == id {
			continue
		}
		rd, err := repo.GetLock(other)
		if err != nil {
			repo.DeleteLock(id)
			return nil, err
		}
		lock, err := repository.NewLockFromStream(rd)
		rd.Close()
		if err != nil {
			repo.DeleteLock(id)
			return nil, err
		}
		if lock.IsStale() {
			continue
		}
		if err := repo.DeleteLock(id); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w by %s", errLocked, lock.Hostname)
	}
	return func() { repo.DeleteLock(id) }, nil
}

// maintain is `plakar maintenance` with no grace period, for Kloset
// v1.1.4 (package vault does not do it): under the exclusive lock, the
// packfiles no snapshot uses are coloured and removed from the state, so
// are the blobs that lived in them, and then deleted from the store. It
// returns them.
func maintain(repo *repository.Repository) ([]objects.MAC, error) {
	id := objects.RandomMAC()
	release, err := exclusiveLock(repo, id)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := repo.RebuildState(); err != nil {
		return nil, err
	}
	used := map[objects.MAC]bool{}
	for snapID, err := range repo.ListSnapshots() {
		if err != nil {
			return nil, err
		}
		packfiles, err := snapshotPackfiles(repo, snapID)
		if err != nil {
			return nil, err
		}
		maps.Copy(used, packfiles)
	}
	var unused []objects.MAC
	for p := range repo.ListPackfiles() {
		if !used[p] {
			unused = append(unused, p)
		}
	}
	if len(unused) == 0 {
		return nil, nil
	}
	// Colour and remove the packfiles: backups no longer deduplicate
	// against their blobs.
	commit := func(edit func(w *repository.RepositoryWriter) error) error {
		stateID := objects.RandomMAC()
		sc, err := repo.AppContext().GetCache().Scan(stateID)
		if err != nil {
			return err
		}
		defer sc.Close()
		w := repo.NewRepositoryWriter(sc, stateID, repository.DefaultType, "")
		defer w.PackerManager.Wait()
		if err := edit(w); err != nil {
			return err
		}
		if err := w.CommitTransaction(stateID); err != nil {
			return err
		}
		return repo.RebuildState()
	}
	err = commit(func(w *repository.RepositoryWriter) error {
		for _, p := range unused {
			if err := w.DeleteStateResource(kresources.RT_PACKFILE, p); err != nil {
				return err
			}
			if err := w.RemovePackfile(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = commit(func(w *repository.RepositoryWriter) error {
		for blob, err := range repo.ListOrphanBlobs() {
			if err != nil {
				return err
			}
			if err := w.RemoveBlob(blob.Type, blob.Blob, blob.Location.Packfile); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, p := range unused {
		if err := repo.DeletePackfile(p); err != nil {
			return nil, fmt.Errorf("deleting the packfile %x: %w", p[:4], err)
		}
	}
	return unused, nil
}

// snapshotPackfiles returns the packfiles snapshot id uses.
func snapshotPackfiles(repo *repository.Repository, id objects.MAC) (map[objects.MAC]bool, error) {
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	packfiles, err := snap.ListPackfiles()
	if err != nil {
		return nil, err
	}
	out := map[objects.MAC]bool{}
	for p, err := range packfiles {
		if err != nil {
			return nil, err
		}
		out[p] = true
	}
	return out, nil
}

// TestReliabilityMaintenance runs a backup alongside the removal of a
// snapshot and maintenance, on a registry that refuses DELETE (locks and
// packfiles are deleted with tombstones). Kloset's locks keep them apart:
// maintenance refuses to run while the backup holds its lock, and a backup
// refuses to start under maintenance's exclusive lock. Afterwards the
// repository is consistent: the snapshots left check and restore
// byte-identical, the removed snapshot's packfiles are gone, and backing
// its source up again makes a whole snapshot (nothing deduplicated
// against a deleted packfile).
func TestReliabilityMaintenance(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/reliability/maintenance"}
	createStore(t, cfg)
	srcA, srcB, srcC := reliabilitySource(t, 21, 15), reliabilitySource(t, 22, 15), reliabilitySource(t, 23, 15)

	v := openVault(t, cfg, reliabilityPassphrase, nil)
	repo := v.Repository()
	idA, err := v.backup(srcA)
	if err != nil {
		t.Fatal(err)
	}
	idB, err := v.backup(srcB)
	if err != nil {
		t.Fatal(err)
	}
	v.checkClean(t, "backups A and B")
	waitNoLocks(t, repo)
	packfilesA, err := snapshotPackfiles(repo, idA)
	if err != nil {
		t.Fatal(err)
	}

	// Backup C, from another vault as another plakar process would hold
	// (in this process, so that it can be held in the middle), stops at
	// its first packfile, holding its lock.
	gate := &gateStore{reached: make(chan struct{}), release: make(chan struct{})}
	vC := openVault(t, cfg, reliabilityPassphrase, func(s storage.Store) storage.Store {
		gate.Store = s
		return gate
	})
	var idC objects.MAC
	doneC := make(chan error, 1)
	go func() {
		var err error
		idC, err = vC.backup(srcC)
		doneC <- err
	}()
	released := false
	defer func() {
		if !released {
			close(gate.release)
			<-doneC
		}
	}()
	select {
	case <-gate.reached:
	case err := <-doneC:
		t.Fatalf("backup C ended before its first packfile: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("backup C never put a packfile")
	}

	// plakar rm of A meanwhile, then maintenance, which must refuse.
	if _, err := v.Remove(ref(idA)); err != nil {
		t.Fatalf("removing snapshot A: %v", err)
	}
	if _, err := maintain(repo); !errors.Is(err, errLocked) {
		t.Fatalf("maintenance during backup C: %v, want %v", err, errLocked)
	} else {
		t.Logf("maintenance during backup C: %v", err)
	}

	close(gate.release)
	released = true
	if err := <-doneC; err != nil {
		t.Fatalf("backup C: %v", err)
	}
	vC.checkClean(t, "backup C")
	waitNoLocks(t, repo)

	// Under maintenance's exclusive lock, a backup refuses to start.
	release, err := exclusiveLock(repo, objects.RandomMAC())
	if err != nil {
		t.Fatalf("taking the exclusive lock: %v", err)
	}
	_, err = vC.backup(srcC)
	release()
	if err == nil || !strings.Contains(err.Error(), "locked by maintenance") {
		t.Fatalf("backup under the exclusive lock: %v, want a refusal", err)
	}
	t.Logf("backup under the exclusive lock: %v", err)
	waitNoLocks(t, repo)

	// Now maintenance runs and removes what only A used.
	removed, err := maintain(repo)
	if err != nil {
		t.Fatalf("maintenance: %v", err)
	}
	v.checkClean(t, "maintenance")
	if len(removed) == 0 {
		t.Fatal("maintenance removed no packfile after snapshot A was removed")
	}
	t.Logf("maintenance removed %d packfiles; snapshot A used %d", len(removed), len(packfilesA))
	for _, p := range removed {
		if !packfilesA[p] {
			t.Errorf("maintenance removed the packfile %x, which snapshot A did not use", p[:4])
		}
	}
	stored := list(t, v.Store(), storage.StorageResourcePackfile)
	for _, p := range removed {
		if containsMAC(stored, p) {
			t.Errorf("the removed packfile %x is still listed", p[:4])
		}
	}

	// A fresh process sees B and C, whole.
	v2 := openVault(t, cfg, reliabilityPassphrase, nil)
	if ids, want := v2.snapshotIDs(t), sortedMACs(idB, idC); !slices.Equal(ids, want) {
		t.Fatalf("snapshots after maintenance: %x, want B and C %x", ids, want)
	}
	v2.check(t, idB, idC)
	v2.restoreSame(t, idB, srcB)
	v2.restoreSame(t, idC, srcC)

	// A's source again: whole, though its old packfiles are gone.
	idA2, err := v2.backup(srcA)
	if err != nil {
		t.Fatalf("backing A up again: %v", err)
	}
	v2.checkClean(t, "backup A again")
	v2.check(t, idA2)
	v2.restoreSame(t, idA2, srcA)
}

// --- Registry quirks (docs/registry-quirks.md) ---

// distributionManifests reads the manifests distribution keeps for
// repository repo under its storage root: every revision, and the digest
// each tag points to.
func distributionManifests(t *testing.T, root, repo string) (revisions map[string]bool, tags map[string]string) {
	t.Helper()
	base := filepath.Join(root, "docker", "registry", "v2", "repositories", filepath.FromSlash(repo), "_manifests")
	revisions, tags = map[string]bool{}, map[string]string{}
	dirs, err := os.ReadDir(filepath.Join(base, "revisions", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		revisions["sha256:"+d.Name()] = true
	}
	dirs, err = os.ReadDir(filepath.Join(base, "tags"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		link, err := os.ReadFile(filepath.Join(base, "tags", d.Name(), "current", "link"))
		if err != nil {
			t.Fatal(err)
		}
		tags[d.Name()] = strings.TrimSpace(string(link))
	}
	return revisions, tags
}

// distributionBlob reads a blob (a manifest too) from distribution's
// storage root.
func distributionBlob(t *testing.T, root, digest string) []byte {
	t.Helper()
	h := strings.TrimPrefix(digest, "sha256:")
	b, err := os.ReadFile(filepath.Join(root, "docker", "registry", "v2", "blobs", "sha256", h[:2], h, "data"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// quirksManifest is what the test reads of a manifest in storage.
type quirksManifest struct {
	ArtifactType string `json:"artifactType"`
	Layers       []struct {
		Digest string `json:"digest"`
	} `json:"layers"`
	Annotations map[string]string `json:"annotations"`
}

// TestRegistryQuirksUntaggedManifests checks that the store never relies
// on an untagged manifest, so that registries that garbage-collect them
// (zot, distribution's `garbage-collect --delete-untagged`, Harbor's
// untagged artifact cleanup) lose nothing: after puts, deletes (by tag, or
// by tombstone), locks put again under the same MAC, every manifest in
// distribution's storage that no tag names is an old version of an
// object (or of the graveyard, or of the list of released locks), never a
// live one; then the registry's own garbage collector
// runs with --delete-untagged and every live object still reads back.
func TestRegistryQuirksUntaggedManifests(t *testing.T) {
	for _, del := range []bool{true, false} {
		name := map[bool]string{true: "delete by tag", false: "tombstones"}[del]
		t.Run(name, func(t *testing.T) {
			reg := registrytest.Distribution(t, registrytest.Options{Delete: del})
			const repo = "quirks/gc"
			cfg := map[string]string{"location": "oci://" + reg.Host + "/" + repo}
			s := newStoreWith(t, cfg)
			ctx := context.Background()
			if err := s.Create(ctx, []byte("config")); err != nil {
				t.Fatal(err)
			}
			type key struct {
				res storage.StorageResource
				mac objects.MAC
			}
			live := map[key][]byte{}
			var deleted []key
			shared := randomBytes(3000)
			for _, res := range allResources {
				a, b, c := randomMAC(), randomMAC(), randomMAC()
				own := randomBytes(2000)
				put(t, s, res, a, shared) // the same bytes as other objects
				put(t, s, res, b, own)
				put(t, s, res, c, shared)
				if err := s.Delete(ctx, res, c); err != nil {
					t.Fatal(err)
				}
				live[key{res, a}], live[key{res, b}] = shared, own
				deleted = append(deleted, key{res, c})
			}
			// A lock deleted and put again, and one put again over itself.
			lock, lock2 := randomMAC(), randomMAC()
			put(t, s, storage.StorageResourceLock, lock, []byte("one"))
			if err := s.Delete(ctx, storage.StorageResourceLock, lock); err != nil {
				t.Fatal(err)
			}
			put(t, s, storage.StorageResourceLock, lock, []byte("two"))
			put(t, s, storage.StorageResourceLock, lock2, []byte("three"))
			put(t, s, storage.StorageResourceLock, lock2, []byte("four"))
			live[key{storage.StorageResourceLock, lock}] = []byte("two")
			live[key{storage.StorageResourceLock, lock2}] = []byte("four")

			if err := reg.Stop(); err != nil {
				t.Fatal(err)
			}
			revisions, tags := distributionManifests(t, reg.Dir, repo)
			tagged := map[string]bool{}
			for _, d := range tags {
				tagged[d] = true
			}
			kinds := map[string]storage.StorageResource{
				"packfile": storage.StorageResourcePackfile, "state": storage.StorageResourceState,
				"lock": storage.StorageResourceLock, "ecc-packfile": storage.StorageResourceECCPackfile,
				"ecc-state": storage.StorageResourceECCState,
			}
			untagged := 0
			for d := range revisions {
				if tagged[d] {
					continue
				}
				untagged++
				var m quirksManifest
				if err := json.Unmarshal(distributionBlob(t, reg.Dir, d), &m); err != nil {
					t.Fatalf("untagged manifest %s: %v", d, err)
				}
				if m.ArtifactType == "application/vnd.plakar.graveyard.v1" || m.ArtifactType == "application/vnd.plakar.released-locks.v1" {
					continue // an older list of the deleted objects or released locks: the tag names the current one
				}
				res, ok := kinds[m.Annotations["org.plakar.kind"]]
				var mac objects.MAC
				h, err := hex.DecodeString(m.Annotations["org.plakar.mac"])
				if !ok || err != nil || len(h) != len(mac) || len(m.Layers) != 1 {
					t.Fatalf("untagged manifest %s is not an object's: %+v", d, m)
				}
				copy(mac[:], h)
				data, isLive := live[key{res, mac}]
				if isLive && m.Layers[0].Digest == sha256Digest(data) {
					t.Errorf("the live %s %x is only in an untagged manifest %s", res, mac[:4], d)
				}
			}
			// Every live object is tagged, with its current bytes.
			for k, data := range live {
				tag := strings.ToLower(kindTag(k.res)) + "-" + hex.EncodeToString(k.mac[:])
				d, ok := tags[tag]
				if !ok {
					t.Fatalf("the live %s %x has no tag", k.res, k.mac[:4])
				}
				var m quirksManifest
				if err := json.Unmarshal(distributionBlob(t, reg.Dir, d), &m); err != nil || len(m.Layers) != 1 || m.Layers[0].Digest != sha256Digest(data) {
					t.Fatalf("the tag %s names %+v, %v", tag, m, err)
				}
			}
			t.Logf("%d manifests, %d tags, %d untagged (old versions of deleted or replaced objects)", len(revisions), len(tags), untagged)
			if untagged == 0 {
				t.Error("no untagged manifest: the test deleted and replaced nothing?")
			}

			// The registry's garbage collector, deleting untagged manifests.
			gcConfig := filepath.Join(t.TempDir(), "gc.yml")
			if err := os.WriteFile(gcConfig, []byte(fmt.Sprintf("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %q\n", reg.Dir)), 0o600); err != nil {
				t.Fatal(err)
			}
			gc := exec.Command(distributionBinaryPath(t), "garbage-collect", "--delete-untagged", gcConfig)
			if out, err := gc.CombinedOutput(); err != nil {
				t.Fatalf("garbage-collect: %v\n%s", err, out)
			}
			if after, _ := distributionManifests(t, reg.Dir, repo); len(after) != len(tagged) {
				t.Errorf("after garbage-collect: %d manifests, want the %d tagged", len(after), len(tagged))
			}
			if err := reg.Restart(); err != nil {
				t.Fatal(err)
			}

			// A store that never saw any of it reads every live object.
			s2 := newStoreWith(t, cfg)
			for _, res := range allResources {
				var want []objects.MAC
				for k := range live {
					if k.res == res {
						want = append(want, k.mac)
					}
				}
				if got := list(t, s2, res); !sameMACs(got, want...) {
					t.Fatalf("%s after garbage-collect: %d listed, want %d", res, len(got), len(want))
				}
			}
			for k, data := range live {
				if got := get(t, s2, k.res, k.mac, nil); !bytes.Equal(got, data) {
					t.Fatalf("%s %x reads back wrong after garbage-collect", k.res, k.mac[:4])
				}
			}
			for _, k := range deleted {
				if _, err := s2.Get(ctx, k.res, k.mac, nil); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("deleted %s %x after garbage-collect: %v", k.res, k.mac[:4], err)
				}
			}
			if _, err := s2.Open(ctx); err != nil {
				t.Fatalf("open after garbage-collect: %v", err)
			}
			put(t, s2, storage.StorageResourcePackfile, randomMAC(), shared)
		})
	}
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// kindTag is the tag prefix of a resource (guest/ocistore's layout).
func kindTag(res storage.StorageResource) string {
	return map[storage.StorageResource]string{
		storage.StorageResourcePackfile: "packfile", storage.StorageResourceState: "state",
		storage.StorageResourceLock: "lock", storage.StorageResourceECCPackfile: "ecc-packfile",
		storage.StorageResourceECCState: "ecc-state",
	}[res]
}

// distributionBinaryPath is the distribution binary registrytest starts.
func distributionBinaryPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(registrytest.EnvDistribution); p != "" {
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", "build", "bin", "registry-"+registrytest.DistributionVersion))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRegistryQuirks pins down how each registry the suites run against
// behaves where registries differ, as docs/registry-quirks.md tables it:
// tag list pagination and tag deletion. The store copes with every
// variant (TestContract runs it on all of them); this test says which
// registry does what, so that a registry upgrade that changes it shows.
func TestRegistryQuirks(t *testing.T) {
	type quirks struct {
		pageTags  int    // tags in an answer to ?n=2, of 7 (5 states, config and the create's candidate)
		link      bool   // whether that answer has a Link header
		deleteTag string // status and error code of DELETE of a tag
	}
	want := map[string]quirks{
		registrytest.NameDistributionDelete:   {pageTags: 2, link: true, deleteTag: "202"},
		registrytest.NameDistributionNoDelete: {pageTags: 2, link: true, deleteTag: "405 UNSUPPORTED"},
		registrytest.NameDockerRegistry:       {pageTags: 7, link: false, deleteTag: "400 DIGEST_INVALID"},
		registrytest.NameInProcess:            {pageTags: 2, link: false, deleteTag: "202"},
		registrytest.NameZot:                  {pageTags: 2, link: true, deleteTag: "202"},
		registrytest.NameQuay:                 {pageTags: 2, link: true, deleteTag: "202"},
		registrytest.NameHarbor:               {pageTags: 2, link: true, deleteTag: "400 UNSUPPORTED"},
		registrytest.NameGHCR:                 {pageTags: 7, link: false, deleteTag: "405 UNSUPPORTED"},
	}
	for _, f := range registrytest.All(t) {
		t.Run(f.Name, func(t *testing.T) {
			reg := f.Start(t)
			const repo = "quirks/registry"
			s := newStoreWith(t, map[string]string{"location": "oci://" + reg.Host + "/" + repo})
			if err := s.Create(context.Background(), []byte("config")); err != nil {
				t.Fatal(err)
			}
			var macs []objects.MAC
			for range 5 {
				mac := randomMAC()
				put(t, s, storage.StorageResourceState, mac, mac[:])
				macs = append(macs, mac)
			}
			var got quirks
			resp, err := http.Get(reg.URL + "/v2/" + repo + "/tags/list?n=2")
			if err != nil {
				t.Fatal(err)
			}
			var page struct {
				Tags []string `json:"tags"`
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			got.pageTags, got.link = len(page.Tags), resp.Header.Get("Link") != ""

			req, _ := http.NewRequest("DELETE", reg.URL+"/v2/"+repo+"/manifests/state-"+hex.EncodeToString(macs[0][:]), nil)
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Errors []struct {
					Code string `json:"code"`
				} `json:"errors"`
			}
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			got.deleteTag = fmt.Sprint(resp.StatusCode)
			if len(body.Errors) > 0 {
				got.deleteTag += " " + body.Errors[0].Code
			}
			if got != want[f.Name] {
				t.Errorf("%s: %+v, want %+v", f.Name, got, want[f.Name])
			}
			// Whatever the registry does, the store lists what it holds.
			left := macs
			if resp.StatusCode == http.StatusAccepted {
				left = macs[1:]
			}
			if l := list(t, s, storage.StorageResourceState); !sameMACs(l, left...) {
				t.Errorf("%d states listed, want %d", len(l), len(left))
			}
		})
	}
}
