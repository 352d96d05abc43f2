package host_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// countingProxy forwards to a registry and counts, per blob, the GETs it
// answered and the bytes of their bodies: what the registry served.
type countingProxy struct {
	Host  string
	mu    sync.Mutex
	gets  map[string]int // blob path -> GETs
	bytes int64          // bytes of blob GET bodies
}

func startCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{gets: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			p.mu.Lock()
			p.gets[r.URL.Path]++
			p.mu.Unlock()
			w = &countingWriter{ResponseWriter: w, p: p}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

type countingWriter struct {
	http.ResponseWriter
	p *countingProxy
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.p.mu.Lock()
	w.p.bytes += int64(n)
	w.p.mu.Unlock()
	return n, err
}

// take returns the counts since the last take, and starts again.
func (p *countingProxy) take() (gets map[string]int, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	gets, n = p.gets, p.bytes
	p.gets, p.bytes = map[string]int{}, 0
	return gets, n
}

// smallFilesTree writes files small files of random bytes (incompressible,
// so that they make several packfiles) and one file of 3000 bytes,
// "small.bin", and returns the tree.
func smallFilesTree(t *testing.T, files int) *sourceTree {
	t.Helper()
	root := t.TempDir()
	r := rand.New(rand.NewPCG(18, 2026))
	var total int64
	for i := range files {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", i%40))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1+r.IntN(24<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(len(b))
	}
	small := make([]byte, 3000)
	for j := range small {
		small[j] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(root, "small.bin"), small, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := newSourceTree(root, total+3000)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestReadAheadRequestsFollowPackfiles restores and checks a snapshot of
// thousands of small files, each a new process with an empty read-ahead
// cache: the registry serves each blob a few times whatever the number of
// files (see RATIONALE.md, "Read-ahead windows"); and a
// restore of one small file from that snapshot fetches little more than
// the file.
func TestReadAheadRequestsFollowPackfiles(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{})
	p := startCountingProxy(t, reg.URL)
	src := smallFilesTree(t, 3000)
	passphrase := []byte("read-ahead")
	config := func() map[string]string {
		return map[string]string{"location": "oci://" + p.Host + "/readahead/repo", "readahead_cache_dir": t.TempDir()}
	}
	if _, err := vault.Create(context.Background(), config(), passphrase, nil); err != nil {
		t.Fatal(err)
	}
	id, err := openVault(t, config(), passphrase, nil).backup(src)
	if err != nil {
		t.Fatal(err)
	}
	p.take()

	// A packfile: whole, once the restore is seen going through the
	// snapshot, and a window or two before that; the one that holds the
	// snapshot's index trees may take a window more, as a restore of one
	// file does. At most 2 GETs a blob in all.
	const maxGetsPerBlob = 4
	perBlob := func(what string, gets map[string]int) {
		t.Helper()
		total := 0
		for path, n := range gets {
			total += n
			if n > maxGetsPerBlob {
				t.Errorf("%s: the registry served blob %s %d times, more than %d", what, path[strings.LastIndex(path, ":")+1:][:12], n, maxGetsPerBlob)
			}
		}
		if total > 2*len(gets) {
			t.Errorf("%s: %d blob GETs for %d blobs, more than 2 a blob", what, total, len(gets))
		}
		t.Logf("%s: %d blob GETs for %d blobs", what, total, len(gets))
	}

	v := openVault(t, config(), passphrase, nil)
	v.restoreSame(t, id, src)
	gets, _ := p.take()
	perBlob("restore of 3001 files", gets)

	v = openVault(t, config(), passphrase, nil)
	v.check(t, id)
	gets, _ = p.take()
	perBlob("check", gets)

	// One small file: whatever it reads beyond the file (the snapshot's
	// header and the entries of its path) fits in a fixed window.
	v = openVault(t, config(), passphrase, nil)
	p.take() // opening reads the states
	dest := t.TempDir()
	r, err := v.Restore(ref(id), filepath.Join(src.root, "small.bin"), dest, false)
	if err != nil || r.NumErrors > 0 {
		t.Fatalf("restoring small.bin: %v, %v", err, r)
	}
	got, err := os.ReadFile(filepath.Join(dest, "small.bin"))
	want, _ := os.ReadFile(filepath.Join(src.root, "small.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the restored small.bin differs from its source (%v)", err)
	}
	_, n := p.take()
	const fixedWindow = 1 << 20
	if limit := int64(4*len(want) + fixedWindow); n > limit {
		t.Errorf("restoring one file of %d bytes fetched %d bytes of blobs, more than %d (4 times the file and a window of %d)", len(want), n, limit, fixedWindow)
	}
	t.Logf("restore of one file of %d bytes: %d bytes of blobs fetched", len(want), n)
}

// windowFiles lists the window files of a read-ahead cache directory.
func windowFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files
}

// TestReadAheadDamagedWindow: a window file damaged on disk, or holding
// another blob's window, is never served: the read fetches again and
// returns the right bytes.
// Each read is made by a new store (the guest plans it) and by the same
// store (the host serves what a window holds without the guest).
func TestReadAheadDamagedWindow(t *testing.T) {
	t.Run("new store", func(t *testing.T) { testDamagedWindow(t, true) })
	t.Run("same store", func(t *testing.T) { testDamagedWindow(t, false) })
}

func testDamagedWindow(t *testing.T, fresh bool) {
	reg := registrytest.Distribution(t, registrytest.Options{})
	p := startCountingProxy(t, reg.URL)
	dir := t.TempDir()
	config := map[string]string{"location": "oci://" + p.Host + "/readahead/damaged", "readahead_cache_dir": dir}
	s := newStoreWith(t, config)
	reader := func() storage.Store {
		if fresh {
			return newStoreWith(t, config)
		}
		return s
	}
	a, b := randomBytes(2_000_000), randomBytes(2_000_000)
	macA, macB := randomMAC(), randomMAC()
	put(t, s, packfile, macA, a)
	put(t, s, packfile, macB, b)
	ctx := context.Background()
	rng := &storage.Range{Offset: 100_000, Length: 1000}
	read := func(mac objects.MAC, data []byte, wantGets int) {
		t.Helper()
		p.take()
		got, err := readAll(ctx, reader(), packfile, mac, rng)
		if err != nil || !bytes.Equal(got, data[rng.Offset:rng.Offset+uint64(rng.Length)]) {
			t.Fatalf("ranged read: %d bytes, %v; want the %d right ones", len(got), err, rng.Length)
		}
		gets, _ := p.take()
		n := 0
		for _, g := range gets {
			n += g
		}
		if n != wantGets {
			t.Fatalf("the ranged read made %d blob GETs, want %d", n, wantGets)
		}
	}
	read(macA, a, 1)
	read(macA, a, 0) // from the window
	files := windowFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("%d window files after one window, want 1: %v", len(files), files)
	}

	// One bit flipped in the window's bytes, among those read (the file:
	// a header of 64 bytes, a sum of 32 bytes per block of 4 KiB, the
	// window; named <digest>-<offset>-<length>).
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(filepath.Base(files[0]), "-")
	winOff, _ := strconv.Atoi(parts[1])
	winLen, _ := strconv.Atoi(parts[2])
	raw[64+(winLen+4095)/4096*32+int(rng.Offset)-winOff+10] ^= 1
	if err := os.WriteFile(files[0], raw, 0o600); err != nil {
		t.Fatal(err)
	}
	read(macA, a, 1)

	// B's window file replaced by A's: the right length and sums, the
	// wrong blob.
	read(macB, b, 1)
	var fileA, fileB string
	for _, f := range windowFiles(t, dir) {
		if bytes.Contains([]byte(f), []byte(digestHex(a))) {
			fileA = f
		} else {
			fileB = f
		}
	}
	if fileA == "" || fileB == "" {
		t.Fatalf("window files %v: want one of each blob", windowFiles(t, dir))
	}
	rawA, err := os.ReadFile(fileA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileB, rawA, 0o600); err != nil {
		t.Fatal(err)
	}
	read(macB, b, 1)
}

