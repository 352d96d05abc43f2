package ocistore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/internal/scratch"
)

// harness is a Store on go-containerregistry's in-process registry, behind
// optional middleware that makes it behave like other registries.
type harness struct {
	t     *testing.T
	host  *testHost
	store *Store
	loc   string
	// slept records the store's backoff waits, which take no time here.
	slept []time.Duration
}

type middleware func(http.Handler) http.Handler

func newHarness(t *testing.T, mws ...middleware) *harness {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	for _, mw := range mws {
		h = mw(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	host := newTestHost(t, srv.URL)
	loc := "oci://" + strings.TrimPrefix(srv.URL, "http://") + "/team/backups"
	st, err := New(host, map[string]string{OptionLocation: loc})
	if err != nil {
		t.Fatal(err)
	}
	// A store the host's cache knows in our layout, as after Create or
	// Open: tests of the layout's discovery start from an empty cache.
	host.CacheSet(st.layoutKey(), ourLayout.name)
	x := &harness{t: t, host: host, store: st, loc: loc}
	st.sleep = func(d time.Duration) { x.slept = append(x.slept, d) }
	return x
}

// takeSlept returns the waits since the last call.
func (x *harness) takeSlept() []time.Duration {
	s := x.slept
	x.slept = nil
	return s
}

// do runs one store call as an export call.
func (x *harness) do(f func() error) error {
	defer x.host.endCall()
	x.store.Reset()
	return f()
}

func TestMain(m *testing.M) {
	// What the store keeps of a call's memory past the call reads as
	// garbage, not as the next call's values.
	scratch.Poison = true
	os.Exit(m.Run())
}

func (x *harness) must(what string, err error) {
	x.t.Helper()
	if err != nil {
		x.t.Fatalf("%s: %v", what, err)
	}
}

func (x *harness) put(k abi.Kind, mac abi.MAC, data []byte) error {
	x.t.Helper()
	return x.do(func() error {
		n, err := x.store.Put(k, mac, x.host.AddReader(bytes.NewReader(data)))
		if err == nil && n != uint64(len(data)) {
			x.t.Errorf("Put(%s) = %d, want %d", ObjectTag(k, mac), n, len(data))
		}
		return err
	})
}

// get returns the object's bytes; a failed read (a failed verification)
// is returned as the error.
func (x *harness) get(k abi.Kind, mac abi.MAC, rng *abi.Range) ([]byte, error) {
	var data []byte
	err := x.do(func() error {
		st, err := x.store.Get(k, mac, rng)
		if err != nil {
			return err
		}
		rc := x.host.Take(st)
		defer rc.Close()
		data, err = io.ReadAll(rc)
		return err
	})
	return data, err
}

func (x *harness) list(k abi.Kind) []abi.MAC {
	x.t.Helper()
	var macs []abi.MAC
	x.must("List "+k.String(), x.do(func() (err error) {
		macs, err = x.store.List(k)
		return err
	}))
	return macs
}

// buryWithMarker deletes object (k, mac) as versions before the graveyard
// did where DELETE is refused: a marker tag, then the tombstone.
func (x *harness) buryWithMarker(k abi.Kind, mac abi.MAC) {
	x.t.Helper()
	x.must("bury with a marker", x.do(func() error {
		c := x.store.newCall("bury ", ObjectTag(k, mac), " in ")
		if err := c.putManifest(markerPrefix+ObjectTag(k, mac), tombstone); err != nil {
			return err
		}
		return c.putManifest(ObjectTag(k, mac), tombstone)
	}))
}

func (x *harness) del(k abi.Kind, mac abi.MAC) error {
	return x.do(func() error { return x.store.Delete(k, mac) })
}

// wantCode checks err's contract code and that its message has every one
// of want.
func wantCode(t *testing.T, what string, err error, code abi.ErrorCode, want ...string) {
	t.Helper()
	e, ok := err.(*abi.Error)
	if !ok {
		t.Fatalf("%s: error %v (%T), want an *abi.Error %v", what, err, err, code)
	}
	if e.Code != code {
		t.Fatalf("%s: %v error %q, want %v", what, e.Code, e.Message, code)
	}
	for _, w := range want {
		if !strings.Contains(e.Message, w) {
			t.Errorf("%s: %q lacks %q", what, e.Message, w)
		}
	}
}

func countRequests(reqs []string, prefix string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// Middleware.

func isTagList(r *http.Request) bool {
	return r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/tags/list")
}

// linkPages adds the Link header go-containerregistry leaves out, as
// distribution does, absolute or relative.
func linkPages(absolute bool) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isTagList(r) || r.URL.Query().Get("n") == "" {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var page struct {
				Tags []string `json:"tags"`
			}
			json.Unmarshal(rec.Body.Bytes(), &page)
			if n := len(page.Tags); rec.Code == 200 && n > 0 && r.URL.Query().Get("n") == itoa(n) {
				q := url.Values{"n": {itoa(n)}, "last": {page.Tags[n-1]}}
				target := "list?" + q.Encode()
				if absolute {
					target = "http://" + r.Host + r.URL.Path + "?" + q.Encode()
				}
				w.Header().Add("Link", `<`+target+`>; rel="next"`)
			}
			copyRecorded(w, rec)
		})
	}
}

