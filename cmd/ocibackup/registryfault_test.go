package main_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestRegistrySaysWhy: a registry that fails a write says why in its error
// body's detail, behind a generic message (distribution: 500 UNKNOWN,
// "unknown error"); the error shows the detail. The storage's blob
// directory replaced by a file makes distribution fail as a full disk
// does, root or not.
func TestRegistrySaysWhy(t *testing.T) {
	t.Parallel()
	reg, e, src := createdStore(t, "why/store", 10, 1, 1<<20)
	blobs := filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs")
	if err := os.RemoveAll(blobs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobs, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("backup", src)
	t.Logf("%s", r)
	if r.code != 1 || !strings.Contains(r.stderr, "not a directory") {
		t.Errorf("the error does not say why the registry failed; %s", r)
	}
}

// TestRedirectUnresolvable: a registry that sends its blob downloads to a
// host this machine cannot resolve: the error starts with that host, and
// says the registry redirected there, not that the registry did not
// answer or that the store's location is wrong.
func TestRedirectUnresolvable(t *testing.T) {
	t.Parallel()
	reg, e, src := createdStore(t, "redirect/store", 11, 1, 1<<20)
	e.ok("backup", src)

	front, closeFront, err := registrytest.StartFront(reg.URL, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				http.Redirect(w, r, "https://blobs.example.invalid"+r.URL.Path+"?sig=secret", http.StatusTemporaryRedirect)
				return
			}
			next.ServeHTTP(w, r)
		})
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	r := e.fails(1, []string{"registry " + front + " redirected GET", "reachable from this machine"},
		"-at", "oci://"+front+"/redirect/store", "restore", "latest", filepath.Join(t.TempDir(), "r"))
	if !strings.Contains(r.stderr, "ocibackup: cannot resolve blobs.example.invalid") {
		t.Errorf("the error does not start with the redirect's host; %s", r)
	}
	if strings.Contains(r.stderr, "no answer") || strings.Contains(r.stderr, "location") || strings.Contains(r.stderr, "secret") {
		t.Errorf("the error blames the registry's silence or the location, or shows the query; %s", r)
	}
}

// TestRegistryFullMidUpload: a registry whose disk fills during an upload
// answers 500 with why and hangs up while the body is still coming, as
// distribution does: the error shows why, not that the connection broke.
func TestRegistryFullMidUpload(t *testing.T) {
	t.Parallel()
	reg, e, src := createdStore(t, "full/store", 12, 2, 8<<20)
	const why = "write /var/lib/registry/docker/registry/v2/repositories/full/store/_uploads/x/data: no space left on device"
	front, closeFront, err := registrytest.StartFront(reg.URL, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Bodies of more than a few MiB: packfiles, whose upload the
			// answer cuts short.
			if (r.Method != http.MethodPatch && r.Method != http.MethodPut) || (r.ContentLength >= 0 && r.ContentLength < 4<<20) {
				next.ServeHTTP(w, r)
				return
			}
			// A part of the body, then the answer, and the connection
			// closed on the rest, unread: the client's next write meets
			// a reset.
			io.CopyN(io.Discard, r.Body, 1<<20)
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			body := fmt.Sprintf(`{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":%q}]}`, why)
			fmt.Fprintf(buf, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			buf.Flush()
			conn.Close()
		})
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	r := e.fails(1, []string{"failed (500 UNKNOWN: unknown error (" + why + ")): try again once that is fixed", "nothing was committed"},
		"-at", "oci://"+front+"/full/store", "backup", src)
	if strings.Contains(r.stderr, "overloaded") || strings.Contains(r.stderr, "once the registry answers") {
		t.Errorf("a registry that said why is taken for one that is overloaded or silent; %s", r)
	}
}
