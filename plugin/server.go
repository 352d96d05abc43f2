package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	gstorage "github.com/PlakarKorp/integration-grpc/storage"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"google.golang.org/grpc"
)

// server is the gRPC storage service Plakar talks to: go-kloset-sdk's
// (sdk.RunStorageOn), but for Get. The SDK's Get sends every answer
// through a buffer of 1 MiB made for it; a restore asks for tens of
// thousands of ranges of a few hundred bytes each, and that buffer, zeroed
// and collected each time, took more than half of the plugin's CPU. Here
// a ranged answer's buffer is the size of the range.
type server struct {
	gstorage.UnimplementedStoreServer
	open storage.StoreFn
	// store is what Init opened. Plakar calls Init before anything else,
	// but gRPC serves each call on a goroutine of its own.
	store atomic.Pointer[storage.Store]
	// deletes are the deletes in flight, which Close waits for.
	deletes *inFlight
}

// maxChunk is the largest message Get sends: gRPC refuses messages over
// 4 MiB, and the SDK sends 1 MiB.
const maxChunk = 1 << 20

// serve serves the store on listener until Plakar goes away (closes the
// connection), then waits for the calls it received to end, for at most
// drainTimeout. Kloset releases a command's lock from a goroutine as the
// command ends, and Plakar closes the pipes as it exits: a release cut
// short would leave the repository locked for Kloset's ten minutes. gRPC
// counts a call from the moment its headers are read, before its handler
// runs, and GracefulStop waits for all of them: a count taken in the
// handler would miss a call read just before the connection closed.
func serve(open storage.StoreFn, listener net.Listener, opts ...grpc.ServerOption) error {
	deletes := newInFlight()
	srv := grpc.NewServer(append([]grpc.ServerOption{deletes.option()}, opts...)...)
	gstorage.RegisterStoreServer(srv, &server{open: open, deletes: deletes})
	err := srv.Serve(listener)
	drained := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
	}
	return err
}

// deleteTimeout bounds a delete that outlives Plakar's connection, and
// drainTimeout the wait for the calls under way when it closed: gRPC
// cancels the others, which then end at once.
const (
	deleteTimeout = 10 * time.Second
	drainTimeout  = deleteTimeout + 5*time.Second
)

var errNotInit = errors.New("oci store: called before Init: Plakar initialises a store first")

func (s *server) Init(ctx context.Context, req *gstorage.InitRequest) (*gstorage.InitResponse, error) {
	st, err := s.open(ctx, req.Proto, req.Config)
	if err != nil {
		return nil, err
	}
	s.store.Store(&st)
	return &gstorage.InitResponse{Origin: st.Origin(), Type: st.Type(), Root: st.Root(), Flags: uint32(st.Flags())}, nil
}

// opened is the store Init opened.
func (s *server) opened() (storage.Store, error) {
	if st := s.store.Load(); st != nil {
		return *st, nil
	}
	return nil, errNotInit
}

func (s *server) Create(ctx context.Context, req *gstorage.CreateRequest) (*gstorage.CreateResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	return &gstorage.CreateResponse{}, st.Create(ctx, req.Config)
}

func (s *server) Open(ctx context.Context, _ *gstorage.OpenRequest) (*gstorage.OpenResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	b, err := st.Open(ctx)
	if err != nil {
		return nil, err
	}
	return &gstorage.OpenResponse{Config: b}, nil
}

func (s *server) Ping(ctx context.Context, _ *gstorage.PingRequest) (*gstorage.PingResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	return &gstorage.PingResponse{}, st.Ping(ctx)
}

func (s *server) Mode(ctx context.Context, _ *gstorage.ModeRequest) (*gstorage.ModeResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	mode, err := st.Mode(ctx)
	if err != nil {
		return nil, err
	}
	return &gstorage.ModeResponse{Mode: int32(mode)}, nil
}

func (s *server) Size(ctx context.Context, _ *gstorage.SizeRequest) (*gstorage.SizeResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	size, err := st.Size(ctx)
	if err != nil {
		return nil, err
	}
	return &gstorage.SizeResponse{Size: size}, nil
}

