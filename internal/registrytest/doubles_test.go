package registrytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestZotTags pins down the zot double's tag lists against zot's
// ListTags (project-zot/zot, pkg/api/routes.go), on the real double:
// distribution behind ZotTags.
func TestZotTags(t *testing.T) {
	r := Zot(t)
	for _, tag := range []string{"b", "a", "d", "c"} {
		pushEmpty(t, r, "test/zot:"+tag)
	}
	for _, tc := range []struct {
		query, status, link, body string
	}{
		{"", "200", "", `{"name":"test/zot","tags":["a","b","c","d"]}`},
		{"?n=2", "200", `</v2/test/zot/tags/list?n=2&last=b>; rel="next"`, `{"name":"test/zot","tags":["a","b"]}`},
		{"?n=2&last=b", "200", "", `{"name":"test/zot","tags":["c","d"]}`},
		{"?n=3&last=b", "200", "", `{"name":"test/zot","tags":["c","d"]}`},
		{"?n=0", "200", "", `{"name":"test/zot","tags":[]}`},
		{"?n=1&last=b", "200", `</v2/test/zot/tags/list?n=1&last=c>; rel="next"`, `{"name":"test/zot","tags":["c"]}`},
		{"?n=1&last=c", "200", "", `{"name":"test/zot","tags":["d"]}`},
		{"?n=1&last=d", "200", "", `{"name":"test/zot","tags":[]}`},
		{"?last=a", "200", "", `{"name":"test/zot","tags":["b","c","d"]}`},
		// last must name a tag: an empty 404, not NAME_UNKNOWN.
		{"?n=2&last=b-", "404", "", ``},
		{"?n=2&last=0", "404", "", ``},
		{"?n=-1", "400", "", ``},
		{"?n=x", "400", "", ``},
		{"?n=1&n=2", "400", "", ``},
	} {
		status, link, body := get(t, r.URL+"/v2/test/zot/tags/list"+tc.query)
		if status != tc.status || link != tc.link || body != tc.body {
			t.Errorf("tags/list%s = %s %q %q, want %s %q %q", tc.query, status, link, body, tc.status, tc.link, tc.body)
		}
	}
	// A tag that is the prefix of others.
	for _, tag := range []string{"b0", "b-x", "b"} {
		pushEmpty(t, r, "test/prefix:"+tag)
	}
	if status, _, body := get(t, r.URL+"/v2/test/prefix/tags/list?last=b"); status != "200" || body != `{"name":"test/prefix","tags":["b-x","b0"]}` {
		t.Errorf("tags after b = %s %s, want b-x and b0", status, body)
	}
	if status, _, body := get(t, r.URL+"/v2/test/prefix/tags/list?last=b-"); status != "404" || body != "" {
		t.Errorf("tags after b- (not a tag) = %s %q, want an empty 404", status, body)
	}
	if status, _, body := get(t, r.URL+"/v2/test/none/tags/list?n=2&last=a"); status != "404" ||
		body != `{"errors":[{"code":"NAME_UNKNOWN","detail":{"name":"test/none"},"message":"repository name not known to registry"}]}` {
		t.Errorf("tag list of an unknown repository = %s %s, want 404 NAME_UNKNOWN", status, body)
	}
	if status, _, _ := get(t, r.URL+"/v2/_catalog"); status != "404" {
		t.Errorf("GET /v2/_catalog = %s, want 404", status)
	}
}

func get(t *testing.T, url string) (status, link, body string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status[:3], resp.Header.Get("Link"), strings.TrimSpace(string(b))
}

// TestQuayTags pins down the Quay double's tag lists: pages of at most
// 100 in an order that is not the tags', a last that is not a token read
// as the start, opaque next_page tokens, every tag once.
func TestQuayTags(t *testing.T) {
	r := Quay(t)
	var want []string
	for i := range 5 {
		tag := "t" + strconv.Itoa(i)
		pushEmpty(t, r, "test/quay:"+tag)
		want = append(want, tag)
	}
	status, link, body := get(t, r.URL+"/v2/test/quay/tags/list?n=3&last=t0")
	var page struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(body), &page); status != "200" || err != nil || len(page.Tags) != 3 || !strings.Contains(link, "next_page=quay-token-") {
		t.Fatalf("first page = %s %q %s, want 3 tags from the start and a Link with a token", status, link, body)
	}
	got := page.Tags
	page.Tags = nil
	next := strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	status, link, body = get(t, next)
	if err := json.Unmarshal([]byte(body), &page); status != "200" || err != nil || link != "" {
		t.Fatalf("second page = %s %q %s", status, link, body)
	}
	got = append(got, page.Tags...)
	if slices.IsSorted(got) {
		t.Errorf("tags %q are sorted: Quay's order is its ids'", got)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("tags %q, want %q", got, want)
	}
	page.Tags = nil
	if status, _, body := get(t, r.URL+"/v2/test/quay/tags/list?n=1000"); status != "200" || json.Unmarshal([]byte(body), &page) != nil || len(page.Tags) != 5 {
		t.Errorf("n=1000 = %s %s, want every tag (5 < 100)", status, body)
	}
}

