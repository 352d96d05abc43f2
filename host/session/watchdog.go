package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// A registry that stops answering must not hang a command. Go's client
// has timeouts for whole requests or for headers only: the first would
// cut a large packfile that is still flowing, the second nothing that
// stalls once the headers are in. The watchdog bounds the time a request
// waits on the registry without progress instead:
//
//   - a request fails when less than progressBytes flowed, either way, for
//     its idle timeout while it waited on the registry: for its answer, or
//     in a read of the answer's body. Time spent waiting on the caller
//     (reading the body to send from Kloset, or a caller that does not
//     read the answer yet) does not count, so a slow consumer never cuts
//     a transfer, nor does a slow but steady one;
//   - the failure is a transient error (the guest makes the request again,
//     on a new connection);
//   - once the registry as a whole has sent nothing for the stall timeout
//     while requests waited on it (headers followed by a trickle are
//     nothing), it is taken as stopped: requests fail at once instead of
//     each waiting its idle timeout, until none was made for the stall
//     timeout, so that a command (with its retries and its lock release)
//     ends soon after the registry stopped, with a message that says so.
//
// The defaults (30 s idle, 90 s stall) end a command against a registry
// that never answers in about 90 s; a byte a second is no progress.

// progressBytes is how much must flow for a wait to count as progress: a
// registry that trickles a byte a second is not answering.
const progressBytes = 1 << 10

// Default limits of a Watchdog.
const (
	DefaultIdleTimeout  = 30 * time.Second
	DefaultStallTimeout = 90 * time.Second
)

// StalledError is a request that the registry stopped answering. It is a
// timeout (net.Error).
type StalledError struct {
	Host string
	// For is how long nothing came, and Option the store option that
	// sets that limit.
	For    time.Duration
	Option string
}

func (e *StalledError) Error() string {
	hint := "check that it is up and reachable, then try again"
	if e.Option == "idle_timeout" {
		hint = "check that it is up and reachable, or raise idle_timeout on a slow link"
	}
	return fmt.Sprintf("registry %s stopped answering: nothing came from it for %v (%s); %s", e.Host, e.For, e.Option, hint)
}

func (e *StalledError) Timeout() bool   { return true }
func (e *StalledError) Temporary() bool { return true }

// Watchdog watches the requests of one store. It is safe for concurrent
// use.
type Watchdog struct {
	idle, stall time.Duration
	now         func() time.Time

	mu sync.Mutex
	// The registry's silence: how long requests waited on it since the
	// last progress. Time when no request waits (between a failure and
	// its retry, or while the store has nothing to ask) does not count.
	waiting      int // requests waiting on the registry now
	waitSince    time.Time
	silent       time.Duration // before waitSince
	stoppedUntil time.Time
}

// NewWatchdog returns a watchdog with these limits; 0 means the default.
func NewWatchdog(idle, stall time.Duration) *Watchdog {
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	return &Watchdog{idle: idle, stall: max(stall, idle), now: time.Now}
}

// Transport returns next under the watchdog.
func (w *Watchdog) Transport(next http.RoundTripper) http.RoundTripper {
	return &watchTransport{w: w, next: next}
}

func (w *Watchdog) enter(now time.Time) {
	w.mu.Lock()
	if w.waiting == 0 {
		w.waitSince = now
	}
	w.waiting++
	w.mu.Unlock()
}

func (w *Watchdog) leave(now time.Time) {
	w.mu.Lock()
	if w.waiting--; w.waiting == 0 {
		w.silent += now.Sub(w.waitSince)
	}
	w.mu.Unlock()
}

// progress is an exchange completed, or enough bytes flowed.
func (w *Watchdog) progress(now time.Time) {
	w.mu.Lock()
	w.silent, w.waitSince = 0, now
	w.mu.Unlock()
}

// stopped returns the error for a request made while the registry is
// taken as stopped, nil otherwise. Each request refused keeps it stopped
// for the stall timeout again: a command's remaining calls (retries, the
// release of its lock) fail at once, and a store left alone for that long
// tries the registry again.
func (w *Watchdog) stopped(host string, now time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Before(w.stoppedUntil) {
		w.stoppedUntil = now.Add(w.stall)
		return &StalledError{Host: host, For: w.stall, Option: "stall_timeout"}
	}
	return nil
}

// verdict says whether a request that waited idle for idleFor fails, and
// how: the registry stopped (silent for the stall timeout), or this
// request's idle timeout ran out. next is when to look again otherwise.
func (w *Watchdog) verdict(host string, idleFor time.Duration, now time.Time) (err *StalledError, next time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	silent := w.silent
	if w.waiting > 0 {
		silent += now.Sub(w.waitSince)
	}
	switch {
	case silent >= w.stall:
		w.stoppedUntil = now.Add(w.stall)
		return &StalledError{Host: host, For: w.stall, Option: "stall_timeout"}, 0
	case idleFor >= w.idle:
		return &StalledError{Host: host, For: w.idle, Option: "idle_timeout"}, 0
	}
	return nil, min(w.idle-idleFor, w.stall-silent)
}

