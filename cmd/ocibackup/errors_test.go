package main_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestLocationErrors: a store that cannot be used is refused with a clear
// one-line error and a non-zero exit, before any key is derived.
func TestLocationErrors(t *testing.T) {
	t.Parallel()
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	// A web server that is not a registry: 404 on /v2/.
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	notOCI := strings.TrimPrefix(web.URL, "http://")

	e := newEnv(t).with("OCIBACKUP_PASSPHRASE", passphrase)
	for _, tc := range []struct {
		name string
		code int
		want []string
		args []string
	}{
		{"no location", 2, []string{"no store given", "-at", "OCIBACKUP_LOCATION"}, []string{"ls"}},
		{"no scheme", 2, []string{"localhost:5000/x", "must start with oci://"}, []string{"-at", "localhost:5000/x", "ls"}},
		{"other scheme", 2, []string{"must start with oci://"}, []string{"-at", "https://localhost:5000/x", "backup", "."}},
		{"no path", 2, []string{"repository path is required"}, []string{"-at", "oci://" + closed, "ls"}},
		{"uppercase", 2, []string{"must be lowercase"}, []string{"-at", "oci://" + closed + "/Team", "ls"}},
		{"unknown option", 2, []string{"unknown key", "colour"}, []string{"-at", "oci://" + closed + "/x", "-o", "colour=blue", "ls"}},
		{"unreachable", 1, []string{closed, "connection refused"}, []string{"-at", "oci://" + closed + "/x", "ls"}},
		{"unreachable create", 1, []string{closed, "connection refused"}, []string{"-at", "oci://" + closed + "/x", "create"}},
		{"not a registry", 1, []string{notOCI, "is it a registry?"}, []string{"-at", "oci://" + notOCI + "/x", "ls"}},
		{"not a registry create", 1, []string{notOCI, "is it a registry?"}, []string{"-at", "oci://" + notOCI + "/x", "create"}},
		{"no named store", 1, []string{"no store named", "nobody"}, []string{"-at", "@nobody", "ls"}},
		{"unknown command", 2, []string{"unknown command", "frob"}, []string{"frob"}},
		{"bad flag", 2, []string{"backup", "-frob"}, []string{"backup", "-frob", "."}},
		{"option without value", 2, []string{"invalid value", "novalue", "key=value"}, []string{"-at", "oci://" + closed + "/x", "-o", "novalue", "ls"}},
		{"bad option value", 2, []string{"concurrency"}, []string{"-at", "oci://" + closed + "/x", "-o", "concurrency=lots", "ls"}},
		{"store add bad option", 2, []string{"store add", "colour"}, []string{"store", "add", "x", "oci://" + closed + "/x", "colour=blue"}},
		{"empty backup path", 2, []string{"backup", "empty", "."}, []string{"-at", "oci://" + closed + "/x", "backup", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := *e
			e.t = t
			r := e.fails(tc.code, tc.want, tc.args...)
			if strings.Contains(r.stderr, "ocibackup: ocibackup:") {
				t.Errorf("the program's name twice: %s", r)
			}
		})
	}
}

// TestHelpFlag: -h, -help and --help, before the command or among its
// options, show the usage or the command's synopsis on stdout and exit 0,
// as 'ocibackup help [COMMAND]' does.
func TestHelpFlag(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "Usage: ocibackup [global options] COMMAND"},
		{[]string{"--help"}, "Usage: ocibackup [global options] COMMAND"},
		{[]string{"-at", "oci://127.0.0.1:1/x", "-help", "ls"}, "Usage: ocibackup [global options] COMMAND"},
		{[]string{"backup", "-h"}, "Usage: ocibackup [global options] backup "},
		{[]string{"restore", "latest", "--help"}, "Usage: ocibackup [global options] restore "},
		{[]string{"store", "add", "-h"}, "Usage: ocibackup [global options] store "},
	} {
		r := e.run(tc.args...)
		if r.code != 0 || !strings.Contains(r.stdout, tc.want) || r.stderr != "" {
			t.Errorf("%q: want exit 0, %q on stdout and nothing on stderr; %s", tc.args, tc.want, r)
		}
	}
}

// TestRestoreTarget: a restore target that exists and is not empty is
// refused before the store is opened.
func TestRestoreTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t).with("OCIBACKUP_LOCATION", "oci://127.0.0.1:1/never/opened")
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "precious"), []byte("do not touch"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.fails(1, []string{"not empty", full, "-force"}, "restore", "1234abcd", full)
	file := filepath.Join(full, "precious")
	e.fails(1, []string{"not a directory", file}, "restore", "1234abcd", file)
	if b, err := os.ReadFile(file); err != nil || string(b) != "do not touch" {
		t.Errorf("the target was touched: %q, %v", b, err)
	}
}

// TestUnlistedBackup: on a registry that accepts a backup and does not
// list it back, backup and check fail, saying so; on a store that holds
// nothing, check says there is nothing to check.
func TestUnlistedBackup(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	closeFront, err := registrytest.Front(reg, "hides-states", registrytest.HideTags("state-"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	e := storeEnv(t, reg, "team/backups")
	src := writeTree(t, 3, 1<<20)
	e.ok("create")
	if r := e.ok("check"); !strings.Contains(r.stdout, "no snapshot to check: the store holds none") {
		t.Errorf("check of an empty store says: %s", r)
	}
	e.fails(1, []string{"the registry accepted snapshot ", "does not list it back", "nothing is lost, but the store cannot read it"}, "backup", src)
	e.fails(1, []string{"listing and its objects disagree", "lists no snapshot, but "}, "check")
}
