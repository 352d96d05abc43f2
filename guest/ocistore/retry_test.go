package ocistore

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"1", time.Second},
		{" 120 ", 2 * time.Minute},
		{"99999999999999999999", 0}, // not a uint64: not a delay either
		{"18446744073709551615", (1 << 30) * time.Second},
		{"-1", 0},
		{"1.5", 0},
		{"soon", 0},
		{"Sun, 01 Jun 2025 12:00:03 GMT", 3 * time.Second},
		{"Sunday, 01-Jun-25 12:00:05 GMT", 5 * time.Second},
		{"Sun Jun  1 12:00:07 2025", 7 * time.Second},
		{"Sun, 01 Jun 2025 11:00:00 GMT", 0}, // past
	}
	for _, tt := range tests {
		if got := retryAfter(tt.v, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	var slept []time.Duration
	s := &Store{h: newTestHost(t, "http://127.0.0.1:1"), sleep: func(d time.Duration) { slept = append(slept, d) }, now: time.Now}
	c := s.newCall("test", "", "")
	attempts := 1
	for c.retry(attempts, "boom", 0) {
		attempts++
	}
	if attempts != maxAttempts {
		t.Errorf("%d attempts, want %d", attempts, maxAttempts)
	}
	for i, d := range slept {
		if step := firstWait << i; d < step/2 || d > step {
			t.Errorf("wait %d is %v, want within [%v, %v]", i, d, step/2, step)
		}
	}
	// Retry-After is honoured up to maxRetryAfter, within the call's budget.
	c = s.newCall("test", "", "")
	slept = nil
	if !c.retry(1, "429", maxRetryAfter) || slept[0] != maxRetryAfter {
		t.Errorf("Retry-After of %v: slept %v", maxRetryAfter, slept)
	}
	if c.retry(2, "429", maxRetryAfter) {
		t.Errorf("a second wait of %v fits in a budget of %v", maxRetryAfter, maxCallWait)
	}
	if c := s.newCall("test", "", ""); c.retry(1, "429", maxRetryAfter+time.Second) {
		t.Error("a Retry-After longer than maxRetryAfter was waited for")
	}
}

// faults answers the requests that match with canned answers, in order,
// then lets the rest through.
type faults struct {
	match func(*http.Request) bool

	mu      sync.Mutex
	answers []answer
	n       int // matching requests seen since arm
}

type answer = func(w http.ResponseWriter, r *http.Request, next http.Handler)

func newFaults(match func(*http.Request) bool, answers ...answer) *faults {
	return &faults{match: match, answers: answers}
}

// arm replaces the canned answers.
func (f *faults) arm(answers ...answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers, f.n = answers, 0
}

func (f *faults) mw(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a answer
		if f.match(r) {
			f.mu.Lock()
			if f.n < len(f.answers) {
				a = f.answers[f.n]
			}
			f.n++
			f.mu.Unlock()
		}
		if a != nil {
			a(w, r, next)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func status(code int, header ...string) answer {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		writeError(w, code, "INJECTED", "injected")
	}
}

// served lets the registry handle the request, then answers code instead
// of what it answered: a request that took effect, but whose answer is a
// failure.
func served(code int) answer {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		next.ServeHTTP(httptest.NewRecorder(), r)
		writeError(w, code, "INJECTED", "answer lost")
	}
}

// corrupted answers what the registry answers with the body's last byte
// flipped.
func corrupted(w http.ResponseWriter, r *http.Request, next http.Handler) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	if b := rec.Body.Bytes(); len(b) > 0 {
		b[len(b)-1] ^= 0xff
	}
	copyRecorded(w, rec)
}

func times(n int, a answer) []answer {
	out := make([]answer, n)
	for i := range out {
		out[i] = a
	}
	return out
}

func method(m, pathPart string) func(*http.Request) bool {
	return func(r *http.Request) bool { return r.Method == m && strings.Contains(r.URL.Path, pathPart) }
}