// TestReadAheadHeldReadNeedsNoInstance: a read that a window holds is
// served by the host while the store's only instance is busy (a put that
// the registry holds): it needs no guest call. A read that needed the
// instance would wait for it; its context, done already, ends that wait at
// once with an error rather than hanging the test.
func TestReadAheadHeldReadNeedsNoInstance(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{}))
	config := map[string]string{"location": "oci://" + rig.proxy.Host + "/readahead/busy", "readahead_cache_dir": t.TempDir(), "concurrency": "1"}
	s := newStoreWith(t, config)
	data, mac := randomBytes(300_000), randomMAC()
	put(t, s, packfile, mac, data)
	ctx := context.Background()
	rng := &storage.Range{Offset: 1000, Length: 500}
	want := data[1000:1500]
	if got, err := readAll(ctx, s, packfile, mac, rng); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ranged read: %d bytes, %v", len(got), err)
	}

	arrived, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	rig.proxy.Add(faultproxy.Rule{Match: func(r *http.Request) bool {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			once.Do(func() { close(arrived); <-proceed })
		}
		return false
	}})
	putDone := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, packfile, randomMAC(), bytes.NewReader(randomBytes(1000)))
		putDone <- err
	}()
	<-arrived
	done, cancel := context.WithCancel(ctx)
	cancel()
	got, err := readAll(done, s, packfile, mac, rng)
	close(proceed)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("a read held by a window, the only instance busy: %d bytes, %v; want the %d right ones without an instance", len(got), err, len(want))
	}
	if err := <-putDone; err != nil {
		t.Fatal(err)
	}
}

