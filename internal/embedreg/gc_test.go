package embedreg

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func push(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := random.Image(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func status(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestCollectServing: a serving registry collects on request: writes get
// 503 while it does (reads go on), the blobs of a deleted tag are swept
// and the registry says so at once (its blob cache is new), and the
// tagged image stays whole.
func TestCollectServing(t *testing.T) {
	r, err := Start(Options{Dir: t.TempDir(), Server: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	gone := push(t, r.Addr+"/gc/test:gone")
	kept := push(t, r.Addr+"/gc/test:kept")
	layers, err := gone.Layers()
	if err != nil {
		t.Fatal(err)
	}
	goneBlob, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	blobURL := r.URL() + "/v2/gc/test/blobs/" + goneBlob.String()
	if got := status(t, http.MethodHead, blobURL); got != http.StatusOK {
		t.Fatalf("HEAD of a pushed blob: %d", got)
	}
	if got := status(t, http.MethodDelete, r.URL()+"/v2/gc/test/manifests/gone"); got != http.StatusAccepted {
		t.Fatalf("DELETE of a tag: %d, want 202 (tag deletion enabled)", got)
	}

	// As during a collection: writes wait, reads go on.
	r.gate.writes.Lock()
	if got := status(t, http.MethodPost, r.URL()+"/v2/gc/test/blobs/uploads/"); got != http.StatusServiceUnavailable {
		t.Errorf("a write during a collection: %d, want 503", got)
	}
	if got := status(t, http.MethodGet, r.URL()+"/v2/gc/test/manifests/kept"); got != http.StatusOK {
		t.Errorf("a read during a collection: %d, want 200", got)
	}
	r.gate.writes.Unlock()

	resp, err := http.Post(r.URL()+CollectPath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("collect: %s", resp.Status)
	}
	if got := status(t, http.MethodHead, blobURL); got != http.StatusNotFound {
		t.Errorf("HEAD of a swept blob: %d, want 404", got)
	}
	ref, _ := name.ParseReference(r.Addr+"/gc/test:kept", name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := kept.Digest()
	if got, _ := img.Digest(); got != want {
		t.Fatalf("the kept image is %s, want %s", got, want)
	}
	if ls, _ := img.Layers(); len(ls) == 1 {
		rc, err := ls[0].Compressed()
		if err != nil {
			t.Fatalf("the kept image's layer: %v", err)
		}
		rc.Close()
	}
	if status(t, http.MethodPost, r.URL()+"/v2/gc/test/blobs/uploads/") != http.StatusAccepted {
		t.Error("writes are refused after the collection")
	}
}

// TestCollectPurgesUploads: a stopped registry's collection removes the
// uploads left unfinished (a backup killed in the middle of one), and
// keeps the images.
func TestCollectPurgesUploads(t *testing.T) {
	r, err := Start(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	push(t, r.Addr+"/gc/test:kept")
	resp, err := http.Post(r.URL()+"/v2/gc/test/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("starting an upload: %s", resp.Status)
	}
	if !strings.HasPrefix(loc, "http") {
		loc = r.URL() + loc
	}
	req, _ := http.NewRequest(http.MethodPatch, loc, strings.NewReader(strings.Repeat("x", 1<<20)))
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("sending part of an upload: %s", resp.Status)
	}
	uploads := filepath.Join(r.Dir, "docker", "registry", "v2", "repositories", "gc", "test", "_uploads")
	if n, _ := DirSize(uploads); n < 1<<20 {
		t.Fatalf("the unfinished upload holds %d bytes, want 1 MiB", n)
	}
	res, err := r.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := DirSize(uploads); n != 0 || res.Freed < 1<<20 {
		t.Errorf("after the collection the uploads hold %d bytes (freed %d), want 0 (1 MiB)", n, res.Freed)
	}
	r2, err := Start(Options{Dir: r.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := status(t, http.MethodGet, r2.URL()+"/v2/gc/test/manifests/kept"); got != http.StatusOK {
		t.Errorf("the image after the collection: %d", got)
	}
}
