package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// slowProxy is a reverse proxy in front of a registry that streams blob
// upload bodies at a fixed rate, and says when one is under way: a backup
// through it can be interrupted in the middle of a packfile upload.
type slowProxy struct {
	Host      string
	rate      int           // bytes per second
	uploading chan struct{} // closed once an upload body passed uploadMark
	once      sync.Once
	srv       *http.Server
}

const uploadMark = 1 << 20

func newSlowProxy(t *testing.T, registry string, rate int) *slowProxy {
	target, err := url.Parse(registry)
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{rate: rate, uploading: make(chan struct{})}
	// The Host header is left as the client sent it, so that the upload
	// URLs the registry hands out point at the proxy.
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = nil
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		w.WriteHeader(http.StatusBadGateway)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodPatch || r.Method == http.MethodPut) && strings.Contains(r.URL.Path, "/blobs/uploads/") {
			r.Body = &slowBody{ReadCloser: r.Body, p: p, start: time.Now()}
		}
		rp.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.Host = ln.Addr().String()
	p.srv = srv
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

type slowBody struct {
	io.ReadCloser
	p     *slowProxy
	n     int64
	start time.Time
}

func (b *slowBody) Read(buf []byte) (int, error) {
	if len(buf) > 32<<10 {
		buf = buf[:32<<10]
	}
	n, err := b.ReadCloser.Read(buf)
	b.n += int64(n)
	if b.n >= uploadMark {
		b.p.once.Do(func() { close(b.p.uploading) })
	}
	// Hold the bytes until the rate allows them.
	due := b.start.Add(time.Duration(float64(b.n) / float64(b.p.rate) * float64(time.Second)))
	time.Sleep(time.Until(due))
	return n, err
}

// TestInterruptedBackup: a backup interrupted (SIGINT) in the middle of a
// packfile upload exits 130 and leaves nothing a later backup or check
// trips on: no snapshot, no lock, no tag on a partial blob. The next
// backup and a check of it succeed.
func TestInterruptedBackup(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	proxy := newSlowProxy(t, reg.URL, 4<<20)
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src, 7, 6, 4<<20) // 24 MiB: about 6 s of upload through the proxy

	direct := "oci://" + reg.Host + "/interrupted/store"
	slow := "oci://" + proxy.Host + "/interrupted/store"
	e := newEnv(t)
	e.ok("-at", direct, "create", "-no-encryption")

	// The backup, through the proxy; SIGINT once a packfile is uploading.
	b := startUploading(t, e, proxy, "-at", slow, "-o", "concurrency=2", "backup", src)
	cmd, exited, stdout, stderr := b.cmd, b.exited, b.stdout, b.stderr
	interrupted := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the backup did not stop within 30s of SIGINT\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	t.Logf("the backup stopped %v after SIGINT\nstderr:\n%s", time.Since(interrupted).Round(time.Millisecond), stderr)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("the interrupted backup exited with %v, want 130\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	if !strings.Contains(stderr.String(), "interrupted") || !strings.Contains(stderr.String(), "nothing was committed") {
		t.Errorf("the interrupted backup does not say what happened:\n%s", stderr)
	}
	if strings.Contains(stderr.String(), "kloset:") {
		t.Errorf("the interrupted backup shows Kloset's noise:\n%s", stderr)
	}

	// Nothing committed, the lock removed, no tag on a partial blob.
	if r := e.ok("-at", direct, "ls"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("the interrupted backup left a snapshot: %s", r)
	}
	if r := e.ok("-at", direct, "info"); !strings.Contains(r.stdout, " 0 locks") {
		t.Errorf("the interrupted backup left a lock: %s", r)
	}
	checkTags(t, reg.URL, "interrupted/store")

	// The next backup, and a check of it.
	r := e.ok("-at", direct, "backup", src)
	id := snapshotID(t, r)
	if !strings.Contains(r.stdout, "6 files, 24 MiB") {
		t.Errorf("the backup after the interrupted one: %s", r)
	}
	if r := e.ok("-at", direct, "check", id); !strings.Contains(r.stdout, "snapshot "+id+": ok: 6 files, 24 MiB verified") {
		t.Errorf("check: %s", r)
	}
	checkTags(t, reg.URL, "interrupted/store")
}

