package session

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"syscall"
)

// A registry that fails an upload part-way (its disk full) answers with
// why ({"errors":[{"detail":"... no space left on device"}]}) and hangs
// up while the body is still coming. The client's next write then fails
// (connection reset, broken pipe), and net/http returns that write error
// and drops the answer, which is in the socket's receive queue already:
// the user would read "the connection broke" and never why. AnswerFirst
// dials connections that, once a write fails past a request's headers,
// swallow the writes that are left, so that the transport goes on to
// read the answer (or the reset, when there is none).

// headersBound is what a request's line and headers take at most: a
// write that fails before that much of its request was sent is a stale
// keep-alive connection, whose error the transport must see to
// make the request again on a new one.
const headersBound = 64 << 10

// AnswerFirst wraps dial so that its connections read the answer to a
// request whose body could not be sent whole.
func AnswerFirst(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &answerFirstConn{Conn: c}, nil
	}
}

type answerFirstConn struct {
	net.Conn
	mu       sync.Mutex
	sent     int64 // written for the request under way (newRequest)
	writeErr error // the write that failed and was swallowed, and every later one
}

func (c *answerFirstConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	cut := c.writeErr != nil
	c.mu.Unlock()
	if cut {
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent += int64(n)
	if err != nil && c.sent > headersBound && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		c.writeErr = err
		return len(p), nil
	}
	return n, err
}

// newRequest starts the count of a request's bytes: the transport got
// the connection for it (connTrace), and writes it next. Counted from the
// last answer read instead, a registry that answers while the body is
// still going up (the full disk) would have the writes after its answer
// read as a new request's headers, and their reset returned.
func (c *answerFirstConn) newRequest() {
	c.mu.Lock()
	c.sent = 0
	c.mu.Unlock()
}

// cutShort is the write error a connection swallowed, if any.
func (c *answerFirstConn) cutShort() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeErr
}

// connTrace records the connection a request is sent on, so that its
// answer can be refused when its body was cut short.
type connTrace struct {
	mu   sync.Mutex
	conn net.Conn
}

func (t *connTrace) context(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if c := answerFirstOf(i.Conn); c != nil {
			c.newRequest()
		}
		t.mu.Lock()
		t.conn = i.Conn
		t.mu.Unlock()
	}})
}

// answerFirstOf is the answerFirstConn under conn, if there is one.
func answerFirstOf(conn net.Conn) *answerFirstConn {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	c, _ := conn.(*answerFirstConn)
	return c
}

// check returns the error of a body cut short on the connection resp
// came on, when resp is not an error answer: a registry cannot have
// taken the whole body, so a success there is not one. resp's body is
// closed then.
func (t *connTrace) check(resp *http.Response) error {
	t.mu.Lock()
	c := answerFirstOf(t.conn)
	t.mu.Unlock()
	if c == nil {
		return nil
	}
	err := c.cutShort()
	if err == nil || resp.StatusCode >= 400 {
		return nil
	}
	resp.Body.Close()
	return err
}
