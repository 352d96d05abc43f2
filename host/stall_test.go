package host_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestStalledRegistry puts a double in front of a real registry that
// stops answering in the ways a registry does: it never answers, or it
// sends the headers and then trickles a byte at a time. With tiny limits
// (idle_timeout, stall_timeout), every call ends with an error that says
// the registry stopped answering, and once the registry is taken as
// stopped the next call fails without a request. A request that alone
// goes unanswered is made again, and the call succeeds. A slow but steady
// download, and a reader that pauses longer than the idle timeout, are
// not cut.
func TestStalledRegistry(t *testing.T) {
	inner := registrytest.InProcess(t)
	innerURL, err := url.Parse(inner.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(innerURL)
	var mode atomic.Value
	mode.Store("")
	var requests atomic.Int64
	release := make(chan struct{})
	var stalledOnce atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		switch mode.Load() {
		case "once":
			// The first tag list goes unanswered, as on a connection
			// that died silently; the registry answers the rest.
			if strings.HasSuffix(r.URL.Path, "/tags/list") && stalledOnce.CompareAndSwap(false, true) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
				return
			}
		case "silent":
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		case "trickle":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			for {
				if _, err := w.Write([]byte(" ")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-release:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		case "steady":
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				// 4 KiB every 10 ms: slow, but progressing.
				rec := httptest.NewRecorder()
				proxy.ServeHTTP(rec, r)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				body := rec.Body.Bytes()
				for len(body) > 0 {
					n := min(len(body), 4<<10)
					if _, err := w.Write(body[:n]); err != nil {
						return
					}
					w.(http.Flusher).Flush()
					body = body[n:]
					time.Sleep(10 * time.Millisecond)
				}
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(func() { close(release) })

	const idle = 400 * time.Millisecond
	config := map[string]string{
		"location":      "oci://" + strings.TrimPrefix(front.URL, "http://") + "/stall/repo",
		"idle_timeout":  idle.String(),
		"stall_timeout": (3 * idle).String(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("steady download and a slow reader", func(t *testing.T) {
		s := newStoreWith(t, config)
		mac, data := randomMAC(), randomBytes(400<<10) // 100 writes of 4 KiB, 10 ms apart: 1 s in all
		put(t, s, storage.StorageResourcePackfile, mac, data)
		mode.Store("steady")
		defer mode.Store("")
		rd, err := s.Get(ctx, storage.StorageResourcePackfile, mac, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Close()
		head := make([]byte, 1000)
		if _, err := io.ReadFull(rd, head); err != nil {
			t.Fatal(err)
		}
		// The reader, not the registry, is slow: longer than the idle
		// timeout between two reads.
		time.Sleep(2 * idle)
		rest, err := io.ReadAll(rd)
		if err != nil {
			t.Fatalf("a steady download read slowly was cut: %v", err)
		}
		if !bytes.Equal(append(head, rest...), data) {
			t.Fatal("the download returned other bytes")
		}
	})

	t.Run("one request stalls", func(t *testing.T) {
		s := newStoreWith(t, config)
		mac := randomMAC()
		put(t, s, storage.StorageResourcePackfile, mac, randomBytes(1000))
		mode.Store("once")
		defer mode.Store("")
		macs, err := s.List(ctx, storage.StorageResourcePackfile)
		if err != nil {
			t.Fatalf("list whose first request went unanswered: %v; want it made again, as a transient failure", err)
		}
		if !stalledOnce.Load() || !slices.Contains(macs, mac) {
			t.Fatalf("list: %x (a request stalled: %v), want the object put", macs, stalledOnce.Load())
		}
	})

	for _, m := range []string{"silent", "trickle"} {
		t.Run(m, func(t *testing.T) {
			s := newStoreWith(t, config)
			mode.Store(m)
			defer mode.Store("")
			_, err := s.List(ctx, storage.StorageResourcePackfile)
			if ctx.Err() != nil {
				t.Fatalf("list against a %s registry did not end: %v", m, err)
			}
			if err == nil || !strings.Contains(err.Error(), "stopped answering") || !strings.Contains(err.Error(), "_timeout") {
				t.Fatalf("list against a %s registry: %v; want an error saying it stopped answering, naming the limit", m, err)
			}
			// Taken as stopped: the next call fails without asking.
			before := requests.Load()
			_, err = s.List(ctx, storage.StorageResourcePackfile)
			if err == nil || !strings.Contains(err.Error(), "stall_timeout") {
				t.Fatalf("list right after the registry stopped: %v; want the stall_timeout error at once", err)
			}
			if n := requests.Load() - before; n != 0 {
				t.Fatalf("list right after the registry stopped made %d requests", n)
			}
		})
	}
}

// TestStallOptions checks the limits' validation.
func TestStallOptions(t *testing.T) {
	for _, c := range []struct{ key, value, want string }{
		{"idle_timeout", "soon", "idle_timeout"},
		{"idle_timeout", "0s", "above 0"},
		{"stall_timeout", "-1m", "stall_timeout"},
		{"stall_timeout", "1s", "shorter than idle_timeout"},
	} {
		_, err := host.ParseConfig(map[string]string{"location": "oci://127.0.0.1:5000/a/b", c.key: c.value})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s=%s: %v; want an error saying %q", c.key, c.value, err, c.want)
		}
	}
	if _, err := host.ParseConfig(map[string]string{"location": "oci://127.0.0.1:5000/a/b", "idle_timeout": "50ms", "stall_timeout": "50ms"}); err != nil {
		t.Errorf("equal limits: %v", err)
	}
}
