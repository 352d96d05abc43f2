package host_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// Benchmarks of the store against distribution v3, the store compiled for
// the host (native) beside the store in its sandbox (wasm): the same calls
// over the same host services, so that the difference is the sandbox's.
// `go run ./bench` is the full comparison, with the registry's own
// ceiling and Kloset.
//
//	go test -run '^$' -bench . ./host/

const benchObject = 16 << 20

type benchStore struct {
	name     string
	s        storage.Store
	requests *atomic.Int64
	times    *requestTimes
}

// requestTimes is when the first request of a call left (its first) and
// when the last answer's body was done with (last), in nanoseconds since
// 1970: the store's own time before the first request and after the last
// answer is what it adds to a chain of requests.
type requestTimes struct{ first, last atomic.Int64 }

func (t *requestTimes) reset() { t.first.Store(0); t.last.Store(0) }

type timedBody struct {
	io.ReadCloser
	t *requestTimes
}

func (b timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.t.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// benchStores makes a native and a sandboxed store on their own
// repositories of r, counting their requests.
func benchStores(b *testing.B, r *registrytest.Registry, repo string) []benchStore {
	b.Helper()
	ctx := context.Background()
	p, err := host.Load(ctx, host.EmbeddedGuest(), host.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close(ctx) })
	var stores []benchStore
	for _, name := range []string{"native", "wasm"} {
		n, times := new(atomic.Int64), new(requestTimes)
		count := host.WithTransport(func(next http.RoundTripper) http.RoundTripper {
			return benchTransport{next, n, times}
		})
		config := map[string]string{"location": "oci://" + r.Host + "/" + repo + "-" + name}
		var s storage.Store
		if name == "native" {
			s, err = host.NewNativeStore(ctx, config, count)
		} else {
			s, err = host.NewStore(ctx, p, config, count)
		}
		if err == nil {
			err = s.Create(ctx, []byte("{}"))
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close(ctx) })
		stores = append(stores, benchStore{name, s, n, times})
	}
	return stores
}

type benchTransport struct {
	next  http.RoundTripper
	n     *atomic.Int64
	times *requestTimes
}

func (t benchTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.n.Add(1)
	t.times.first.CompareAndSwap(0, time.Now().UnixNano())
	resp, err := t.next.RoundTrip(req)
	if err == nil {
		resp.Body = timedBody{resp.Body, t.times}
	}
	return resp, err
}

// benchMAC names object i of a benchmark.
func benchMAC(name string, i int) objects.MAC {
	return objects.MAC(sha256.Sum256(fmt.Appendf(nil, "%s/%d", name, i)))
}

// streamOnly hides everything but Read, as Kloset's readers do.
type streamOnly struct{ io.Reader }

func benchData() []byte {
	data := make([]byte, benchObject)
	rand.NewChaCha8([32]byte{}).Read(data)
	return data
}

