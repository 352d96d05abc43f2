package registrytest

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// kinds is every factory of All, plus docker-registry without delete.
func kinds(t *testing.T) []Factory {
	return append(All(t), Factory{
		Name:   NameDockerRegistry + "-nodelete",
		Delete: false,
		Start: func(t testing.TB) *Registry {
			return DockerRegistry(t, Options{Delete: false})
		},
	})
}

func TestRegistries(t *testing.T) {
	for _, k := range kinds(t) {
		t.Run(k.Name, func(t *testing.T) {
			t.Parallel()
			r := k.Start(t)
			if r.Delete != k.Delete {
				t.Errorf("Registry.Delete = %t, factory says %t", r.Delete, k.Delete)
			}
			if got := do(t, http.MethodGet, r.URL+"/v2/"); got != http.StatusOK {
				t.Fatalf("GET /v2/: %d, want 200", got)
			}

			digest := pushEmpty(t, r, "test/empty:v1")
			manifest := r.URL + "/v2/test/empty/manifests/" + digest
			if got := do(t, http.MethodHead, manifest); got != http.StatusOK {
				t.Fatalf("HEAD manifest after push: %d, want 200", got)
			}
			if !hasFiles(t, r.Dir) {
				t.Errorf("nothing stored in %s", r.Dir)
			}

			got := do(t, http.MethodDelete, manifest)
			want := http.StatusMethodNotAllowed
			if k.Delete {
				want = http.StatusAccepted
			}
			if got != want {
				t.Fatalf("DELETE manifest: %d, want %d", got, want)
			}
			want = http.StatusOK
			if k.Delete {
				want = http.StatusNotFound
			}
			if got := do(t, http.MethodHead, manifest); got != want {
				t.Fatalf("HEAD manifest after DELETE: %d, want %d", got, want)
			}
		})
	}
}

func TestRestart(t *testing.T) {
	for _, k := range All(t) {
		t.Run(k.Name, func(t *testing.T) {
			t.Parallel()
			r := k.Start(t)
			url := r.URL
			digest := pushEmpty(t, r, "test/restart:v1")
			manifest := r.URL + "/v2/test/restart/manifests/" + digest

			if err := r.Stop(); err != nil {
				t.Fatal(err)
			}
			if r.Running() {
				t.Error("Running after Stop")
			}
			resp, err := http.Get(r.URL + "/v2/")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("a stopped registry answered %s", resp.Status)
			}

			if err := r.Restart(); err != nil {
				t.Fatal(err)
			}
			if r.URL != url {
				t.Fatalf("URL changed on Restart: %s, was %s", r.URL, url)
			}
			if got := do(t, http.MethodHead, manifest); got != http.StatusOK {
				t.Fatalf("HEAD manifest after restart: %d, want 200", got)
			}
			// Restart of a running registry kills it and starts it again.
			if err := r.Restart(); err != nil {
				t.Fatal(err)
			}
			if got := do(t, http.MethodHead, manifest); got != http.StatusOK {
				t.Fatalf("HEAD manifest after second restart: %d, want 200", got)
			}
		})
	}
}

// do sends a request without a body and returns the status.
func do(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// pushEmpty pushes go-containerregistry's empty image and returns the
// manifest's digest.
func pushEmpty(t *testing.T, r *Registry, repoTag string) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, empty.Image); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := empty.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func hasFiles(t *testing.T, dir string) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		found = found || d.Type().IsRegular()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