// TestHarborGHCRQuirks pins down the Harbor and GHCR doubles.
func TestHarborGHCRQuirks(t *testing.T) {
	h := Harbor(t)
	pushEmpty(t, h, "test/harbor:a")
	if got := do(t, http.MethodDelete, h.URL+"/v2/test/harbor/manifests/a"); got != http.StatusBadRequest {
		t.Errorf("Harbor: DELETE by tag = %d, want 400 UNSUPPORTED", got)
	}
	if status, _, body := get(t, h.URL+"/v2/test/none/tags/list"); status != "404" || !strings.Contains(body, `"code":"NOT_FOUND"`) {
		t.Errorf("Harbor: tag list of an unknown repository = %s %s, want 404 NOT_FOUND", status, body)
	}
	g := GHCR(t)
	for _, tag := range []string{"a", "b", "c"} {
		pushEmpty(t, g, "test/ghcr:"+tag)
	}
	if status, link, body := get(t, g.URL+"/v2/test/ghcr/tags/list?n=1&last=a"); status != "200" || link != "" || body != `{"name":"test/ghcr","tags":["a","b","c"]}` {
		t.Errorf("GHCR: tags/list?n=1&last=a = %s %q %s, want every tag at once", status, link, body)
	}
	if got := do(t, http.MethodDelete, g.URL+"/v2/test/ghcr/manifests/a"); got != http.StatusMethodNotAllowed {
		t.Errorf("GHCR: DELETE = %d, want 405", got)
	}
}

// TestZotTagsClampedBackend: the registry behind the zot double clamps n
// (distribution: to 1000) and links the rest; the double still answers
// pages of n tags, as zot does, with a Link while tags are left.
func TestZotTagsClampedBackend(t *testing.T) {
	tags := []string{"a", "b", "c", "d", "e", "f", "g"}
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			n = len(tags) // no n: every tag, unclamped, as distribution does
		} else {
			n = min(n, 2)
		}
		last := r.URL.Query().Get("last")
		var page []string
		for _, tag := range tags {
			if tag > last {
				page = append(page, tag)
			}
		}
		if len(page) > n {
			page = page[:n]
			w.Header().Set("Link", fmt.Sprintf(`</v2/r/tags/list?n=%d&last=%s>; rel="next"`, n, page[len(page)-1]))
		}
		json.NewEncoder(w).Encode(map[string]any{"name": "r", "tags": page})
	})
	zot := ZotTags(backend)
	var got []string
	for target, pages := "/v2/r/tags/list?n=3", 0; target != ""; pages++ {
		if pages > len(tags) {
			t.Fatalf("more pages than tags: %q", got)
		}
		rec := httptest.NewRecorder()
		zot.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		var page struct {
			Tags []string `json:"tags"`
		}
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &page) != nil {
			t.Fatalf("GET %s: %d %s", target, rec.Code, rec.Body)
		}
		if len(page.Tags) != 3 && len(got)+len(page.Tags) != len(tags) {
			t.Errorf("GET %s: %q, want 3 tags while tags are left", target, page.Tags)
		}
		got = append(got, page.Tags...)
		target, _ = strings.CutPrefix(strings.SplitN(rec.Header().Get("Link"), ">", 2)[0], "<")
	}
	if !slices.Equal(got, tags) {
		t.Errorf("listed %q, want %q", got, tags)
	}
}

// TestZotTagsWritesBetweenPages: a tag put or deleted through the zot
// double between two pages of a walk shows, or does not, on the next page,
// as on zot, which reads its index at every page; a deleted last is an
// empty 404.
func TestZotTagsWritesBetweenPages(t *testing.T) {
	r := Zot(t)
	for _, tag := range []string{"a", "b", "c", "d"} {
		pushEmpty(t, r, "test/walk:"+tag)
	}
	page := func(query, wantStatus, wantLink, wantBody string) {
		t.Helper()
		if status, link, body := get(t, r.URL+"/v2/test/walk/tags/list"+query); status != wantStatus || link != wantLink || body != wantBody {
			t.Errorf("tags/list%s = %s %q %q, want %s %q %q", query, status, link, body, wantStatus, wantLink, wantBody)
		}
	}
	page("?n=2", "200", `</v2/test/walk/tags/list?n=2&last=b>; rel="next"`, `{"name":"test/walk","tags":["a","b"]}`)
	pushEmpty(t, r, "test/walk:bb")
	page("?n=2&last=b", "200", `</v2/test/walk/tags/list?n=2&last=c>; rel="next"`, `{"name":"test/walk","tags":["bb","c"]}`)
	if got := do(t, http.MethodDelete, r.URL+"/v2/test/walk/manifests/c"); got != http.StatusAccepted {
		t.Fatalf("DELETE test/walk:c = %d, want 202", got)
	}
	page("?n=2&last=c", "404", "", "")
	page("?n=2&last=bb", "200", "", `{"name":"test/walk","tags":["d"]}`)
	for _, tag := range []string{"a", "b", "bb", "d"} {
		if got := do(t, http.MethodDelete, r.URL+"/v2/test/walk/manifests/"+tag); got != http.StatusAccepted {
			t.Fatalf("DELETE test/walk:%s = %d, want 202", tag, got)
		}
	}
	page("?n=2", "200", "", `{"name":"test/walk","tags":[]}`)
}

