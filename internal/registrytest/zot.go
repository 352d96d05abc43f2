package registrytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// NameZot is the zot double: distribution v3 with deletion, behind
// ZotTags.
const NameZot = "zot-double"

// ZotTags answers tag lists as zot does (project-zot/zot, pkg/api/routes.go,
// ListTags, since v2.0.0-rc7) and passes every other request to next, a
// registry that takes any last (distribution, go-containerregistry):
//
//   - an unknown repository is 404 with the JSON error NAME_UNKNOWN;
//   - n and last, if present, must be given once; n must be a number, 0 or
//     more, or the answer is 400 with an empty body;
//   - last must be one of the repository's tags, or the answer is 404 with
//     an empty body;
//   - the tags are sorted; n = 0 is an empty list; with n, a Link to the
//     next page (`</v2/<name>/tags/list?n=<n>&last=<tag>>; rel="next"`) is
//     sent only when tags are left after the page.
//
// It also refuses /v2/_catalog, so that nothing comes to rely on it.
//
// A page without last, where a zot client's walk starts, reads the
// repository's whole tag list from next (or waits for such a read under
// way); the pages after it are cut from that snapshot while no manifest
// of the repository was put or deleted through the double since
// (zotDouble). Reading every tag after last at each page would make a
// walk O(pages x tags) in next and in the double (a list of 5,000 tags
// took twice its time on distribution): the double's cost, which real zot
// does not have, measured as the store's. A write to next behind the
// double's back shows from the next read of the list on.
func ZotTags(next http.Handler) http.Handler {
	return &zotDouble{next: next, gens: map[string]uint64{}, snaps: map[string]*zotSnapshot{}, reads: map[string]*zotRead{}}
}

// zotDouble is ZotTags' state: the tag list of each repository a walk is
// reading, the reads of tag lists from next under way, and a generation
// per repository that every write to its manifests through the double
// moves on.
type zotDouble struct {
	next  http.Handler
	mu    sync.Mutex
	gens  map[string]uint64
	snaps map[string]*zotSnapshot
	reads map[string]*zotRead
	// onJoin, if set, is called when a request waits for a read under
	// way: a test's event.
	onJoin func()
}

// zotRead is a read of a repository's tag list from next, started at
// generation gen; snap is its result (nil if it failed) once done is
// closed.
type zotRead struct {
	gen  uint64
	done chan struct{}
	snap *zotSnapshot
}

// zotSnapshot is a repository's tags, sorted, as next listed them at
// generation gen.
type zotSnapshot struct {
	gen  uint64
	tags []string
}

func (z *zotDouble) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/_catalog" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if i := strings.LastIndex(r.URL.Path, "/manifests/"); i > 0 && strings.HasPrefix(r.URL.Path, "/v2/") {
			// Before: the client may see the answer, and ask for a page,
			// before this handler returns. After: a snapshot read while
			// the write ran is not used again either.
			name := r.URL.Path[len("/v2/"):i]
			z.wrote(name)
			z.next.ServeHTTP(w, r)
			z.wrote(name)
			return
		}
	}
	name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
	if r.Method != http.MethodGet || !ok || !strings.HasPrefix(r.URL.Path, "/v2/") {
		z.next.ServeHTTP(w, r)
		return
	}
	q := r.URL.Query()
	n := -1
	if vs, ok := q["n"]; ok {
		v, err := strconv.ParseInt(strings.Join(vs, ""), 10, 0)
		if len(vs) != 1 || err != nil || v < 0 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		n = int(v)
	}
	last := ""
	if vs, ok := q["last"]; ok {
		if len(vs) != 1 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		last = vs[0]
	}
	snap := z.snapshot(w, r, name, last == "")
	if snap == nil {
		return
	}
	tags := snap.tags
	if last != "" {
		i, found := slices.BinarySearch(tags, last)
		if !found {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		tags = tags[i+1:]
	}
	link := ""
	if n >= 0 && len(tags) > n {
		if n > 0 {
			link = fmt.Sprintf("</v2/%s/tags/list?n=%d&last=%s>; rel=\"next\"", name, n, tags[n-1])
		}
		tags = tags[:n]
	}
	if link == "" {
		// The walk is over: its snapshot need not outlive it.
		z.forget(name, snap)
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, tags})
	if err != nil {
		http.Error(w, "zot double: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if link != "" {
		w.Header().Set("Link", link)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Write(body)
}

// wrote records a write to the manifests of repository name.
func (z *zotDouble) wrote(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.gens[name]++
	delete(z.snaps, name)
}

// forget drops snap, if it is still repository name's.
func (z *zotDouble) forget(name string, snap *zotSnapshot) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.snaps[name] == snap {
		delete(z.snaps, name)
	}
}

