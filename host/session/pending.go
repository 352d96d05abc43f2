package session

import (
	"context"
	"fmt"
	"net/http"

	"github.com/plakar-oci/ocistore/abi"
)

// A started request (http.start) runs on its own goroutine until the guest
// finishes it (http.finish). Its answer becomes a stream only then, on the
// guest's side, so that CloseAll never races a request still adding one.
// Each has its own context: CloseAll cancels those the guest never
// finished, and the body of a finished one releases it when it is closed.
type pending struct {
	cancel context.CancelFunc
	done   chan struct{}
	resp   *http.Response
	err    error
}

// maxPending bounds the requests one call has in flight: a guest overlaps
// its work with a request or two, it does not flood the registry.
const maxPending = 8

// Start is http.start. A request the session cannot start (too many in
// flight) gets handle 0, which Finish refuses with the reason.
func (s *Session) Start(ar *abi.Request) abi.Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started.live >= maxPending {
		return 0
	}
	ar = cloneRequest(ar) // the request goes on after Start returns
	ctx, cancel := context.WithCancel(s.ctx)
	p := &pending{cancel: cancel, done: make(chan struct{})}
	h := s.started.add(p)
	if h == 0 {
		cancel()
		return 0
	}
	go func() {
		defer close(p.done)
		p.resp, p.err = s.do(ctx, ar)
	}()
	return abi.Pending(h)
}

// Finish is http.finish.
func (s *Session) Finish(h abi.Pending) (*abi.Response, error) {
	s.mu.Lock()
	p := s.started.remove(uint32(h))
	s.mu.Unlock()
	if p == nil {
		if h == 0 {
			return nil, fmt.Errorf("http.start refused the request: the call already has %d requests in flight; finish one first", maxPending)
		}
		return nil, fmt.Errorf("request %d is not pending (never started, or already finished): the guest used a stale handle", h)
	}
	<-p.done
	if p.err != nil {
		p.cancel()
		return nil, p.err
	}
	return s.answer(p.resp, p.cancel)
}

// abandon cancels the requests the guest started and never finished, and
// closes their answers; CloseAll calls it. It does not wait for them.
func (s *Session) abandon() {
	s.mu.Lock()
	started := s.started.drain()
	s.mu.Unlock()
	for _, p := range started {
		p.cancel()
		go func() {
			<-p.done
			if p.resp != nil {
				p.resp.Body.Close()
			}
		}()
	}
}