func BenchmarkPut16MiB(b *testing.B) {
	r := registrytest.Distribution(b, registrytest.Options{})
	data := benchData()
	for _, st := range benchStores(b, r, "bench/put") {
		b.Run(st.name, func(b *testing.B) {
			b.SetBytes(benchObject)
			before, i := st.requests.Load(), 0
			for b.Loop() {
				mac := benchMAC(b.Name(), i)
				copy(data, mac[:]) // unique content
				i++
				if _, err := st.s.Put(context.Background(), storage.StorageResourcePackfile, mac, streamOnly{bytes.NewReader(data)}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(st.requests.Load()-before)/float64(i), "req/op")
		})
	}
}

func BenchmarkGet16MiB(b *testing.B) {
	r := registrytest.Distribution(b, registrytest.Options{})
	data := benchData()
	buf := make([]byte, 256<<10)
	for _, st := range benchStores(b, r, "bench/get") {
		mac := benchMAC(st.name, 0)
		if _, err := st.s.Put(context.Background(), storage.StorageResourcePackfile, mac, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		b.Run(st.name, func(b *testing.B) {
			b.SetBytes(benchObject)
			before, n := st.requests.Load(), 0
			for b.Loop() {
				n++
				rd, err := st.s.Get(context.Background(), storage.StorageResourcePackfile, mac, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, streamOnly{rd}, buf); err != nil {
					b.Fatal(err)
				}
				rd.Close()
			}
			b.ReportMetric(float64(st.requests.Load()-before)/float64(n), "req/op")
		})
	}
}

// BenchmarkGetRange4KiB is the cost of a call rather than of bytes: the
// sandbox's overhead shows most here.
func BenchmarkGetRange4KiB(b *testing.B) {
	r := registrytest.Distribution(b, registrytest.Options{})
	data := benchData()
	buf := make([]byte, 4096)
	for _, st := range benchStores(b, r, "bench/range") {
		mac := benchMAC(st.name, 0)
		if _, err := st.s.Put(context.Background(), storage.StorageResourcePackfile, mac, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		b.Run(st.name, func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			before, n := st.requests.Load(), 0
			for b.Loop() {
				off := uint64(n*len(buf)) % (benchObject - uint64(len(buf)))
				n++
				rd, err := st.s.Get(context.Background(), storage.StorageResourcePackfile, mac, &storage.Range{Offset: off, Length: uint32(len(buf))})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(rd, buf); err != nil {
					b.Fatal(err)
				}
				rd.Close()
			}
			b.ReportMetric(float64(st.requests.Load()-before)/float64(n), "req/op")
		})
	}
}

// BenchmarkPut1KiB is the cost of a put rather than of bytes.
func BenchmarkPut1KiB(b *testing.B) {
	r := registrytest.Distribution(b, registrytest.Options{})
	data := make([]byte, 1<<10)
	for _, st := range benchStores(b, r, "bench/small") {
		b.Run(st.name, func(b *testing.B) {
			before, i, cpu := st.requests.Load(), 0, processCPU()
			for b.Loop() {
				mac := benchMAC(b.Name(), i)
				copy(data, mac[:])
				i++
				if _, err := st.s.Put(context.Background(), storage.StorageResourcePackfile, mac, bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(st.requests.Load()-before)/float64(i), "req/op")
			b.ReportMetric(float64(processCPU()-cpu)/float64(i)/1e3, "cpu-µs/op")
		})
	}
}

// BenchmarkList5000 lists a repository of 5,000 objects: pages of the tag
// list decoded in the guest.
func BenchmarkList5000(b *testing.B) {
	const objects = 5000
	r := registrytest.Distribution(b, registrytest.Options{})
	stores := benchStores(b, r, "bench/list")
	// Both repositories are filled before either is listed: a registry
	// holding more tags lists more slowly, which would favour the first.
	for _, st := range stores {
		var next atomic.Int64
		errs := make(chan error, 8)
		for range cap(errs) {
			go func() {
				for i := int(next.Add(1)) - 1; i < objects; i = int(next.Add(1)) - 1 {
					mac := benchMAC("list", i)
					if _, err := st.s.Put(context.Background(), storage.StorageResourcePackfile, mac, bytes.NewReader(mac[:])); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			before, n, cpu := st.requests.Load(), 0, processCPU()
			var head, tail int64
			for b.Loop() {
				n++
				st.times.reset()
				start := time.Now().UnixNano()
				macs, err := st.s.List(context.Background(), storage.StorageResourcePackfile)
				head += st.times.first.Load() - start
				tail += time.Now().UnixNano() - st.times.last.Load()
				if err != nil {
					b.Fatal(err)
				}
				if len(macs) != objects {
					b.Fatalf("listed %d objects, want %d", len(macs), objects)
				}
			}
			b.ReportMetric(float64(st.requests.Load()-before)/float64(n), "req/op")
			b.ReportMetric(float64(processCPU()-cpu)/float64(n)/1e3, "cpu-µs/op")
			// The store's time on the list's chain of requests: before
			// the first, and after the last answer (the registry's is
			// the rest).
			b.ReportMetric(float64(head)/float64(n)/1e3, "head-µs/op")
			b.ReportMetric(float64(tail)/float64(n)/1e3, "tail-µs/op")
		})
	}
}

// processCPU is the CPU time this process has used, in nanoseconds: the
// client's cost of an operation, steadier than its time on a shared
// machine (the registry is another process).
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