// TestReadAheadHeldReadAfterPutOrDelete: the host serves a held read from
// the blob the guest last planned for that object; once the object is put
// again (other bytes) or deleted through the store, that blob is no longer
// its: reads return the new bytes, then not found.
func TestReadAheadHeldReadAfterPutOrDelete(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	s := newStoreWith(t, map[string]string{"location": "oci://" + reg.Host + "/readahead/stale", "readahead_cache_dir": t.TempDir()})
	ctx := context.Background()
	mac := randomMAC()
	rng := &storage.Range{Offset: 1000, Length: 500}
	for i, data := range [][]byte{randomBytes(300_000), randomBytes(300_000)} {
		put(t, s, packfile, mac, data)
		for range 2 { // planned by the guest, then held
			if got, err := readAll(ctx, s, packfile, mac, rng); err != nil || !bytes.Equal(got, data[1000:1500]) {
				t.Fatalf("put %d, ranged read: %d bytes, %v; want that put's", i, len(got), err)
			}
		}
	}
	if err := s.Delete(ctx, packfile, mac); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(ctx, s, packfile, mac, rng); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ranged read of a deleted packfile: %d bytes, %v; want not found", len(got), err)
	}
}

// TestReadAheadCorruptedWholeBlob: a blob fetched whole into a window that
// the registry corrupts is not kept, and the read is served by a request
// for its range alone (Kloset checks it against its MAC: a damaged copy
// in the registry is then reported chunk by chunk, TestCorruptedChunk);
// the next read fetches the blob again, right.
func TestReadAheadCorruptedWholeBlob(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{}))
	data := randomBytes(100_000) // smaller than two windows: fetched whole
	mac := randomMAC()
	dir := t.TempDir()
	config := map[string]string{"location": "oci://" + rig.proxy.Host + "/readahead/corrupt", "readahead_cache_dir": dir}
	put(t, newStoreWith(t, config), packfile, mac, data)
	h := rig.proxy.Add(faultproxy.Rule{Match: faultproxy.BlobGet, Fault: faultproxy.Fault{Kind: faultproxy.Corrupt}, Times: 1})
	ctx := context.Background()
	rng := &storage.Range{Offset: 5000, Length: 1000}
	want := data[5000:6000]
	rig.proxy.Requests()
	got, err := readAll(ctx, newStoreWith(t, config), packfile, mac, rng)
	if h.Hits() != 1 {
		t.Fatalf("the fault applied %d times, want 1", h.Hits())
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a read whose window came corrupted: %d bytes, %v; want the %d right ones, read by their range", len(got), err, len(want))
	}
	blobGets := 0
	for _, e := range rig.proxy.Requests() {
		if e.Method == http.MethodGet && strings.Contains(e.Path, "/blobs/") {
			blobGets++
		}
	}
	if blobGets != 2 {
		t.Errorf("the read made %d blob GETs, want 2 (the whole blob, then the range alone)", blobGets)
	}
	if files := windowFiles(t, dir); len(files) != 0 {
		t.Fatalf("the corrupted blob was kept: %v", files)
	}
	got, err = readAll(ctx, newStoreWith(t, config), packfile, mac, rng)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading again: %d bytes, %v; want the %d right ones", len(got), err, len(want))
	}
}

func digestHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestReadAheadCacheSize: readahead_cache_size takes bytes or a unit, 0
// turning read-ahead off, and refuses anything else naming the key.
func TestReadAheadCacheSize(t *testing.T) {
	for v, want := range map[string]int64{"": 2 << 30, "0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "4GiB": 4 << 30, "64 KiB": 64 << 10} {
		config := map[string]string{"location": "oci://127.0.0.1:5000/readahead/size"}
		if v != "" {
			config["readahead_cache_size"] = v
		}
		c, err := host.ParseConfig(config)
		if err != nil || c.ReadAheadSize != want {
			t.Errorf("readahead_cache_size %q: %v, %v; want %d", v, c, err, want)
		}
	}
	for _, v := range []string{"-1", "lots", "2GB", "1.5GiB", "99999999999TiB"} {
		_, err := host.ParseConfig(map[string]string{"location": "oci://127.0.0.1:5000/readahead/size", "readahead_cache_size": v})
		if err == nil || !strings.Contains(err.Error(), "readahead_cache_size") {
			t.Errorf("readahead_cache_size %q: %v, want an error naming the key", v, err)
		}
	}
}

// TestReadAheadCacheBounded: the windows on disk stay within
// readahead_cache_size, the least recently read going first, and reads
// still return the right bytes.
func TestReadAheadCacheBounded(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{})
	dir := t.TempDir()
	const limit = 300 << 10
	config := map[string]string{"location": "oci://" + reg.Host + "/readahead/bounded", "readahead_cache_dir": dir, "readahead_cache_size": strconv.Itoa(limit)}
	s := newStoreWith(t, config)
	ctx := context.Background()
	for i := range 4 {
		data, mac := randomBytes(1_000_000), randomMAC()
		put(t, s, packfile, mac, data)
		for _, off := range []uint64{10_000, 400_000, 800_000} {
			rng := &storage.Range{Offset: off, Length: 5000}
			got, err := readAll(ctx, s, packfile, mac, rng)
			if err != nil || !bytes.Equal(got, data[off:off+5000]) {
				t.Fatalf("object %d, range at %d: %d bytes, %v; want the 5000 right ones", i, off, len(got), err)
			}
			var used int64
			for _, f := range windowFiles(t, dir) {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				used += fi.Size()
			}
			if used > limit {
				t.Fatalf("the windows take %d bytes on disk, more than readahead_cache_size %d", used, limit)
			}
		}
	}
}

// TestReadAheadStaleTemporaryFiles: what a process killed while writing a
// window left behind is removed by the next one that opens the cache; a
// file another process is writing now is left alone.
func TestReadAheadStaleTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	stale, fresh := filepath.Join(dir, ".tmp-killed"), filepath.Join(dir, ".tmp-writing")
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("part of a window"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	newStoreWith(t, map[string]string{"location": "oci://127.0.0.1:1/readahead/stale", "readahead_cache_dir": dir})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the stale temporary file is still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("the temporary file being written was removed: %v", err)
	}
}