// snapshot is the tag list of repository name: the walk's snapshot if
// fresh is false and no write came through the double since it was read,
// else read from next. If next does not give it, snapshot answers w (404
// NAME_UNKNOWN for an unknown repository, next's answer otherwise) and
// returns nil.
func (z *zotDouble) snapshot(w http.ResponseWriter, r *http.Request, name string, fresh bool) *zotSnapshot {
	z.mu.Lock()
	gen, snap, read := z.gens[name], z.snaps[name], z.reads[name]
	switch {
	case !fresh && snap != nil && snap.gen == gen:
		z.mu.Unlock()
		return snap
	case read != nil && read.gen == gen:
		// A read from next that started after the last write through
		// the double and is not over yet: the store's first pages of
		// objects and of deletion markers come together, and one read
		// of 5,000 tags serves both.
		onJoin := z.onJoin
		z.mu.Unlock()
		if onJoin != nil {
			onJoin()
		}
		<-read.done
		if read.snap != nil {
			return read.snap
		}
		read = nil // it failed: this request's own read answers w
	default:
		read = &zotRead{gen: gen, done: make(chan struct{})}
		z.reads[name] = read
		z.mu.Unlock()
	}
	tags, ok := z.readTags(w, r, name)
	z.mu.Lock()
	defer z.mu.Unlock()
	if ok {
		snap = &zotSnapshot{gen: gen, tags: tags}
		if z.gens[name] == gen {
			z.snaps[name] = snap
		}
	} else {
		snap = nil
		if z.snaps[name] != nil && z.snaps[name].gen == gen {
			delete(z.snaps, name)
		}
	}
	if read != nil {
		read.snap = snap
		if z.reads[name] == read {
			delete(z.reads, name)
		}
		close(read.done)
	}
	return snap
}

// readTags reads every tag of repository name from next, sorted, or
// answers w and returns false if next does not give them.
func (z *zotDouble) readTags(w http.ResponseWriter, r *http.Request, name string) ([]string, bool) {
	// Without n: a registry behind may clamp n (distribution, to 1000)
	// where zot honours any. Its Links, if it sends some, are followed.
	tags := []string{} // a repository without tags lists [], not null
	target := "/v2/" + name + "/tags/list"
	for pages := 0; target != ""; pages++ {
		rec := subRequest(z.next, r, "GET", target)
		switch {
		case rec.Code == http.StatusNotFound && pages == 0:
			writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry", map[string]string{"name": name})
			return nil, false
		case rec.Code != http.StatusOK:
			copyRecorded(w, rec)
			return nil, false
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			http.Error(w, "zot double: the tag list of the registry behind is not JSON: "+err.Error(), http.StatusInternalServerError)
			return nil, false
		}
		tags = append(tags, page.Tags...)
		if target = nextTarget(rec.Header().Get("Link")); len(page.Tags) == 0 {
			target = ""
		}
	}
	slices.Sort(tags)
	return slices.Compact(tags), true
}

// nextTarget is the path and query of the next page that a tag list's
// Link names, or "" if it names none.
func nextTarget(link string) string {
	ref, ok := strings.CutPrefix(strings.SplitN(link, ">", 2)[0], "<")
	if !ok {
		return ""
	}
	u, err := url.Parse(ref)
	if err != nil {
		return ""
	}
	return u.RequestURI()
}

// Zot starts the zot double: distribution v3 with deletion (zot deletes),
// behind ZotTags.
func Zot(t testing.TB) *Registry { return startDouble(t, NameZot, true, ZotTags) }