// uploadingBackup is an ocibackup command running through a slowProxy.
type uploadingBackup struct {
	cmd            *exec.Cmd
	exited         chan error
	stdout, stderr *bytes.Buffer
}

// startUploading starts ocibackup with args and returns once an upload
// through proxy is under way.
func startUploading(t *testing.T, e *env, proxy *slowProxy, args ...string) *uploadingBackup {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	t.Cleanup(cancel)
	b := &uploadingBackup{cmd: e.command(ctx, args...), exited: make(chan error, 1), stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.exited <- b.cmd.Wait() }()
	select {
	case <-proxy.uploading:
	case err := <-b.exited:
		t.Fatalf("the backup ended before any upload was under way (%v)\nstdout:\n%s\nstderr:\n%s", err, b.stdout, b.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("no upload under way after 30s\nstdout:\n%s\nstderr:\n%s", b.stdout, b.stderr)
	}
	return b
}

// checkTags fails t unless every object tag of repo names a manifest
// whose blob is whole in the registry.
func checkTags(t *testing.T, registry, repo string) {
	t.Helper()
	var list struct {
		Tags []string `json:"tags"`
	}
	getJSON(t, registry+"/v2/"+repo+"/tags/list?n=10000", &list)
	kinds := map[string]int{}
	for _, tag := range list.Tags {
		kind, _, _ := strings.Cut(tag, "-")
		kinds[kind]++
		var m struct {
			Layers []struct {
				Digest string `json:"digest"`
				Size   int64  `json:"size"`
			} `json:"layers"`
		}
		getJSON(t, registry+"/v2/"+repo+"/manifests/"+tag, &m)
		for _, l := range m.Layers {
			resp, err := http.Head(registry + "/v2/" + repo + "/blobs/" + l.Digest)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ContentLength != l.Size {
				t.Errorf("tag %s: blob %s: %s, %d bytes, want 200 and %d bytes", tag, l.Digest, resp.Status, resp.ContentLength, l.Size)
			}
		}
	}
	if kinds["lock"] != 0 {
		t.Errorf("%d lock(s) left in the registry", kinds["lock"])
	}
	t.Logf("tags of %s: %v", repo, kinds)
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// TestRegistryDiesMidBackup: when the registry goes away in the middle of
// a packfile upload (its connections cut, new ones refused), the backup
// fails with one line that says so first, then what to do, and nothing
// is committed.
func TestRegistryDiesMidBackup(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	proxy := newSlowProxy(t, reg.URL, 4<<20)
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src, 8, 6, 4<<20)

	e := newEnv(t)
	slow := "oci://" + proxy.Host + "/dies/store"
	e.ok("-at", "oci://"+reg.Host+"/dies/store", "create", "-no-encryption")
	b := startUploading(t, e, proxy, "-at", slow, "-o", "concurrency=2", "backup", src)
	exited, stderr := b.exited, b.stderr
	proxy.srv.Close()
	var err error
	select {
	case err = <-exited:
	case <-time.After(runTimeout):
		t.Fatalf("the backup did not stop within %v of the registry's end\nstderr:\n%s", runTimeout, stderr)
	}
	t.Logf("stderr:\n%s", stderr)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("the backup exited with %v, want 1\nstderr:\n%s", err, stderr)
	}
	// The error first; a warning of what closing found (the backup's
	// lock, which the registry could not take back) may follow.
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "ocibackup: warning: ") {
			t.Errorf("more than the error on stderr: %q", l)
		}
	}
	msg := lines[0]
	// The cause first: what happened to the registry, before what the
	// store was doing (put packfile-... to ...).
	if !regexp.MustCompile(`^ocibackup: (cannot reach registry|the connection to registry) ` + regexp.QuoteMeta(proxy.Host) + ` `).MatchString(msg) {
		t.Errorf("the error does not start with the registry's failure: %s", msg)
	}
	for _, want := range []string{"nothing was committed", "run it again once the registry answers"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "context canceled") {
		t.Errorf("the error blames a cancellation, not the registry: %s", msg)
	}
}
