package main_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestRestoreSpecialFiles: a fifo and a socket are restored as such; a
// device file cannot be (the snapshot does not record which device it
// is): the restore lists it and exits 3, like a backup that missed paths.
func TestRestoreSpecialFiles(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	e := storeEnv(t, reg, "special")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(filepath.Join(src, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "plain.txt"), []byte("plain\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(src, "d", "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	// A socket's path must be short: made from a short working directory.
	l, err := net.Listen("unix", filepath.Join(src, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	want := map[string]os.FileMode{"d/fifo": os.ModeNamedPipe, "sock": os.ModeSocket}
	device := os.Geteuid() == 0
	if device {
		// As /dev/null: major 1, minor 3.
		if err := syscall.Mknod(filepath.Join(src, "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("not root: no device file to back up")
	}

	e.ok("create")
	id := snapshotID(t, e.ok("backup", src))
	dest := filepath.Join(t.TempDir(), "restored")
	if device {
		r := e.run("restore", id, dest)
		if r.code != 3 || !strings.Contains(r.stderr, "1 path(s) could not be restored") {
			t.Errorf("want exit 3 and the count of paths not restored; %s", r)
		}
		if !strings.Contains(r.stderr, "could not restore /null: a device file") || !strings.Contains(r.stderr, "does not record which device") {
			t.Errorf("the device file is not listed with its cause; %s", r)
		}
	} else {
		e.ok("restore", id, dest)
	}
	for name, typ := range want {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil || fi.Mode().Type() != typ {
			t.Errorf("%s restored as %v, %v; want %v", name, fi, err, typ)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dest, "d", "fifo")); err == nil && fi.Mode().Perm() != 0o640 {
		t.Errorf("the fifo's mode is %v, want 0640", fi.Mode().Perm())
	}
	if b, err := os.ReadFile(filepath.Join(dest, "plain.txt")); err != nil || string(b) != "plain\n" {
		t.Errorf("plain.txt: %q, %v", b, err)
	}
	if device {
		restoreAsNobody(t, e, id)
	}
}

// nobody is the user without privileges a restore runs as.
const nobody = 65534

// restoreAsNobody restores snapshot id as a user without privileges, in a
// home of its own: the fifo and the socket are made all the same (they
// need none), owned by that user; the device file is reported, exit 3.
func restoreAsNobody(t *testing.T, e *env, id string) {
	dir, err := os.MkdirTemp("", "ocibackup-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin, err := os.ReadFile(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.WriteFile(filepath.Join(dir, "ocibackup"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	u := e.with("HOME", home, "XDG_CONFIG_HOME", filepath.Join(home, ".config"), "XDG_CACHE_HOME", filepath.Join(home, ".cache"),
		"XDG_DATA_HOME", filepath.Join(home, ".local", "share"), "OCISTORE_CACHE_DIR", filepath.Join(home, "wazero"))
	dest := filepath.Join(home, "restored")
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "ocibackup"), "restore", id, dest)
	cmd.Env, cmd.Dir = u.environ(), home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "could not restore /null: a device file") {
		t.Fatalf("restore as nobody: %v, want exit 3 and the device file listed:\n%s", err, out)
	}
	for name, typ := range map[string]os.FileMode{"d/fifo": os.ModeNamedPipe, "sock": os.ModeSocket, "plain.txt": 0} {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil || fi.Mode().Type() != typ || fi.Sys().(*syscall.Stat_t).Uid != nobody {
			t.Errorf("restored as nobody: %s is %v, %v; want a %v of uid %d", name, fi, err, typ, nobody)
		}
	}
}

// TestRestorePaths: SNAP:PATH is taken from the directory backed up, with
// or without a leading slash, or as the full path on the machine backed
// up; SNAP:/ is the directory backed up, restored straight into DIR.
func TestRestorePaths(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	e := storeEnv(t, reg, "paths")
	src := filepath.Join(t.TempDir(), "Documents")
	for name, content := range map[string]string{"notes.txt": "notes\n", "sub/x.txt": "x\n"} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.ok("create")
	id := snapshotID(t, e.ok("backup", src))

	for _, p := range []string{"/notes.txt", "notes.txt", src + "/notes.txt"} {
		dest := filepath.Join(t.TempDir(), "r")
		e.ok("restore", id+":"+p, dest)
		if b, err := os.ReadFile(filepath.Join(dest, "notes.txt")); err != nil || string(b) != "notes\n" {
			t.Errorf("restore %s:%s: notes.txt %q, %v", id, p, b, err)
		}
		if r := e.ok("cat", id+":"+p); r.stdout != "notes\n" {
			t.Errorf("cat %s:%s: %q", id, p, r.stdout)
		}
	}
	for _, p := range []string{"/", "", src} {
		dest := filepath.Join(t.TempDir(), "r")
		ref := id
		if p != "" {
			ref += ":" + p
		}
		e.ok("restore", ref, dest)
		if b, err := os.ReadFile(filepath.Join(dest, "sub", "x.txt")); err != nil || string(b) != "x\n" {
			t.Errorf("restore %s into %s: sub/x.txt %q, %v (the tree is not straight under the target)", ref, dest, b, err)
		}
	}
	if r := e.ok("ls", id+":/sub"); !strings.Contains(r.stdout, "x.txt") {
		t.Errorf("ls %s:/sub does not list x.txt; %s", id, r)
	}
	e.fails(1, []string{"no such path", src + "/nope", "directory backed up"}, "cat", id+":/nope")
}
