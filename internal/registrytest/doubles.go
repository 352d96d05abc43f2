package registrytest

import (
	"encoding/json"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// Names of the doubles of Harbor and GHCR.
const (
	NameHarbor = "harbor-double"
	NameGHCR   = "ghcr-double"
)

// HarborQuirks answers as Harbor's registry API does where it departs
// from distribution (goharbor/harbor, src/server/registry): the tag list
// of an unknown repository is 404 with the code NOT_FOUND, not
// NAME_UNKNOWN (tag.go, lib/http/error.go), and DELETE of a manifest by
// tag is 400 UNSUPPORTED, only digests are deleted (manifest.go,
// deleteManifest).
func HarborQuirks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dir, ref, isManifest := strings.Cut(r.URL.Path, "/manifests/")
		switch {
		case r.Method == http.MethodDelete && isManifest && strings.HasPrefix(dir, "/v2/") && !strings.Contains(ref, ":"):
			writeError(w, http.StatusBadRequest, "UNSUPPORTED", "unsupported digest "+ref, nil)
			return
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/tags/list"):
			rec := subRequest(next, r, "GET", r.URL.RequestURI())
			if rec.Code == http.StatusNotFound {
				name := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
				writeError(w, http.StatusNotFound, "NOT_FOUND", "repository "+name+" not found", nil)
				return
			}
			copyRecorded(w, rec)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// GHCRQuirks answers as GHCR does where it departs from distribution:
// the tag list ignores n and last and sends every tag at once (reported
// in google/go-containerregistry#1102), and DELETE through the registry
// API is 405 UNSUPPORTED (versions are deleted through GitHub's REST
// API).
func GHCRQuirks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v2/"):
			writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "The operation is unsupported.", nil)
			return
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/tags/list"):
			r = r.Clone(r.Context())
			r.URL.RawQuery = ""
			r.RequestURI = r.URL.RequestURI()
		}
		next.ServeHTTP(w, r)
	})
}

// Harbor starts the Harbor double: distribution v3 with deletion behind
// HarborQuirks.
func Harbor(t testing.TB) *Registry { return startDouble(t, NameHarbor, true, HarborQuirks) }

// GHCR starts the GHCR double: distribution v3 behind GHCRQuirks.
func GHCR(t testing.TB) *Registry { return startDouble(t, NameGHCR, false, GHCRQuirks) }

// doubleFactories are the factories of the doubles, for All.
func doubleFactories() []Factory {
	var fs []Factory
	for _, d := range []struct {
		name   string
		del    bool
		double func(http.Handler) http.Handler
	}{
		{NameZot, true, ZotTags},
		{NameQuay, true, QuayTags},
		{NameHarbor, true, HarborQuirks},
		{NameGHCR, false, GHCRQuirks},
	} {
		fs = append(fs, Factory{Name: d.name, Delete: d.del, Start: func(t testing.TB) *Registry {
			t.Helper()
			return startDouble(t, d.name, d.del, d.double)
		}})
	}
	return fs
}

// startDouble starts distribution v3 behind double, as name.
func startDouble(t testing.TB, name string, del bool, double func(http.Handler) http.Handler) *Registry {
	t.Helper()
	r := startBinary(t, name, distributionBinary(t), Options{Delete: del}, configOptions{})
	closeFront, err := Front(r, name, double)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	return r
}

// subRequest makes a request of the double's own to next, with r's
// credentials.
func subRequest(next http.Handler, r *http.Request, method, target string) *httptest.ResponseRecorder {
	sub := httptest.NewRequestWithContext(r.Context(), method, target, nil)
	sub.Host = r.Host
	if a := r.Header.Get("Authorization"); a != "" {
		sub.Header.Set("Authorization", a)
	}
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, sub)
	return rec
}

func writeError(w http.ResponseWriter, status int, code, message string, detail any) {
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

// Front puts a double (ZotTags, HideTags, ...) in front of registry r
// (StartFront), and makes r's URL and Host the front's, and its Name
// name; Stop and Restart stop and start r behind the front, which lives
// until closeFront is called.
func Front(r *Registry, name string, double func(http.Handler) http.Handler) (closeFront func(), err error) {
	host, closeFront, err := StartFront(r.URL, double, newLogger(r.logFile))
	if err != nil {
		return nil, err
	}
	r.Name, r.Host, r.URL = name, host, "http://"+host
	return closeFront, nil
}

// StartFront serves double in front of the registry at backend, on a free
// port of 127.0.0.1, and returns its host:port. The proxy keeps the
// client's Host header, so that the absolute upload locations the
// registry hands out point back at the front.
func StartFront(backend string, double func(http.Handler) http.Handler, errorLog *log.Logger) (host string, closeFront func(), err error) {
	target, err := url.Parse(backend)
	if err != nil {
		return "", nil, err
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1,
		ErrorLog:      errorLog,
		// A registry that is down refuses connections; a 502 from the
		// front would be a registry that answers. Hanging up without an
		// answer is the closest a front that stays up can come.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errorLog != nil {
				errorLog.Printf("front: %s %s: %v: hanging up", r.Method, r.URL.Path, err)
			}
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return
				}
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: double(proxy), ErrorLog: errorLog}}
	srv.Start()
	return ln.Addr().String(), func() {
		srv.CloseClientConnections()
		srv.Close()
	}, nil
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
