package ocistore

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

// Retries.
//
// A request is made again when its failure may be passing (no answer at
// all: a reset connection, a registry restarting; 408, 429, 500, 502, 503
// or 504; a body that breaks off while it is read; a document that does
// not match its digest) and making it again cannot do harm:
//
//   - GET and HEAD (manifests, tag lists, blobs, /v2/), PUT of a manifest
//     (the same bytes under the same tag), DELETE (a DELETE whose answer
//     was lost, then answered 404, is taken as done);
//   - the upload of a blob built in the guest (the configuration, the
//     empty blob): the whole sequence, POST, PUT, with a new session;
//   - the commit of an upload (PUT ?digest=): when an answer was lost and
//     the registry then no longer knows the session, a HEAD of the blob
//     tells whether the commit went through;
//   - the upload of a streamed body (Put), as a whole, only while not one
//     byte of the stream was read: the stream is Kloset's reader, which
//     cannot be rewound. The PATCH asks for "100-continue", so a registry
//     that refuses the request (a 503 from a proxy, say) does so before
//     the body is sent and the upload can start over. A PATCH that broke
//     off after the whole body went out (the stream is at its end) is
//     recovered when the registry's upload session holds every byte: the
//     upload is committed. Any other failure of a streamed PATCH is
//     returned as a transient error, and Kloset fails the backup: it
//     cannot hand the bytes over again. A body the host read ahead goes
//     up in one PUT (upload_whole.go): its POST is retried, the PUT is
//     not (the guest cannot tell how much of the stream went out), and a
//     PUT whose answer was lost is recovered when the blob is there.
//
// Waits grow from firstWait, doubling, with jitter; a Retry-After the
// registry sends is honoured up to maxRetryAfter, and an answer asking for
// longer is returned at once as a transient error rather than waited for.
// Each exchange is attempted at most maxAttempts times, and one store call
// waits at most maxCallWait in all.
//
// Cancellation: the guest cannot see the call's context. When Kloset
// cancels a call, the host fails the round trip in progress at once, and
// the host's metering (host/internal/meter) stops the guest the moment it
// runs again: at its next function call or loop. A guest asleep in Go's
// time.Sleep (a real nanosleep in wazero's poll_oneoff, which does not
// watch the context) would only notice when the wait is over, so waits are
// slept in slices of sleepSlice: a cancelled call returns within one slice.
// The budget (maxCallWait) still bounds what a call spends waiting.
const (
	maxAttempts   = 4
	firstWait     = 100 * time.Millisecond
	maxRetryAfter = 2 * time.Second
	maxCallWait   = 2500 * time.Millisecond
	sleepSlice    = 50 * time.Millisecond
)

// sliceSleep sleeps d in slices of sleepSlice, so that wazero can stop a
// cancelled call between two of them.
func sliceSleep(d time.Duration) {
	for d > 0 {
		s := min(d, sleepSlice)
		time.Sleep(s)
		d -= s
	}
}

// call is one store call: what it does, for messages, and the part of its
// retry budget it has spent.
type call struct {
	s *Store
	// verb, object and prep say what the call does; action puts them
	// together with the store's location, only when a message needs it:
	// each string built costs the sandboxed guest (RATIONALE.md).
	verb, object, prep string
	act                string
	waited             time.Duration
	// retried is set when an exchange had an attempt fail before the last
	// one: a request whose answer was lost may have taken effect.
	retried bool
	// done is set once a retry was refused: the call makes no more, so
	// that sequences retried as a whole do not start over an exchange
	// that gave up.
	done bool
}

// newCall starts a call described as verb+object+prep+location: "get ",
// tag, " from ".
func (s *Store) newCall(verb, object, prep string) *call {
	return &call{s: s, verb: verb, object: object, prep: prep}
}

// action says what the call does, for messages.
func (c *call) action() string {
	if c.act == "" {
		c.act = c.verb + c.object + c.prep + c.s.where
	}
	return c.act
}

// retry decides whether to make an exchange again after its attempt-th
// attempt failed because of why (transient by the caller's judgement),
// and waits before saying yes. after is the wait the registry asked for
// (Retry-After), 0 if none.
func (c *call) retry(attempt int, why string, after time.Duration) bool {
	if c.done || attempt >= maxAttempts {
		c.done = true
		return false
	}
	if after > maxRetryAfter {
		c.s.h.Log(abi.LevelWarn, fmt.Sprintf("oci: %s: %s and asks to wait %v, longer than this store waits (%v): giving up for now",
			c.action(), why, after, maxRetryAfter))
		c.done = true
		return false
	}
	wait := max(jitter(firstWait<<(attempt-1)), after)
	if c.waited+wait > maxCallWait {
		c.done = true
		return false
	}
	c.waited += wait
	c.s.h.Log(abi.LevelInfo, fmt.Sprintf("oci: %s: %s; trying again in %v (attempt %d of %d)",
		c.action(), why, wait.Round(time.Millisecond), attempt+1, maxAttempts))
	c.s.sleep(wait)
	return true
}

