package main

import (
	"context"
	"sync"

	gstorage "github.com/PlakarKorp/integration-grpc/storage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
)

// inFlight counts the deletes Plakar sent that have not ended, so that
// Close, which Plakar sends as it exits, lets Plakar go only once the
// deletes sent before it are done. A delete counts from the moment the
// server reads its headers (the tap, which runs in the order the calls
// arrive, before any handler: a count taken in the handler could miss a
// delete sent just before Close) until its stream's context ends, which
// gRPC ends once the call has answered, or was given up, whether or not
// its handler ran.
type inFlight struct {
	mu   sync.Mutex
	n    int
	none chan struct{} // closed while n is 0
}

func newInFlight() *inFlight {
	f := &inFlight{none: make(chan struct{})}
	close(f.none)
	return f
}

// ended is closed once no delete is in flight.
func (f *inFlight) ended() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.none
}

func (f *inFlight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.none = make(chan struct{})
	}
	f.n++
}

func (f *inFlight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 {
		close(f.none)
	}
}

// option is the server option that counts the deletes.
func (f *inFlight) option() grpc.ServerOption {
	return grpc.InTapHandle(func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if info.FullMethodName == gstorage.Store_Delete_FullMethodName {
			f.add()
			context.AfterFunc(ctx, f.done)
		}
		return ctx, nil
	})
}
