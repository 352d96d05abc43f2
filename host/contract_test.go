package host_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// The store contract: every method and resource of storage.Store, run
// against every registry CI installs, through the wasm sandbox.

var allResources = []storage.StorageResource{
	storage.StorageResourcePackfile,
	storage.StorageResourceState,
	storage.StorageResourceLock,
	storage.StorageResourceECCPackfile,
	storage.StorageResourceECCState,
}

func TestContract(t *testing.T) {
	for _, reg := range registrytest.All(t) {
		t.Run(reg.Name, func(t *testing.T) {
			r := reg.Start(t)
			testContract(t, func(t *testing.T, repo string) storage.Store {
				return openStore(t, map[string]string{"location": "oci://" + r.Host + "/" + repo})
			})
		})
	}
}

// testContract runs the contract against the stores newStore makes.
func testContract(t *testing.T, newStore storeMaker) {
	t.Run("lifecycle", func(t *testing.T) { testLifecycle(t, newStore) })
	t.Run("objects", func(t *testing.T) { testObjects(t, newStore) })
	t.Run("ranges", func(t *testing.T) { testRanges(t, newStore) })
	t.Run("pagination", func(t *testing.T) { testPagination(t, newStore) })
	t.Run("sizes", func(t *testing.T) { testSizes(t, newStore) })
	t.Run("concurrency", func(t *testing.T) { testConcurrency(t, newStore) })
	t.Run("shared content", func(t *testing.T) { testSharedContent(t, newStore) })
}

// storeMaker makes a store on repository repo of the registry under test:
// sandboxed (openStore) or native (native_test.go).
type storeMaker func(t *testing.T, repo string) storage.Store

var (
	pluginOnce sync.Once
	plugin     *host.Plugin
	pluginErr  error
)

// openStore makes a store over the embedded guest, compiled once for the
// whole test binary.
func openStore(t *testing.T, config map[string]string) *host.Store {
	t.Helper()
	pluginOnce.Do(func() {
		plugin, pluginErr = host.Load(context.Background(), host.EmbeddedGuest(), host.Options{})
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	s, err := host.NewStore(context.Background(), plugin, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func randomMAC() objects.MAC {
	var mac objects.MAC
	rand.Read(mac[:])
	return mac
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func put(t *testing.T, s storage.Store, res storage.StorageResource, mac objects.MAC, data []byte) {
	t.Helper()
	n, err := s.Put(context.Background(), res, mac, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("put %s %x: %v", res, mac[:4], err)
	}
	if n != int64(len(data)) {
		t.Fatalf("put %s returned %d bytes, want %d", res, n, len(data))
	}
}

func get(t *testing.T, s storage.Store, res storage.StorageResource, mac objects.MAC, rng *storage.Range) []byte {
	t.Helper()
	rd, err := s.Get(context.Background(), res, mac, rng)
	if err != nil {
		t.Fatalf("get %s %x %v: %v", res, mac[:4], rng, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Fatalf("reading %s %x %v: %v", res, mac[:4], rng, err)
	}
	return data
}

func list(t *testing.T, s storage.Store, res storage.StorageResource) []objects.MAC {
	t.Helper()
	macs, err := s.List(context.Background(), res)
	if err != nil {
		t.Fatalf("list %s: %v", res, err)
	}
	return macs
}

func testLifecycle(t *testing.T, newStore storeMaker) {
	ctx := context.Background()
	s := newStore(t, "contract/lifecycle")
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if _, err := s.Open(ctx); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open of a missing store: got %v, want fs.ErrNotExist", err)
	}
	config := randomBytes(1000)
	if err := s.Create(ctx, config); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := s.Create(ctx, randomBytes(10)); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second create: got %v, want fs.ErrExist", err)
	}
	// A fresh store on the same location reads what create wrote, not the
	// refused second config.
	got, err := newStore(t, "contract/lifecycle").Open(ctx)
	if err != nil || !bytes.Equal(got, config) {
		t.Fatalf("open: got %d bytes, %v; want the %d bytes given to create", len(got), err, len(config))
	}
	mode, err := s.Mode(ctx)
	if err != nil || mode != storage.ModeRead|storage.ModeWrite {
		t.Fatalf("mode: got %v, %v", mode, err)
	}
	if s.Type() != "oci" || s.Root() != "contract/lifecycle" {
		t.Fatalf("type %q root %q", s.Type(), s.Root())
	}
}

func testObjects(t *testing.T, newStore storeMaker) {
	ctx := context.Background()
	s := newStore(t, "contract/objects")
	if err := s.Create(ctx, []byte("config")); err != nil {
		t.Fatal(err)
	}
	for _, res := range allResources {
		t.Run(res.String(), func(t *testing.T) {
			if macs := list(t, s, res); len(macs) != 0 {
				t.Fatalf("new store lists %d objects", len(macs))
			}
			mac, other := randomMAC(), randomMAC()
			data := randomBytes(10_000 + mrand.IntN(10_000))
			put(t, s, res, mac, data)
			put(t, s, res, other, randomBytes(100))
			if got := get(t, s, res, mac, nil); !bytes.Equal(got, data) {
				t.Fatalf("get returned %d bytes that differ from the %d put", len(got), len(data))
			}
			if macs := list(t, s, res); !sameMACs(macs, mac, other) {
				t.Fatalf("list: got %d MACs, want the 2 put", len(macs))
			}
			// Other kinds do not see it.
			for _, o := range allResources {
				if o != res && slices.Contains(list(t, s, o), mac) {
					t.Fatalf("%s lists an object put as %s", o, res)
				}
			}

			if err := s.Delete(ctx, res, mac); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if macs := list(t, s, res); !sameMACs(macs, other) {
				t.Fatalf("list after delete: got %d MACs, want only the other one", len(macs))
			}
			_, err := s.Get(ctx, res, mac, nil)
			if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("get after delete: got %v, want fs.ErrNotExist", err)
			}
			if res == storage.StorageResourcePackfile && !errors.Is(err, repository.ErrPackfileNotFound) {
				t.Fatalf("get of a deleted packfile: got %v, want repository.ErrPackfileNotFound", err)
			}
			if _, err := s.Get(ctx, res, mac, &storage.Range{Offset: 0, Length: 10}); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("range get after delete: got %v, want fs.ErrNotExist", err)
			}
			// A lock deleted twice is released: two processes removing
			// the same stale lock both succeed.
			if err := s.Delete(ctx, res, mac); res == storage.StorageResourceLock && err != nil {
				t.Fatalf("second delete of a lock: %v, want success", err)
			} else if res != storage.StorageResourceLock && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("second delete: got %v, want fs.ErrNotExist", err)
			}
			if _, err := s.Get(ctx, res, randomMAC(), nil); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("get of a MAC never put: got %v, want fs.ErrNotExist", err)
			}

			// Put again after delete (a lock released and taken again).
			again := randomBytes(500)
			put(t, s, res, mac, again)
			if got := get(t, s, res, mac, nil); !bytes.Equal(got, again) {
				t.Fatal("get after re-put returned other bytes")
			}
			if macs := list(t, s, res); !sameMACs(macs, mac, other) {
				t.Fatalf("list after re-put: got %d MACs, want 2", len(macs))
			}
			// Another instance of the store (another process) agrees.
			if macs := list(t, newStore(t, "contract/objects"), res); !sameMACs(macs, mac, other) {
				t.Fatalf("a fresh store lists %d MACs, want 2", len(macs))
			}
		})
	}
}