func (s *server) List(ctx context.Context, req *gstorage.ListRequest) (*gstorage.ListResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	macs, err := st.List(ctx, storage.StorageResource(req.Type))
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(macs))
	for i := range macs {
		out[i] = macs[i][:]
	}
	return &gstorage.ListResponse{Macs: out}, nil
}

// macOf is the MAC of a request, which must have a MAC's length.
func macOf(b []byte) (objects.MAC, error) {
	var mac objects.MAC
	if len(b) != len(mac) {
		return mac, fmt.Errorf("oci store: a MAC of %d bytes, want %d: Plakar and the plugin disagree on the protocol", len(b), len(mac))
	}
	return objects.MAC(b), nil
}

func (s *server) Put(stream grpc.ClientStreamingServer[gstorage.PutRequest, gstorage.PutResponse]) error {
	st, err := s.opened()
	if err != nil {
		return err
	}
	req, err := stream.Recv() // the first message names the object
	if err != nil {
		return err
	}
	mac, err := macOf(req.Mac)
	if err != nil {
		return err
	}
	size, err := st.Put(stream.Context(), storage.StorageResource(req.Type), mac, gstorage.ReceiveChunks(func() ([]byte, error) {
		req, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return req.Chunk, nil
	}))
	if err != nil {
		return err
	}
	return stream.SendAndClose(&gstorage.PutResponse{BytesWritten: size})
}

func (s *server) Get(req *gstorage.GetRequest, stream grpc.ServerStreamingServer[gstorage.GetResponse]) error {
	st, err := s.opened()
	if err != nil {
		return err
	}
	mac, err := macOf(req.Mac)
	if err != nil {
		return err
	}
	var rng *storage.Range
	size := maxChunk
	if r := req.Range; r != nil {
		rng = &storage.Range{Offset: r.Offset, Length: r.Length}
		size = min(size, max(int(r.Length), 1))
	}
	rd, err := st.Get(stream.Context(), storage.StorageResource(req.Type), mac, rng)
	if err != nil {
		return err
	}
	defer rd.Close()
	buf := make([]byte, size)
	for {
		n, err := io.ReadFull(rd, buf)
		if n > 0 {
			if err := stream.Send(&gstorage.GetResponse{Chunk: buf[:n]}); err != nil {
				return fmt.Errorf("failed to send chunk: %w", err)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("failed to read: %w", err)
		}
	}
}

func (s *server) Delete(ctx context.Context, req *gstorage.DeleteRequest) (*gstorage.DeleteResponse, error) {
	st, err := s.opened()
	if err != nil {
		return nil, err
	}
	mac, err := macOf(req.Mac)
	if err != nil {
		return nil, err
	}
	// Run to its end even if Plakar goes away meanwhile (serve): gRPC
	// cancels a call's context when the connection closes.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	return &gstorage.DeleteResponse{}, st.Delete(ctx, storage.StorageResource(req.Type), mac)
}

// closeWaits, set by a test, is called as Close starts waiting for
// deletes.
var closeWaits func()

func (s *server) Close(ctx context.Context, _ *gstorage.CloseRequest) (*gstorage.CloseResponse, error) {
	// Plakar closes the store as it exits, and Kloset releases the
	// command's lock from a goroutine as the command ends: a release sent
	// before Close ends before Close does, so that Plakar exits after it.
	// A plugin left running after Plakar may well be killed with it (a
	// service manager stops the whole unit).
	if s.deletes != nil {
		ended := s.deletes.ended()
		select {
		case <-ended:
		default:
			if closeWaits != nil {
				closeWaits()
			}
			select {
			case <-ended:
			case <-ctx.Done():
			case <-time.After(deleteTimeout):
			}
		}
	}
	st, err := s.opened()
	if err != nil {
		return &gstorage.CloseResponse{}, nil // nothing opened, nothing to close
	}
	return &gstorage.CloseResponse{}, st.Close(ctx)
}
