package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	gstorage "github.com/PlakarKorp/integration-grpc/storage"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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

// oneConn is one end of the pipe Plakar talks over; closed tells when the
// server closed it.
type oneConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *oneConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// oneConnListener is go-kloset-sdk's listener (sdk.InitConn): the one
// connection, then EOF once it is closed. served tells when the server
// closed the listener, which it does as Serve returns.
type oneConnListener struct {
	conn     *oneConn
	accepted bool
	served   chan struct{}
	once     sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.accepted {
		l.accepted = true
		return l.conn, nil
	}
	<-l.conn.closed
	return nil, io.EOF
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.served) })
	return l.conn.Close()
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// deleteStore records its deletes: whether serve had returned when one
// ran, and whether its context was cancelled.
type deleteStore struct {
	storage.Store
	returned                 *atomic.Bool
	deleted, late, cancelled atomic.Bool
}

func (d *deleteStore) Delete(ctx context.Context, _ storage.StorageResource, _ objects.MAC) error {
	d.late.Store(d.returned.Load())
	d.cancelled.Store(ctx.Err() != nil)
	d.deleted.Store(true)
	return nil
}

func (d *deleteStore) Origin() string        { return "test" }
func (d *deleteStore) Type() string          { return "oci" }
func (d *deleteStore) Root() string          { return "" }
func (d *deleteStore) Flags() location.Flags { return 0 }

// TestServeFinishesCallsReadBeforeClose: a delete whose request the
// server read just before Plakar closed the connection, and whose handler
// had not run yet when the server stopped serving, runs to its end, with
// a live context, before serve returns (the process exits when it does).
// The handler is held until Serve has returned, the moment a count taken
// in the handler would have read zero.
func TestServeFinishesCallsReadBeforeClose(t *testing.T) {
	ctx := context.Background()
	plakarEnd, pluginEnd := net.Pipe()
	lis := &oneConnListener{conn: &oneConn{Conn: pluginEnd, closed: make(chan struct{})}, served: make(chan struct{})}
	var returned atomic.Bool
	st := &deleteStore{returned: &returned}
	dispatched := make(chan struct{})
	hold := grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if strings.HasSuffix(info.FullMethod, "/Delete") {
			close(dispatched)
			<-lis.served
			for range 1000 {
				runtime.Gosched() // let serve return first, if it would
			}
		}
		return handler(ctx, req)
	})
	done := make(chan error, 1)
	go func() {
		err := serve(func(context.Context, string, map[string]string) (storage.Store, error) { return st, nil }, lis, hold)
		returned.Store(true)
		done <- err
	}()

	cc, err := grpc.NewClient("127.0.0.1:0",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return plakarEnd, nil }))
	if err != nil {
		t.Fatal(err)
	}
	client := gstorage.NewStoreClient(cc)
	if _, err := client.Init(ctx, &gstorage.InitRequest{Proto: "oci", Config: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	mac := randomMAC()
	go client.Delete(ctx, &gstorage.DeleteRequest{Type: gstorage.StorageResource(storage.StorageResourceLock), Mac: mac[:]})
	<-dispatched
	plakarEnd.Close() // Plakar exits
	if err := <-done; err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("serve: %v", err)
	}
	cc.Close()
	switch {
	case !st.deleted.Load() || st.late.Load():
		t.Fatal("serve returned before the delete it had read ran: the process would exit with the lock still there")
	case st.cancelled.Load():
		t.Fatal("the delete ran with its call's context cancelled: its requests would fail")
	}
}
