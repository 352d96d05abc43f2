package session

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// TestAnswerFirst: a registry that answers an upload part-way with an
// error and hangs up on the rest of the body (a full disk): the answer
// reaches the guest, not the reset the client's next write met.
func TestAnswerFirst(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 1<<20)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		// Closed with the rest of the body unread: a reset.
		body := `{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"no space left on device"}]}`
		fmt.Fprintf(buf, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		buf.Flush()
		conn.Close()
	}))
	defer srv.Close()
	transport := &http.Transport{DialContext: AnswerFirst((&net.Dialer{}).DialContext)}
	defer transport.CloseIdleConnections()
	env, _ := newEnv(t, Config{Registry: srv.URL, Transport: transport})
	s := env.NewSession(context.Background())
	defer s.CloseAll()
	data := testData(32 << 20)
	for i := 0; i < 10; i++ {
		h := s.AddReader(bytes.NewReader(data))
		resp, err := s.RoundTrip(&abi.Request{Method: http.MethodPatch, URL: "/v2/r/blobs/uploads/u", BodyKind: abi.BodyStreamed, Stream: h})
		if err != nil {
			t.Fatalf("upload %d: the answer was lost: %v", i, err)
		}
		if resp.Status != http.StatusInternalServerError {
			t.Fatalf("upload %d: status %d, want 500", i, resp.Status)
		}
	}
}

// TestAnswerFirstSuccessRefused: a success answered on a connection whose
// body was cut short is refused (the registry cannot have taken the whole
// body); an error answer is kept.
func TestAnswerFirstSuccessRefused(t *testing.T) {
	reset := &net.OpError{Op: "write", Err: syscall.ECONNRESET}
	for _, tc := range []struct {
		status int
		cut    error
		want   error
	}{
		{http.StatusAccepted, reset, reset},
		{http.StatusCreated, nil, nil},
		{http.StatusInternalServerError, reset, nil},
	} {
		var trace connTrace
		trace.conn = &answerFirstConn{writeErr: tc.cut}
		resp := &http.Response{StatusCode: tc.status, Body: io.NopCloser(bytes.NewReader(nil))}
		if err := trace.check(resp); err != tc.want {
			t.Errorf("%d after a cut %v: %v, want %v", tc.status, tc.cut, err, tc.want)
		}
	}
}