func testRanges(t *testing.T, newStore storeMaker) {
	s := newStore(t, "contract/ranges")
	mac := randomMAC()
	data := randomBytes(1 << 20)
	put(t, s, storage.StorageResourcePackfile, mac, data)
	size := uint64(len(data))
	for _, c := range []struct {
		name   string
		offset uint64
		length uint32
		want   []byte
	}{
		{"start", 0, 4096, data[:4096]},
		{"middle", 300_000, 70_000, data[300_000:370_000]},
		{"end", size - 100, 100, data[size-100:]},
		{"one byte", 12345, 1, data[12345:12346]},
		{"whole", 0, uint32(size), data},
		{"across the end", size - 10, 100, data[size-10:]},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := get(t, s, storage.StorageResourcePackfile, mac, &storage.Range{Offset: c.offset, Length: c.length})
			if !bytes.Equal(got, c.want) {
				t.Fatalf("range %d+%d: got %d bytes, want %d (equal: %v)", c.offset, c.length, len(got), len(c.want), bytes.Equal(got, c.want))
			}
		})
	}
	t.Run("past the end", func(t *testing.T) {
		_, err := s.Get(context.Background(), storage.StorageResourcePackfile, mac, &storage.Range{Offset: size + 10, Length: 10})
		if !errors.Is(err, host.ErrRangeNotSatisfiable) {
			t.Fatalf("got %v, want host.ErrRangeNotSatisfiable", err)
		}
	})
	// A store that never saw the put (no cached digest) reads ranges too.
	t.Run("fresh store", func(t *testing.T) {
		got := get(t, newStore(t, "contract/ranges"), storage.StorageResourcePackfile, mac, &storage.Range{Offset: 1000, Length: 1000})
		if !bytes.Equal(got, data[1000:2000]) {
			t.Fatal("wrong bytes")
		}
	})
}