// cursorLinks makes the Links of linkPages opaque: their query names the
// last tag "cursor", which the store cannot read, as a registry's own
// pagination token.
func cursorLinks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isTagList(r) {
			next.ServeHTTP(w, r)
			return
		}
		if q := r.URL.Query(); q.Has("cursor") {
			q.Set("last", q.Get("cursor"))
			q.Del("cursor")
			r.URL.RawQuery = q.Encode()
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for i, l := range rec.Header()["Link"] {
			rec.Header()["Link"][i] = strings.Replace(l, "last=", "cursor=", 1)
		}
		copyRecorded(w, rec)
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, vs := range rec.Header() {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// ignoreListParams makes the registry send every tag at once.
func ignoreListParams(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isTagList(r) {
			r.URL.RawQuery = ""
		}
		next.ServeHTTP(w, r)
	})
}

// inclusiveLast makes the registry's pages overlap: each starts with the
// tag it was asked to follow, as if last were inclusive.
func inclusiveLast(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if last := q.Get("last"); isTagList(r) && last != "" {
			q.Set("last", last[:len(last)-1]+string(last[len(last)-1]-1))
			r.URL.RawQuery = q.Encode()
		}
		next.ServeHTTP(w, r)
	})
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// refuseDelete answers DELETE like distribution without deletion enabled,
// GHCR or Docker Hub.
func refuseDelete(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "DELETE" && strings.Contains(r.URL.Path, "/manifests/") {
			writeError(w, 405, "UNSUPPORTED", "The operation is unsupported.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// digestOnlyDelete answers DELETE like distribution v2.8 with deletion
// enabled: a tag is read as a bad digest, and deleting a digest untags it.
func digestOnlyDelete(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "DELETE" || !strings.Contains(r.URL.Path, "/manifests/") {
			next.ServeHTTP(w, r)
			return
		}
		dir, ref := r.URL.Path[:strings.LastIndex(r.URL.Path, "/")+1], r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if !strings.HasPrefix(ref, "sha256:") {
			writeError(w, 400, "DIGEST_INVALID", "provided digest did not match uploaded content")
			return
		}
		// go-containerregistry keeps tags of a deleted digest: untag them.
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, httptest.NewRequest("GET", strings.TrimSuffix(dir, "manifests/")+"tags/list", nil))
		var page struct {
			Tags []string `json:"tags"`
		}
		json.Unmarshal(rec.Body.Bytes(), &page)
		for _, tag := range page.Tags {
			head := httptest.NewRecorder()
			next.ServeHTTP(head, httptest.NewRequest("HEAD", dir+tag, nil))
			if head.Header().Get("Docker-Content-Digest") == ref {
				next.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("DELETE", dir+tag, nil))
			}
		}
		next.ServeHTTP(w, r)
	})
}

// ignoreRange makes blob downloads whole, as some proxies do.
func ignoreRange(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		next.ServeHTTP(w, r)
	})
}

// widenRange asks the registry for three bytes more than each ranged read
// wants: its answer is a 206 longer than asked for.
func widenRange(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first, last int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil {
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last+3))
		}
		next.ServeHTTP(w, r)
	})
}

// corruptBlobs flips the last byte of every whole blob download.
func corruptBlobs(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/blobs/sha256:") {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		if b := rec.Body.Bytes(); len(b) > 0 {
			b[len(b)-1] ^= 0xff
		}
		copyRecorded(w, rec)
	})
}

// failFirst answers the first request that match accepts with an error.
func failFirst(match func(*http.Request) bool, status int, code string) middleware {
	var done atomic.Bool
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if match(r) && done.CompareAndSwap(false, true) {
				writeError(w, status, code, "injected")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
