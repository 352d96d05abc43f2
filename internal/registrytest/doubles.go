package registrytest

import (
	"net/http"
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
			writeZotError(w, http.StatusBadRequest, "UNSUPPORTED", "unsupported digest "+ref, nil)
			return
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/tags/list"):
			rec := subRequest(next, r, "GET", r.URL.RequestURI())
			if rec.Code == http.StatusNotFound {
				name := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
				writeZotError(w, http.StatusNotFound, "NOT_FOUND", "repository "+name+" not found", nil)
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
			writeZotError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "The operation is unsupported.", nil)
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