type watchTransport struct {
	w    *Watchdog
	next http.RoundTripper
}

func (t *watchTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w := t.w
	if err := w.stopped(req.URL.Host, w.now()); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	r := &watched{w: w, host: req.URL.Host, cancel: cancel}
	r.timer = time.AfterFunc(w.idle, r.check)
	r.timer.Stop()
	r.beginWait()
	out := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &watchedBody{r: r, rc: req.Body}
	}
	resp, err := t.next.RoundTrip(out)
	if err != nil {
		r.finish()
		if e := r.failure(); e != nil {
			return nil, e
		}
		return nil, err
	}
	empty := resp.Body == nil || resp.Body == http.NoBody
	r.answered(empty)
	if empty {
		r.finish()
		return resp, nil
	}
	resp.Body = &watchedAnswer{r: r, rc: resp.Body}
	return resp, nil
}

// watched is one request under the watchdog.
type watched struct {
	w      *Watchdog
	host   string
	cancel context.CancelCauseFunc
	timer  *time.Timer

	mu        sync.Mutex
	waitStart time.Time     // when the current wait on the registry began; zero when not waiting
	idleFor   time.Duration // waited without progress, before the current wait
	flowed    int64         // bytes since the last progress
	headers   bool          // the answer's headers came
	done      bool
	err       *StalledError
}

// beginWait starts a wait on the registry.
func (r *watched) beginWait() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || !r.waitStart.IsZero() {
		return
	}
	now := r.w.now()
	r.waitStart = now
	r.w.enter(now)
	r.timer.Reset(max(r.w.idle-r.idleFor, time.Millisecond))
}

// endWait ends a wait in which n bytes flowed; a wait that ends the
// exchange (headers, the end of the body) is progress whatever flowed.
// r.mu is held.
func (r *watched) endWait(n int64, ended bool) {
	now := r.w.now()
	if !r.waitStart.IsZero() {
		r.idleFor += now.Sub(r.waitStart)
		r.waitStart = time.Time{}
		r.w.leave(now)
		r.timer.Stop()
	}
	if r.flowed += n; ended || r.flowed >= progressBytes {
		r.idleFor, r.flowed = 0, 0
		r.w.progress(now)
	}
}

func (r *watched) pause(n int64, ended bool) {
	r.mu.Lock()
	r.endWait(n, ended)
	r.mu.Unlock()
}

// answered marks the headers' arrival: the request no longer waits on the
// registry until its body is read, and its idle time starts again. For the
// registry as a whole, headers are progress only when they end the
// exchange: a registry that answers headers and then trickles its body is
// not answering.
func (r *watched) answered(complete bool) {
	r.mu.Lock()
	r.headers = true
	r.endWait(0, complete)
	r.idleFor = 0
	r.mu.Unlock()
}

func (r *watched) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || r.waitStart.IsZero() {
		return
	}
	now := r.w.now()
	err, next := r.w.verdict(r.host, r.idleFor+now.Sub(r.waitStart), now)
	if err == nil {
		r.timer.Reset(max(next, time.Millisecond))
		return
	}
	r.err = err
	r.cancel(err)
}

// failure is the watchdog's error if it cut the request.
func (r *watched) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	return nil
}

func (r *watched) finish() {
	r.mu.Lock()
	if !r.done {
		r.endWait(0, false)
		r.done = true
	}
	r.mu.Unlock()
	r.cancel(nil)
}

// watchedBody is a request body: while the transport reads it, the
// request waits on the caller, not on the registry.
type watchedBody struct {
	r  *watched
	rc io.ReadCloser
}

func (b *watchedBody) Read(p []byte) (int, error) {
	b.r.pause(0, false)
	n, err := b.rc.Read(p)
	b.r.pause(int64(n), false)
	b.r.mu.Lock()
	headers := b.r.headers
	b.r.mu.Unlock()
	if !headers {
		b.r.beginWait()
	}
	return n, err
}

func (b *watchedBody) Close() error { return b.rc.Close() }

// watchedAnswer is a response body: a read waits on the registry.
type watchedAnswer struct {
	r  *watched
	rc io.ReadCloser
}

func (a *watchedAnswer) Read(p []byte) (int, error) {
	a.r.beginWait()
	n, err := a.rc.Read(p)
	a.r.pause(int64(n), err == io.EOF)
	if err != nil && !errors.Is(err, io.EOF) {
		if e := a.r.failure(); e != nil {
			return n, e
		}
	}
	return n, err
}

func (a *watchedAnswer) Close() error {
	err := a.rc.Close()
	a.r.finish()
	return err
}
