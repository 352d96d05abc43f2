package main

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"testing"

	gstorage "github.com/PlakarKorp/integration-grpc/storage"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"google.golang.org/grpc"
)

// memStore is a storage.Store of one object in memory.
type memStore struct {
	storage.Store
	data []byte
}

func (m *memStore) Get(_ context.Context, _ storage.StorageResource, _ objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	b := m.data
	if rng != nil {
		b = b[rng.Offset : rng.Offset+uint64(rng.Length)]
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// sink is the server side of a Get stream, collecting what is sent.
type sink struct {
	grpc.ServerStream
	got []byte
}

func (s *sink) Context() context.Context { return context.Background() }
func (s *sink) Send(r *gstorage.GetResponse) error {
	s.got = append(s.got, r.Chunk...)
	return nil
}

// TestGetBufferFitsTheRange: a ranged Get allocates about the range, not a
// buffer of a whole message (1 MiB, what go-kloset-sdk's Get makes for
// every answer): a restore makes tens of thousands of reads of a few
// hundred bytes. A whole Get still answers every byte.
func TestGetBufferFitsTheRange(t *testing.T) {
	data := make([]byte, 3<<20+5)
	for i := range data {
		data[i] = byte(i * 7)
	}
	srv := &server{}
	var st storage.Store = &memStore{data: data}
	srv.store.Store(&st)
	mac := randomMAC()
	const reads = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range reads {
		s := &sink{}
		off := uint64(i * 1000)
		if err := srv.Get(&gstorage.GetRequest{Mac: mac[:], Type: gstorage.StorageResource(storage.StorageResourcePackfile), Range: &gstorage.GetRequest_Range{Offset: off, Length: 300}}, s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(s.got, data[off:off+300]) {
			t.Fatalf("ranged get at %d: wrong bytes", off)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / reads; per > 64<<10 {
		t.Errorf("a ranged get of 300 bytes allocated %d bytes", per)
	}
	s := &sink{}
	if err := srv.Get(&gstorage.GetRequest{Mac: mac[:], Type: gstorage.StorageResource(storage.StorageResourcePackfile)}, s); err != nil || !bytes.Equal(s.got, data) {
		t.Fatalf("whole get: %d bytes, %v; want %d", len(s.got), err, len(data))
	}
}