// jitter spreads waits over [d/2, d], so that instances that failed
// together do not come back together.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// retryStatus tells whether an answer with this status may be different
// if the request is made again.
func retryStatus(status int) bool {
	switch status {
	case 408, 429, 500, 502, 503, 504:
		return true
	}
	return false
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP-date
// (RFC 9110). Anything else, or a time already past, is 0.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		if n > 1<<30 {
			n = 1 << 30 // about 34 years: no need for more
		}
		return time.Duration(n) * time.Second
	}
	for _, layout := range []string{time.RFC1123, time.RFC850, time.ANSIC} {
		if t, err := time.Parse(layout, v); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	return 0
}

// exchange performs an idempotent request, making it again while the
// failure is transient (no answer; 408, 429 or 5xx). It returns the first
// other answer, or the last answer or error once the budget is spent: the
// caller turns an error status into an error with Store.fail as usual.
func (c *call) exchange(req *abi.Request) (*abi.Response, error) {
	return c.exchangeStarted(req, 0)
}

// exchangeStarted is exchange of a request already started with
// http.start, if started is not 0: its answer is the first attempt's.
func (c *call) exchangeStarted(req *abi.Request, started abi.Pending) (*abi.Response, error) {
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			c.retried = true
		}
		var resp *abi.Response
		var err error
		if attempt == 1 && started != 0 {
			resp, err = c.finish(req, started)
		} else {
			resp, err = c.send(req)
		}
		if err != nil {
			if codeOf(err) == abi.ErrTransient && c.retry(attempt, fmt.Sprintf("%s %s got no answer", req.Method, logPath(req.URL)), 0) {
				continue
			}
			return nil, err
		}
		if !retryStatus(resp.Status) {
			return resp, nil
		}
		why := fmt.Sprintf("%s %s was answered %d", req.Method, logPath(req.URL), resp.Status)
		if !c.retry(attempt, why, retryAfter(resp.Get("Retry-After"), c.s.now())) {
			return resp, nil
		}
		c.s.discard(resp)
	}
}

// headerDigest, as the want of getDoc, checks a document against the
// Docker-Content-Digest of its answer, when there is a valid one.
const headerDigest = "Docker-Content-Digest"

// doc is a document getDoc read: the answer's status and headers, and
// the body of a 200 answer. For any other status the body is consumed,
// err is what the answer means and errs the OCI errors it carried.
type doc struct {
	status int
	header []abi.Header
	data   []byte
	err    error
	errs   []registryError
}

// get returns the value of the first header named name.
func (d *doc) get(name string) string {
	r := abi.Response{Header: d.header}
	return r.Get(name)
}

// getDoc GETs a document of at most limit bytes (a manifest, a tag list,
// the configuration, the answer to /v2/), retrying transient failures,
// including a body that breaks off and one whose sha256 is not want (a
// digest, headerDigest, or "" for no check). The error is for failures
// that no status explains: no answer, an unreadable or oversized body.
func (c *call) getDoc(what, url string, header []abi.Header, limit int, want string) (*doc, error) {
	return c.getStartedDoc(what, c.request("GET", url, header...), 0, docTuning{limit: limit, want: want})
}

// docTuning is how getStartedDoc reads a document: getDoc's limit and
// want, and what a list, reading pages one after another, adds.
type docTuning struct {
	limit int
	want  string
	// headers, if not nil, sees the headers of each 200 answer before its
	// body is read, so that the next request can start while the body
	// comes (http.start).
	headers func([]abi.Header)
	// buf, if it has room, is where the body is read.
	buf []byte
}

// getStartedDoc is getDoc of req, which started is the request of if it
// is not 0 (see exchangeStarted).
func (c *call) getStartedDoc(what string, req *abi.Request, started abi.Pending, t docTuning) (*doc, error) {
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			c.retried = true
			started = 0
		}
		resp, err := c.exchangeStarted(req, started)
		if err != nil {
			return nil, err
		}
		d := &doc{status: resp.Status, header: resp.Header}
		if resp.Status != 200 {
			body, _, _ := c.s.read(resp.Body, nil, maxErrorBody, -1)
			c.s.h.Close(resp.Body)
			d.err, d.errs = c.s.failWith(c.action(), resp, body), parseRegistryErrors(body)
			return d, nil
		}
		if t.headers != nil {
			t.headers(resp.Header)
		}
		d.data, err = c.readDoc(what, resp, t.limit, t.buf)
		if err == nil {
			err = checkDigest(c, what, d, t.want)
		}
		if err == nil {
			return d, nil
		}
		if codeOf(err) != abi.ErrTransient || !c.retry(attempt, err.Error(), 0) {
			return nil, err
		}
	}
}

// checkDigest fails, as a transient error, a document that does not
// match the digest it should have: the network or a proxy altered it.
func checkDigest(c *call, what string, d *doc, want string) error {
	if want == headerDigest {
		if want = d.get(headerDigest); !validDigest(want) {
			return nil
		}
	}
	if want == "" {
		return nil
	}
	if got := digestOf(d.data); got != want {
		return &abi.Error{Code: abi.ErrTransient, Message: fmt.Sprintf(
			"%s: the %s from registry %s is corrupted: its %d bytes have digest %s, not %s: try again",
			c.action(), what, c.s.loc.Registry, len(d.data), got, want)}
	}
	return nil
}
