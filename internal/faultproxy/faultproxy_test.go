package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upstream serves GET /blob (100 bytes, honouring Range, with a
// Docker-Content-Digest) and counts the bytes of PUT /sink.
func upstream(t *testing.T) (*httptest.Server, *int64) {
	var received int64
	data := bytes.Repeat([]byte("0123456789"), 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/blob":
			w.Header().Set("Docker-Content-Digest", "sha256:right")
			w.Header().Set("X-Host", r.Host)
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
		case r.URL.Path == "/sink":
			n, _ := io.Copy(io.Discard, r.Body)
			received += n
			w.WriteHeader(http.StatusCreated)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &received
}

func client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

func get(t *testing.T, url string, header ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestFaults(t *testing.T) {
	up, received := upstream(t)
	p := Start(t, up.URL)
	blob := Method("GET", "/blob")

	// Pass: the answer is the registry's, and the Host is the proxy's.
	resp, b, err := get(t, p.URL+"/blob")
	if err != nil || resp.StatusCode != 200 || len(b) != 100 || resp.Header.Get("X-Host") != p.Host {
		t.Fatalf("pass: %v %d bytes %v, host %q", resp, len(b), err, resp.Header.Get("X-Host"))
	}

	h := p.Once(blob, Fault{Kind: Status, Status: 429, Header: RetryAfter(3 * time.Second)})
	resp, _, err = get(t, p.URL+"/blob")
	if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3" || h.Hits() != 1 {
		t.Fatalf("status: %v %v, %d hits", resp, err, h.Hits())
	}

	p.Once(blob, Fault{Kind: ResetResponse, Bytes: 10})
	if _, _, err = get(t, p.URL+"/blob"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("reset response: %v, want a connection reset", err)
	}

	p.Once(blob, Fault{Kind: Truncate})
	if _, b, err = get(t, p.URL+"/blob"); !errors.Is(err, io.ErrUnexpectedEOF) || len(b) != 50 {
		t.Errorf("truncate: %d bytes, %v", len(b), err)
	}

	p.Once(blob, Fault{Kind: LoseResponse})
	if _, _, err = get(t, p.URL+"/blob"); err == nil {
		t.Error("lose response: got an answer")
	}

	p.Once(blob, Fault{Kind: IgnoreRange})
	resp, b, err = get(t, p.URL+"/blob", "Range", "bytes=10-19")
	if err != nil || resp.StatusCode != 200 || len(b) != 100 {
		t.Errorf("ignore range: %v %d bytes %v", resp.StatusCode, len(b), err)
	}
	resp, b, _ = get(t, p.URL+"/blob", "Range", "bytes=10-19")
	if resp.StatusCode != 206 || string(b) != "0123456789" {
		t.Errorf("range after the fault: %d %q", resp.StatusCode, b)
	}

	p.Once(blob, Fault{Kind: WrongDigest})
	if resp, _, _ = get(t, p.URL+"/blob"); !strings.HasPrefix(resp.Header.Get("Docker-Content-Digest"), "sha256:") ||
		resp.Header.Get("Docker-Content-Digest") == "sha256:right" {
		t.Errorf("wrong digest: %q", resp.Header.Get("Docker-Content-Digest"))
	}
	p.Once(blob, Fault{Kind: Corrupt})
	if _, b, _ = get(t, p.URL+"/blob"); len(b) != 100 || b[99] == '9' {
		t.Errorf("corrupt: %q", b)
	}

	// Delay: a client that gives up is not kept waiting.
	delay := p.Once(blob, Fault{Kind: Delay, Delay: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.URL+"/blob", nil)
	start := time.Now()
	if _, err := client().Do(req); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("delay: %v after %v", err, time.Since(start))
	}
	if delay.Hits() != 1 {
		t.Errorf("the delay rule took %d requests", delay.Hits())
	}

	// ResetRequest: part of the body is read, none reaches the registry.
	p.Once(Method("PUT", "/sink"), Fault{Kind: ResetRequest, Bytes: 1000})
	body := io.MultiReader(bytes.NewReader(make([]byte, 1<<20)))
	req, _ = http.NewRequest("PUT", p.URL+"/sink", body)
	if _, err := client().Do(req); err == nil {
		t.Error("reset request: got an answer")
	}
	req, _ = http.NewRequest("PUT", p.URL+"/sink", bytes.NewReader(make([]byte, 1000)))
	if resp, err := client().Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("put after the fault: %v %v", resp, err)
	}
	if *received != 1000 {
		t.Errorf("the registry received %d bytes, want only the 1000 of the second put", *received)
	}

	var faults []string
	for _, e := range p.Requests() {
		// The dropped delayed request is logged when the proxy notices,
		// which may be later.
		if e.Fault != Delay {
			faults = append(faults, e.Fault.String())
		}
	}
	want := "pass status reset-response truncate lose-response ignore-range pass wrong-digest corrupt reset-request pass"
	if got := strings.Join(faults, " "); got != want {
		t.Errorf("log:\n got %s\nwant %s", got, want)
	}
}
