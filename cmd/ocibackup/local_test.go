package main_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLocalRegistry: oci://local needs nothing installed: ocibackup runs a
// registry (distribution, in-process) on a free loopback port for each
// command, with the data in the user's data directory. 'ocibackup
// registry' serves the same data, and oci://local then goes through it. A
// named store can point at it.
func TestLocalRegistry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := writeTree(t, 2, 1<<20)
	data := filepath.Join(e.home, ".local", "share", "ocibackup", "registry")

	e.ok("-at", "oci://local/my/backups", "create", "-no-encryption")
	r := e.ok("-at", "oci://local/my/backups", "backup", src)
	id := snapshotID(t, r)
	if _, err := os.Stat(filepath.Join(data, "docker", "registry", "v2", "repositories", "my", "backups")); err != nil {
		t.Fatalf("the local registry keeps no data in %s: %v", data, err)
	}
	// Messages name oci://local, not the port of the moment.
	e.fails(1, []string{"already exists", "oci://local/my/backups"}, "-at", "oci://local/my/backups", "create", "-no-encryption")

	// A named store on it.
	e.ok("store", "add", "mine", "oci://local/my/backups")
	if r := e.ok("store", "ls"); !regexp.MustCompile(`(?m)^mine\s+oci://local/my/backups\s*$`).MatchString(r.stdout) {
		t.Errorf("store ls: %s", r)
	}
	if r := e.ok("-at", "@mine", "ls"); !strings.Contains(r.stdout, id) {
		t.Errorf("ls -at @mine: %s", r)
	}
	r = e.run("store", "add", "secret", "oci://127.0.0.1:5000/x", "username=u", "password=p")
	if r.code != 0 || !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, "password") {
		t.Errorf("store add with a password does not warn; %s", r)
	}
	if r := e.ok("store", "ls"); !strings.Contains(r.stdout, "password=********") || strings.Contains(r.stdout, "password=p") {
		t.Errorf("store ls shows the password: %s", r)
	}
	fi, err := os.Stat(filepath.Join(e.home, ".config", "ocibackup", "stores.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("stores.json has mode %v, want 0600", fi.Mode().Perm())
	}
	e.ok("store", "rm", "secret")
	if r := e.ok("store", "ls"); strings.Contains(r.stdout, "secret") {
		t.Errorf("store rm did not remove it: %s", r)
	}

	// The registry command, on the same data, on a port of its choosing.
	srv := serveRegistry(t, e)
	addr := srv.addr
	// oci://local goes through it (it does not wait for the storage),
	// and so does its address.
	if r := e.ok("-at", "oci://local/my/backups", "ls"); !strings.Contains(r.stdout, id) || strings.Contains(r.stderr, "waiting") {
		t.Errorf("ls oci://local with the registry running: %s", r)
	}
	if r := e.ok("-at", "oci://"+addr+"/my/backups", "ls", id+":nested/deeper"); !strings.Contains(r.stdout, "script.sh") {
		t.Errorf("ls through the registry command: %s", r)
	}
	dest := filepath.Join(t.TempDir(), "restored")
	e.ok("-at", "oci://"+addr+"/my/backups", "restore", id, dest)
	sameTree(t, src, dest)

	// SIGINT stops it, exit 0.
	srv.stop()
	// The data outlive it.
	if r := e.ok("-at", "oci://local/my/backups", "check", id); !strings.Contains(r.stdout, "ok") {
		t.Errorf("check after the registry stopped: %s", r)
	}
}

// TestRegistrySuggestion: 'ocibackup registry' on a wildcard address
// suggests a location that works from this machine, and it does.
func TestRegistrySuggestion(t *testing.T) {
	t.Parallel()
	e := newEnv(t).with("OCIBACKUP_PASSPHRASE", passphrase)
	srv := serveRegistry(t, e, "-addr", "0.0.0.0:0", "-dir", t.TempDir())
	args := strings.Fields(srv.try)
	if len(args) < 2 || args[0] != "ocibackup" || strings.Contains(srv.try, "0.0.0.0") {
		t.Fatalf("the suggestion %q names no location this machine can reach", srv.try)
	}
	e.ok(args[1:]...)
}

// server is an 'ocibackup registry' running for a test.
type server struct {
	t      *testing.T
	addr   string // where it listens
	try    string // the command it suggests trying
	cmd    *exec.Cmd
	exited chan error
	cancel context.CancelFunc
	once   sync.Once
}

// serveRegistry starts 'ocibackup registry args...' (by default on e's
// default storage, on a free loopback port) and returns once it has said
// where it listens and what to try; it is stopped at the end of t.
func serveRegistry(t *testing.T, e *env, args ...string) *server {
	t.Helper()
	if len(args) == 0 {
		args = []string{"-addr", "127.0.0.1:0"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*runTimeout)
	srv := &server{t: t, cmd: e.command(ctx, append([]string{"registry"}, args...)...), exited: make(chan error, 1), cancel: cancel}
	out, err := srv.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.cmd.Stderr = srv.cmd.Stdout
	if err := srv.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	lines := bufio.NewScanner(out)
	ready := make(chan [2]string, 1)
	listening := regexp.MustCompile(`listening on http://([^,]+),`)
	suggests := regexp.MustCompile(`^Try: (.*) \(Ctrl-C`)
	go func() {
		var addr string
		for lines.Scan() {
			if m := listening.FindStringSubmatch(lines.Text()); m != nil {
				addr = m[1]
			}
			if m := suggests.FindStringSubmatch(lines.Text()); m != nil {
				ready <- [2]string{addr, m[1]}
			}
		}
		io.Copy(io.Discard, out)
		srv.exited <- srv.cmd.Wait()
	}()
	select {
	case r := <-ready:
		srv.addr, srv.try = r[0], r[1]
		t.Logf("ocibackup registry listens on %s and suggests %s", srv.addr, srv.try)
	case err := <-srv.exited:
		t.Fatalf("ocibackup registry exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("ocibackup registry did not say it listens within 20s")
	}
	return srv
}

// stop stops the registry with SIGINT, and fails the test unless it
// exits with status 0.
func (srv *server) stop() {
	srv.once.Do(func() {
		defer srv.cancel()
		t := srv.t
		if err := srv.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-srv.exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Errorf("ocibackup registry exited with %v after SIGINT, want 0", err)
			} else if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("ocibackup registry did not stop within 20s of SIGINT")
		}
	})
}