func TestRetries(t *testing.T) {
	data := bytes.Repeat([]byte("retry me "), 1000)
	for _, tt := range []struct {
		name   string
		f      *faults
		waits  int    // backoff waits expected
		minErr string // the Put error expected, if it must fail
	}{
		{"manifest GET 503 then 502", newFaults(method("GET", "/manifests/"), status(503), status(502)), 2, ""},
		{"blob GET 500", newFaults(method("GET", "/blobs/sha256:"), times(1, status(500))...), 1, ""},
		{"tag list 504", newFaults(method("GET", "/tags/list"), times(2, status(504))...), 2, ""},
		{"POST 503", newFaults(method("POST", "/blobs/uploads/"), times(1, status(503))...), 1, ""},
		{"PATCH 503 before the body", newFaults(method("PATCH", "/blobs/uploads/"), times(2, status(503))...), 2, ""},
		{"commit PUT 500", newFaults(method("PUT", "/blobs/uploads/"), times(1, status(500))...), 1, ""},
		{"commit done, answer lost", newFaults(method("PUT", "/blobs/uploads/"), times(1, served(502))...), 1, ""},
		{"manifest PUT done, answer lost", newFaults(method("PUT", "/manifests/"), times(1, served(503))...), 1, ""},
		{"manifest corrupted", newFaults(method("GET", "/manifests/"), times(2, corrupted)...), 2, ""},
		{"429 Retry-After", newFaults(method("GET", "/manifests/"), times(1, status(429, "Retry-After", "1"))...), 1, ""},
		{"PATCH always 503", newFaults(method("PATCH", "/blobs/uploads/"), times(100, status(503))...), maxAttempts - 1, "503 INJECTED"},
		{"429 Retry-After too long", newFaults(method("POST", "/blobs/uploads/"), times(100, status(429, "Retry-After", "3600"))...), 0, "(it asks to wait 1h0m0s)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := newHarness(t, tt.f.mw)
			mac := testMAC(7)
			err := x.put(abi.KindPackfile, mac, data)
			if tt.minErr != "" {
				wantCode(t, "Put", err, abi.ErrTransient, tt.minErr)
				if got := x.list(abi.KindPackfile); len(got) != 0 {
					t.Errorf("a failed Put left %x listed", got)
				}
			} else {
				x.must("Put", err)
				x.host.cache = map[string]string{} // Get reads the manifest
				b, err := x.get(abi.KindPackfile, mac, nil)
				if err != nil || !bytes.Equal(b, data) {
					t.Fatalf("Get = %d bytes, %v", len(b), err)
				}
				if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{mac}) {
					t.Errorf("List = %x", got)
				}
			}
			slept := x.takeSlept()
			if len(slept) != tt.waits {
				t.Errorf("%d waits (%v), want %d", len(slept), slept, tt.waits)
			}
			var total time.Duration
			for _, d := range slept {
				total += d
			}
			if total > maxCallWait*2 { // Put then Get, each within its budget
				t.Errorf("waited %v in all", total)
			}
			if strings.Contains(tt.name, "Retry-After") && tt.waits > 0 && slept[0] != time.Second {
				t.Errorf("waited %v, want the 1s of Retry-After", slept[0])
			}
		})
	}
}

func TestRetryDelete(t *testing.T) {
	// A DELETE that took effect but whose answer is a failure is retried,
	// and the 404 that follows means done.
	f := newFaults(method("DELETE", "/manifests/"), times(1, served(500))...)
	x := newHarness(t, f.mw)
	mac := testMAC(3)
	x.must("Put", x.put(abi.KindLock, mac, []byte("lock")))
	x.must("Delete", x.del(abi.KindLock, mac))
	if got := x.list(abi.KindLock); len(got) != 0 {
		t.Errorf("List after Delete = %x", got)
	}
	wantCode(t, "Delete again", x.del(abi.KindLock, mac), abi.ErrNotFound)
}

func TestRetryOpen(t *testing.T) {
	// The configuration blob comes back corrupted once: Open reads it again
	// rather than return it.
	f := newFaults(method("GET", "/blobs/sha256:"), times(1, corrupted)...)
	x := newHarness(t, f.mw)
	config := []byte(`{"repository_id":"retry"}`)
	x.must("Create", x.do(func() error { return x.store.Create(config) }))
	var got []byte
	x.must("Open", x.do(func() (err error) { got, err = x.store.Open(); return err }))
	if !bytes.Equal(got, config) || len(x.takeSlept()) != 1 {
		t.Errorf("Open = %q after %d waits", got, len(x.slept))
	}
	// Corrupted every time: a transient error, never the bad bytes.
	f.arm(times(100, corrupted)...)
	err := x.do(func() (err error) { got, err = x.store.Open(); return err })
	wantCode(t, "Open corrupted", err, abi.ErrTransient, "is corrupted")
	if got != nil {
		t.Errorf("Open returned %q with its error", got)
	}
}

func TestRetryPing(t *testing.T) {
	f := newFaults(method("GET", "/v2/"), times(2, status(503))...)
	x := newHarness(t, f.mw)
	x.must("Ping", x.do(x.store.Ping))
	if n := len(x.takeSlept()); n != 2 {
		t.Errorf("%d waits, want 2", n)
	}
	// A body that breaks off is read again.
	f.arm(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "{")
	})
	x.must("Ping", x.do(x.store.Ping))
	if n := len(x.takeSlept()); n != 1 {
		t.Errorf("%d waits, want 1", n)
	}
}

func TestRetryHead(t *testing.T) {
	f := newFaults(method("HEAD", "/manifests/"), status(408))
	x := newHarness(t, f.mw)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	if n := len(x.takeSlept()); n != 1 {
		t.Errorf("%d waits, want 1", n)
	}
}