func testPagination(t *testing.T, newStore storeMaker) {
	s := newStore(t, "contract/pagination")
	const n = 1_600 // more than a page of 1,000
	want := make([]objects.MAC, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range want {
		want[i] = randomMAC()
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := s.Put(context.Background(), storage.StorageResourceState, want[i], bytes.NewReader(want[i][:])); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A lock among them must not show up as a state, nor the states as locks.
	lock := randomMAC()
	put(t, s, storage.StorageResourceLock, lock, []byte("lock"))
	if got := list(t, s, storage.StorageResourceState); !sameMACs(got, want...) {
		t.Fatalf("list: got %d MACs, want the %d put", len(got), n)
	}
	if got := list(t, s, storage.StorageResourceLock); !sameMACs(got, lock) {
		t.Fatalf("locks: got %d MACs, want 1", len(got))
	}
}

func testSizes(t *testing.T, newStore storeMaker) {
	s := newStore(t, "contract/sizes")
	empty := randomMAC()
	put(t, s, storage.StorageResourcePackfile, empty, nil)
	if got := get(t, s, storage.StorageResourcePackfile, empty, nil); len(got) != 0 {
		t.Fatalf("empty object read back as %d bytes", len(got))
	}

	big := randomMAC()
	const bigSize = 100 << 20
	// Generated as it is read, so the test holds no 100 MiB buffer.
	src := &patternReader{n: bigSize}
	n, err := s.Put(context.Background(), storage.StorageResourcePackfile, big, src)
	if err != nil || n != bigSize {
		t.Fatalf("put of 100 MiB: %d, %v", n, err)
	}
	rd, err := s.Get(context.Background(), storage.StorageResourcePackfile, big, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	got, err := io.Copy(h, rd)
	rd.Close()
	if err != nil || got != bigSize || !bytes.Equal(h.Sum(nil), src.sum()) {
		t.Fatalf("get of 100 MiB: %d bytes, %v, digest match %v", got, err, bytes.Equal(h.Sum(nil), src.sum()))
	}
	mid := get(t, s, storage.StorageResourcePackfile, big, &storage.Range{Offset: 50 << 20, Length: 1 << 20})
	if !bytes.Equal(mid, (&patternReader{n: bigSize}).slice(50<<20, 1<<20)) {
		t.Fatal("range in the middle of 100 MiB returned wrong bytes")
	}

	size, err := s.Size(context.Background())
	if err != nil || size < bigSize {
		t.Fatalf("size: %d, %v; want at least %d", size, err, bigSize)
	}
}

func testConcurrency(t *testing.T, newStore storeMaker) {
	s := newStore(t, "contract/concurrency")
	const workers, each = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				mac, data := randomMAC(), randomBytes(1000+mrand.IntN(200_000))
				if _, err := s.Put(context.Background(), storage.StorageResourcePackfile, mac, bytes.NewReader(data)); err != nil {
					errs <- err
					return
				}
				rd, err := s.Get(context.Background(), storage.StorageResourcePackfile, mac, &storage.Range{Offset: 100, Length: 500})
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(rd)
				rd.Close()
				if err != nil || !bytes.Equal(got, data[100:600]) {
					errs <- fmt.Errorf("concurrent range read: %v, equal %v", err, bytes.Equal(got, data[100:600]))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := list(t, s, storage.StorageResourcePackfile); len(got) != workers*each {
		t.Fatalf("list: %d objects, want %d", len(got), workers*each)
	}
}

func testSharedContent(t *testing.T, newStore storeMaker) {
	s := newStore(t, "contract/shared")
	data := randomBytes(5000)
	a, b := randomMAC(), randomMAC()
	put(t, s, storage.StorageResourcePackfile, a, data)
	put(t, s, storage.StorageResourcePackfile, b, data)
	if err := s.Delete(context.Background(), storage.StorageResourcePackfile, a); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, storage.StorageResourcePackfile, b, nil); !bytes.Equal(got, data) {
		t.Fatal("deleting one MAC damaged another with the same content")
	}
	if got := get(t, newStore(t, "contract/shared"), storage.StorageResourcePackfile, b, &storage.Range{Offset: 10, Length: 10}); !bytes.Equal(got, data[10:20]) {
		t.Fatal("range read of the surviving object returned wrong bytes")
	}
	if got := list(t, s, storage.StorageResourcePackfile); !sameMACs(got, b) {
		t.Fatalf("list: %d MACs, want 1", len(got))
	}
}

func sameMACs(got []objects.MAC, want ...objects.MAC) bool {
	if len(got) != len(want) {
		return false
	}
	g := slices.Clone(got)
	w := slices.Clone(want)
	cmp := func(a, b objects.MAC) int { return bytes.Compare(a[:], b[:]) }
	slices.SortFunc(g, cmp)
	slices.SortFunc(w, cmp)
	return slices.Equal(g, w)
}

// patternReader yields n bytes of a fixed pseudo-random pattern.
type patternReader struct {
	n, off int64
}

func patternByte(i int64) byte { return byte((i * 2654435761) >> 13) }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	n := int64(len(b))
	if n > p.n-p.off {
		n = p.n - p.off
	}
	for i := int64(0); i < n; i++ {
		b[i] = patternByte(p.off + i)
	}
	p.off += n
	return int(n), nil
}

func (p *patternReader) slice(off, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = patternByte(off + int64(i))
	}
	return b
}

func (p *patternReader) sum() []byte {
	h := sha256.New()
	io.Copy(h, &patternReader{n: p.n})
	return h.Sum(nil)
}
