package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
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
// ran, and whether its context was cancelled; and whether the store was
// closed while a delete had not ended.
type deleteStore struct {
	storage.Store
	returned                 *atomic.Bool
	deleted, late, cancelled atomic.Bool
	closedBeforeDelete       atomic.Bool
}

func (d *deleteStore) Delete(ctx context.Context, _ storage.StorageResource, _ objects.MAC) error {
	d.late.Store(d.returned.Load())
	d.cancelled.Store(ctx.Err() != nil)
	d.deleted.Store(true)
	return nil
}

func (d *deleteStore) Close(context.Context) error {
	d.closedBeforeDelete.Store(!d.deleted.Load())
	return nil
}

func (d *deleteStore) Origin() string        { return "test" }
func (d *deleteStore) Type() string          { return "oci" }
func (d *deleteStore) Root() string          { return "" }
func (d *deleteStore) Flags() location.Flags { return 0 }

// pipeServer is serve over a pipe, as the plugin serves Plakar, with a
// client as Plakar's: done has serve's error once it returned (and
// returned is then set).
type pipeServer struct {
	client    gstorage.StoreClient
	plakarEnd net.Conn
	lis       *oneConnListener
	returned  atomic.Bool
	done      chan error
}

// servePipe serves st with opts over a pipe, and initialises it.
func servePipe(t *testing.T, st *deleteStore, opts ...func(*pipeServer) grpc.ServerOption) *pipeServer {
	t.Helper()
	plakarEnd, pluginEnd := net.Pipe()
	p := &pipeServer{
		plakarEnd: plakarEnd,
		lis:       &oneConnListener{conn: &oneConn{Conn: pluginEnd, closed: make(chan struct{})}, served: make(chan struct{})},
		done:      make(chan error, 1),
	}
	st.returned = &p.returned
	var grpcOpts []grpc.ServerOption
	for _, o := range opts {
		grpcOpts = append(grpcOpts, o(p))
	}
	go func() {
		err := serve(func(context.Context, string, map[string]string) (storage.Store, error) { return st, nil }, p.lis, grpcOpts...)
		p.returned.Store(true)
		p.done <- err
	}()
	cc, err := grpc.NewClient("127.0.0.1:0",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return plakarEnd, nil }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		plakarEnd.Close()
	})
	p.client = gstorage.NewStoreClient(cc)
	if _, err := p.client.Init(context.Background(), &gstorage.InitRequest{Proto: "oci", Config: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// holdDelete is a server option that runs hold before each delete's
// handler.
func holdDelete(hold func()) grpc.ServerOption {
	return grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod == gstorage.Store_Delete_FullMethodName {
			hold()
		}
		return handler(ctx, req)
	})
}

func (p *pipeServer) deleteLock() {
	mac := randomMAC()
	p.client.Delete(context.Background(), &gstorage.DeleteRequest{Type: gstorage.StorageResource(storage.StorageResourceLock), Mac: mac[:]})
}

// TestServeFinishesCallsReadBeforeClose: a delete whose request the
// server read just before Plakar closed the connection, and whose handler
// had not run yet when the server stopped serving, runs to its end, with
// a live context, before serve returns (the process exits when it does).
// The handler is held until Serve has returned, the moment a count taken
// in the handler would have read zero.
func TestServeFinishesCallsReadBeforeClose(t *testing.T) {
	st := &deleteStore{}
	dispatched := make(chan struct{})
	p := servePipe(t, st, func(p *pipeServer) grpc.ServerOption {
		return holdDelete(func() {
			close(dispatched)
			<-p.lis.served
			for range 1000 {
				runtime.Gosched() // let serve return first, if it would
			}
		})
	})
	go p.deleteLock()
	<-dispatched
	p.plakarEnd.Close() // Plakar exits
	if err := <-p.done; err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("serve: %v", err)
	}
	switch {
	case !st.deleted.Load() || st.late.Load():
		t.Fatal("serve returned before the delete it had read ran: the process would exit with the lock still there")
	case st.cancelled.Load():
		t.Fatal("the delete ran with its call's context cancelled: its requests would fail")
	}
}

// TestCloseWaitsForDeletes: Plakar's Close, sent as it exits while a
// delete sent before it is under way (Kloset releasing the command's
// lock from a goroutine), answers only once the delete ended, so that
// Plakar exits after the release, not during it. The delete's handler is
// held until Close waits: counted from its headers on, the delete is in
// flight even before its handler runs.
func TestCloseWaitsForDeletes(t *testing.T) {
	st := &deleteStore{}
	dispatched, waiting := make(chan struct{}), make(chan struct{})
	closeWaits = func() { close(waiting) }
	t.Cleanup(func() { closeWaits = nil })
	p := servePipe(t, st, func(*pipeServer) grpc.ServerOption {
		return holdDelete(func() {
			close(dispatched)
			<-waiting
		})
	})
	go p.deleteLock()
	<-dispatched
	closed := make(chan error, 1)
	go func() {
		_, err := p.client.Close(context.Background(), &gstorage.CloseRequest{})
		closed <- err
	}()
	select {
	case err := <-closed:
		t.Fatalf("Close answered (%v) while a delete sent before it was under way: Plakar would exit during the release", err)
	case <-waiting:
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if !st.deleted.Load() || st.closedBeforeDelete.Load() {
		t.Fatal("the store was closed before the delete sent before Close ran")
	}
}
