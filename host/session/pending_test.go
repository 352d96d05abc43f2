package session

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

// startServer answers /wait after release is closed, /hold by writing a
// byte and holding the body until the client goes, and /echo with the
// request's body. cancelled counts requests whose client went away.
func startServer(t *testing.T) (srv *httptest.Server, arrived chan string, release chan struct{}, cancelled *atomic.Int32) {
	arrived, release, cancelled = make(chan string, 16), make(chan struct{}), new(atomic.Int32)
	// stop lets the handlers go at the end of the test, so that a request
	// the client failed to cancel fails the test rather than hangs it.
	stop := make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		switch r.URL.Path {
		case "/wait":
			select {
			case <-release:
				io.WriteString(w, "answer")
			case <-r.Context().Done():
				cancelled.Add(1)
			case <-stop:
			}
		case "/hold":
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				cancelled.Add(1)
			case <-stop:
			}
		case "/echo":
			io.Copy(w, r.Body)
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // before srv.Close: cleanups run last first
	return srv, arrived, release, cancelled
}

func TestStartFinish(t *testing.T) {
	srv, arrived, release, _ := startServer(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	defer s.CloseAll()

	// Both requests are at the server before either is finished.
	a := s.Start(&abi.Request{Method: http.MethodGet, URL: "/wait"})
	b := s.Start(&abi.Request{Method: http.MethodGet, URL: "/wait"})
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("started requests did not reach the server before being finished")
		}
	}
	close(release)
	for _, p := range []abi.Pending{b, a} {
		resp, err := s.Finish(p)
		if err != nil {
			t.Fatalf("Finish(%d): %v", p, err)
		}
		if body, err := readAll(s, resp.Body, 1024); err != nil || string(body) != "answer" {
			t.Errorf("body of request %d: %q, %v", p, body, err)
		}
		s.Close(resp.Body)
	}
	if _, err := s.Finish(a); err == nil || !strings.Contains(err.Error(), "not pending") {
		t.Errorf("Finish of a finished request: %v, want a stale handle error", err)
	}

	// The body is copied at Start: the guest may reuse its memory.
	data := []byte("request body")
	p := s.Start(&abi.Request{Method: http.MethodPut, URL: "/echo", BodyKind: abi.BodyBytes, Bytes: data})
	copy(data, "overwritten!")
	resp, err := s.Finish(p)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := readAll(s, resp.Body, 1024); string(body) != "request body" {
		t.Errorf("the server got %q, want the body as it was at Start", body)
	}
	<-arrived

	// Requests in flight are bounded.
	var started []abi.Pending
	for range maxPending {
		started = append(started, s.Start(&abi.Request{Method: http.MethodGet, URL: "/echo"}))
	}
	if p := s.Start(&abi.Request{Method: http.MethodGet, URL: "/echo"}); p != 0 {
		t.Errorf("Start past %d requests in flight = %d, want 0", maxPending, p)
	}
	if _, err := s.Finish(0); err == nil || !strings.Contains(err.Error(), "in flight") {
		t.Errorf("Finish(0): %v, want the refusal's reason", err)
	}
	for _, p := range started {
		resp, err := s.Finish(p)
		if err != nil {
			t.Fatal(err)
		}
		s.Close(resp.Body)
	}
	if p := s.Start(&abi.Request{Method: http.MethodGet, URL: "/echo"}); p == 0 {
		t.Error("Start refused once the requests in flight were finished")
	}
}

// TestStartAbandoned checks that the end of a call cancels the requests it
// never finished, whether or not the registry has answered them yet.
func TestStartAbandoned(t *testing.T) {
	srv, arrived, _, cancelled := startServer(t)
	env, _ := newEnv(t, Config{Registry: srv.URL})
	s := env.NewSession(context.Background())
	s.Start(&abi.Request{Method: http.MethodGet, URL: "/wait"})
	s.Start(&abi.Request{Method: http.MethodGet, URL: "/hold"})
	for range 2 {
		<-arrived
	}
	time.Sleep(50 * time.Millisecond) // /hold's answer reaches the client
	s.CloseAll()
	deadline := time.Now().Add(5 * time.Second)
	for cancelled.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := cancelled.Load(); n != 2 {
		t.Errorf("%d of 2 abandoned requests were cancelled", n)
	}
}
