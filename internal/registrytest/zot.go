package registrytest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
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
func ZotTags(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/_catalog" {
			http.NotFound(w, r)
			return
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
		if r.Method != http.MethodGet || !ok || !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
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
		// The tags after last from next, one more than n: whether tags are
		// left after the page decides the Link.
		sub := url.Values{}
		if last != "" {
			sub.Set("last", last)
		}
		if n >= 0 {
			sub.Set("n", strconv.Itoa(n+1))
		}
		rec := subRequest(next, r, "GET", "/v2/"+name+"/tags/list?"+sub.Encode())
		if rec.Code == http.StatusOK && last != "" && !zotHasTag(next, r, name, last) {
			// Unknown to zot as well if the repository is (distribution
			// lists nothing after a last then): the first tag tells.
			if rec = subRequest(next, r, "GET", "/v2/"+name+"/tags/list?n=1"); rec.Code == http.StatusOK {
				w.WriteHeader(http.StatusNotFound)
				return
			}
		}
		switch {
		case rec.Code == http.StatusNotFound:
			writeZotError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry", map[string]string{"name": name})
			return
		case rec.Code != http.StatusOK:
			copyRecorded(w, rec)
			return
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			http.Error(w, "zot double: the tag list of the registry behind is not JSON: "+err.Error(), http.StatusInternalServerError)
			return
		}
		tags := page.Tags
		sort.Strings(tags)
		if n >= 0 && len(tags) > n {
			tags = tags[:n]
			if n > 0 {
				w.Header().Set("Link", fmt.Sprintf("</v2/%s/tags/list?n=%d&last=%s>; rel=\"next\"", name, n, tags[n-1]))
			}
		}
		if tags == nil {
			tags = []string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "tags": tags})
	})
}

// zotHasTag tells whether tag is one of repository name's tags; a digest
// is not, though next finds a manifest by it.
func zotHasTag(next http.Handler, r *http.Request, name, tag string) bool {
	if strings.ContainsAny(tag, ":/") {
		return false
	}
	rec := subRequest(next, r, "HEAD", "/v2/"+name+"/manifests/"+url.PathEscape(tag))
	return rec.Code == http.StatusOK
}

// subRequest makes a request of the double's own to next, with r's
// credentials.
func subRequest(next http.Handler, r *http.Request, method, target string) *httptest.ResponseRecorder {
	sub := httptest.NewRequestWithContext(r.Context(), method, target, nil)
	sub.Host = r.Host
	if a := r.Header.Get("Authorization"); a != "" {
		sub.Header.Set("Authorization", a)
	}
	sub.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, sub)
	return rec
}

func writeZotError(w http.ResponseWriter, status int, code, message string, detail any) {
	writeJSON(w, status, map[string]any{"errors": []map[string]any{{"code": code, "message": message, "detail": detail}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// Front puts a double (ZotTags, ...) in front of registry r: a proxy on a
// free port of 127.0.0.1 that keeps the client's Host header, so that the
// absolute upload locations r hands out point back at the front. r's URL
// and Host become the front's, and its Name name; Stop and Restart stop
// and start r behind the front, which lives until Close is called.
func Front(r *Registry, name string, double func(http.Handler) http.Handler) (closeFront func(), err error) {
	backend, err := url.Parse(r.URL)
	if err != nil {
		return nil, err
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backend)
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1,
		ErrorLog:      newLogger(r.logFile),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: double(proxy), ErrorLog: newLogger(r.logFile)}}
	srv.Start()
	r.Name, r.Host, r.URL = name, ln.Addr().String(), "http://"+ln.Addr().String()
	return func() {
		srv.CloseClientConnections()
		srv.Close()
	}, nil
}

// Zot starts the zot double: distribution v3 with deletion (zot deletes),
// behind ZotTags.
func Zot(t testing.TB) *Registry {
	t.Helper()
	r := startBinary(t, NameZot, distributionBinary(t), Options{Delete: true}, configOptions{})
	closeFront, err := Front(r, NameZot, ZotTags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	return r
}

// HideTags is a registry that accepts every object but leaves the tags
// that start with prefix out of its tag lists, as zot's tag lists did for
// the store before it knew their ways: what the store writes, no list
// shows. A test of what the store's users are told then.
func HideTags(prefix string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/tags/list") {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var page struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &page) != nil {
				copyRecorded(w, rec)
				return
			}
			page.Tags = slices.DeleteFunc(page.Tags, func(tag string) bool { return strings.HasPrefix(tag, prefix) })
			rec.Header().Del("Content-Length")
			rec.Body.Reset()
			json.NewEncoder(rec.Body).Encode(page)
			copyRecorded(w, rec)
		})
	}
}
