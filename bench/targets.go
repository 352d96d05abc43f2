package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/ocistore"
	"github.com/plakar-oci/ocistore/host"
)

// The three ways of storing the same objects: go-containerregistry against
// the registry directly (the ceiling), the store compiled for the host, and
// the store in the wasm sandbox. Objects are named by MAC for all three.
const (
	raw    = "raw"
	native = "native"
	wasm   = "wasm"
)

var variants = []string{raw, native, wasm}

// wasmZot is the sandboxed store on the zot double (registrytest.ZotTags
// in front of the same registry): zot's tag lists cost the store lists
// that start at the first tag. wasmProxy is the sandboxed store through
// the same proxy without the double: what the proxy's hop costs. Only the
// list runs them.
const (
	wasmZot   = "wasm-zot"
	wasmProxy = "wasm-proxy"
)

type target interface {
	put(ctx context.Context, mac objects.MAC, data []byte) error
	// get reads the object, or the range of it when n > 0, into buf and
	// returns the bytes read.
	get(ctx context.Context, mac objects.MAC, off uint64, n uint32, buf []byte) (int64, error)
	list(ctx context.Context) (int, error)
	requests() counts
	// guestMemory is the largest linear memory of a sandboxed store's
	// instances, and their number.
	guestMemory() (uint64, int)
	close(ctx context.Context) error
}

// storeTarget is a storage.Store, native or sandboxed.
type storeTarget struct {
	s       storage.Store
	cnt     *counter
	repo    string
	windows string // the read-ahead cache's directory
}

func (t *storeTarget) windowsDir() string { return t.windows }

// kloset passes readers that are neither io.Seekers nor io.WriterTos (a
// serializer over an encrypting stream): so does the benchmark.
type onlyReader struct{ io.Reader }

func (t *storeTarget) put(ctx context.Context, mac objects.MAC, data []byte) error {
	n, err := t.s.Put(ctx, storage.StorageResourcePackfile, mac, onlyReader{bytes.NewReader(data)})
	if err == nil && n != int64(len(data)) {
		err = fmt.Errorf("put %x: stored %d bytes of %d", mac[:4], n, len(data))
	}
	return err
}

func (t *storeTarget) get(ctx context.Context, mac objects.MAC, off uint64, n uint32, buf []byte) (int64, error) {
	var rng *storage.Range
	if n > 0 {
		rng = &storage.Range{Offset: off, Length: n}
	}
	rd, err := t.s.Get(ctx, storage.StorageResourcePackfile, mac, rng)
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	return drain(rd, buf)
}

func (t *storeTarget) list(ctx context.Context) (int, error) {
	macs, err := t.s.List(ctx, storage.StorageResourcePackfile)
	return len(macs), err
}

func (t *storeTarget) requests() counts { return t.cnt.snapshot() }

func (t *storeTarget) guestMemory() (uint64, int) {
	if s, ok := t.s.(*host.Store); ok {
		m := s.GuestMemory()
		return m.Max, m.Instances
	}
	return 0, 0
}

func (t *storeTarget) close(ctx context.Context) error { return t.s.Close(ctx) }

// drain reads rd to its end through buf, as a caller copying the object
// somewhere would.
func drain(rd io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := rd.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// rawTarget pushes and pulls blobs with go-containerregistry, and reads
// ranges with plain GETs: what the registry gives to a client with no
// store logic at all. A put is a blob upload, no manifest.
type rawTarget struct {
	repo   name.Repository
	pusher *remote.Pusher
	puller *remote.Puller
	client *http.Client
	base   string
	cnt    *counter

	mu      sync.Mutex
	digests map[objects.MAC]v1.Hash
}

func newRawTarget(registry, repo string, conc int) (*rawTarget, error) {
	r, err := name.NewRepository(registry+"/"+repo, name.Insecure)
	if err != nil {
		return nil, err
	}
	cnt := &counter{}
	tr := cnt.wrap(rawTransport(conc))
	opts := []remote.Option{remote.WithTransport(tr), remote.WithJobs(conc)}
	pusher, err := remote.NewPusher(opts...)
	if err != nil {
		return nil, err
	}
	puller, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, err
	}
	return &rawTarget{
		repo: r, pusher: pusher, puller: puller, client: &http.Client{Transport: tr},
		base: "http://" + registry + "/v2/" + repo + "/blobs/", cnt: cnt, digests: map[objects.MAC]v1.Hash{},
	}, nil
}

func (t *rawTarget) put(ctx context.Context, mac objects.MAC, data []byte) error {
	l := static.NewLayer(data, types.MediaType("application/octet-stream"))
	if err := t.pusher.Upload(ctx, t.repo, l); err != nil {
		return err
	}
	d, err := l.Digest()
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.digests[mac] = d
	t.mu.Unlock()
	return nil
}

// learn finds the blob of object mac that a store put, from its
// manifest, so that get can read it.
func (t *rawTarget) learn(ctx context.Context, mac objects.MAC) error {
	desc, err := t.puller.Get(ctx, t.repo.Tag(ocistore.ObjectTag(abi.KindPackfile, mac)))
	if err != nil {
		return err
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return err
	}
	if len(m.Layers) != 1 {
		return fmt.Errorf("raw: the manifest of %x has %d layers, want 1", mac[:4], len(m.Layers))
	}
	t.mu.Lock()
	t.digests[mac] = m.Layers[0].Digest
	t.mu.Unlock()
	return nil
}

func (t *rawTarget) digest(mac objects.MAC) (v1.Hash, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.digests[mac]
	if !ok {
		return v1.Hash{}, fmt.Errorf("raw: no blob put for %x", mac[:4])
	}
	return d, nil
}

func (t *rawTarget) get(ctx context.Context, mac objects.MAC, off uint64, n uint32, buf []byte) (int64, error) {
	d, err := t.digest(mac)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		l, err := t.puller.Layer(ctx, t.repo.Digest(d.String()))
		if err != nil {
			return 0, err
		}
		rc, err := l.Compressed()
		if err != nil {
			return 0, err
		}
		defer rc.Close()
		return drain(rc, buf)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+d.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+uint64(n)-1))
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("raw: range GET answered %s", resp.Status)
	}
	return drain(resp.Body, buf)
}

func (t *rawTarget) list(ctx context.Context) (int, error) {
	tags, err := t.puller.List(ctx, t.repo)
	return len(tags), err
}

func (t *rawTarget) requests() counts           { return t.cnt.snapshot() }
func (t *rawTarget) guestMemory() (uint64, int) { return 0, 0 }
func (t *rawTarget) close(context.Context) error {
	t.client.CloseIdleConnections()
	return nil
}