// TestZotTagsOneReadPerWalk: a walk through a repository's pages reads its
// tag list from the registry behind once, at its first page; a write to
// the repository's manifests through the double makes the next page read
// it again, a write to another repository does not.
func TestZotTagsOneReadPerWalk(t *testing.T) {
	tags := []string{"a", "b", "c", "d", "e", "f", "g"}
	var reads atomic.Int32
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			w.WriteHeader(http.StatusCreated)
			return
		}
		reads.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"name": "r", "tags": tags})
	})
	zot := ZotTags(backend)
	serve := func(method, target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		zot.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
		return rec
	}
	walk := func() []string {
		var got []string
		for target := "/v2/r/tags/list?n=2"; target != ""; {
			rec := serve("GET", target)
			var page struct {
				Tags []string `json:"tags"`
			}
			if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &page) != nil || len(got) > len(tags) {
				t.Fatalf("GET %s: %d %s after %q", target, rec.Code, rec.Body, got)
			}
			got = append(got, page.Tags...)
			target, _ = strings.CutPrefix(strings.SplitN(rec.Header().Get("Link"), ">", 2)[0], "<")
		}
		return got
	}
	for range 2 {
		reads.Store(0)
		if got := walk(); !slices.Equal(got, tags) || reads.Load() != 1 {
			t.Errorf("walk: %q in %d reads of the registry behind, want %q in 1", got, reads.Load(), tags)
		}
	}
	serve("GET", "/v2/r/tags/list?n=2")
	for _, tc := range []struct {
		write string
		reads int32
	}{{"/v2/other/manifests/x", 0}, {"/v2/r/manifests/x", 1}} {
		serve("PUT", tc.write)
		reads.Store(0)
		if rec := serve("GET", "/v2/r/tags/list?n=2&last=b"); rec.Code != http.StatusOK || reads.Load() != tc.reads {
			t.Errorf("page after PUT %s: %d, %d reads of the registry behind, want 200 and %d", tc.write, rec.Code, reads.Load(), tc.reads)
		}
	}
}

// TestZotTagsReadsUnderWay: a first page asked while another's read of the
// tag list from the registry behind is under way waits for that read,
// unless a manifest of the repository was written through the double
// since it started: then it reads the list again, and sees the write.
func TestZotTagsReadsUnderWay(t *testing.T) {
	var mu sync.Mutex
	tags := []string{"a", "b"}
	var reads atomic.Int32
	blocked, release := make(chan struct{}), make(chan struct{})
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodPut {
			tags = append(tags, path.Base(r.URL.Path))
			w.WriteHeader(http.StatusCreated)
			return
		}
		page := slices.Clone(tags)
		if reads.Add(1) == 1 {
			mu.Unlock()
			close(blocked)
			<-release
			mu.Lock()
		}
		json.NewEncoder(w).Encode(map[string]any{"name": "r", "tags": page})
	})
	zot := ZotTags(backend).(*zotDouble)
	joined := make(chan struct{}, 1)
	zot.onJoin = func() { joined <- struct{}{} }
	serve := func(method, target string) string {
		rec := httptest.NewRecorder()
		zot.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
		return rec.Body.String()
	}
	bodies := make(chan string, 2)
	go func() { bodies <- serve("GET", "/v2/r/tags/list?n=10") }()
	<-blocked
	go func() { bodies <- serve("GET", "/v2/r/tags/list?n=1") }()
	select {
	case <-joined:
	case body := <-bodies:
		close(release)
		t.Fatalf("a first page asked during another's read read the list itself: %s", body)
	}
	// A write through the double: the next first page does not wait for
	// the read under way, which may not hold it.
	serve("PUT", "/v2/r/manifests/c")
	after := make(chan string, 1)
	go func() { after <- serve("GET", "/v2/r/tags/list?n=10") }()
	select {
	case <-joined:
		close(release)
		t.Fatalf("a first page asked after a write waited for a read that started before it")
	case got := <-after:
		if want := `{"name":"r","tags":["a","b","c"]}`; got != want {
			t.Errorf("first page after a write during a read = %s, want %s", got, want)
		}
	}
	close(release)
	got := []string{<-bodies, <-bodies}
	slices.Sort(got)
	if want := []string{`{"name":"r","tags":["a","b"]}`, `{"name":"r","tags":["a"]}`}; !slices.Equal(got, want) {
		t.Errorf("first pages during one read = %q, want %q", got, want)
	}
	if reads.Load() != 2 {
		t.Errorf("%d reads of the registry behind, want 2 (one for both first pages, one after the write)", reads.Load())
	}
}
