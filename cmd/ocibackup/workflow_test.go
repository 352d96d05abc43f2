package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

const passphrase = "correct horse battery staple"

// TestWorkflow is a user's day on a real registry (distribution v3, with
// deletes): create an encrypted store, back up, list, read, restore whole
// and in part, back up again, check, describe, remove; a wrong
// passphrase, a key file and a named store.
func TestWorkflow(t *testing.T) {
	t.Parallel()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	loc := "oci://" + reg.Host + "/team/backups"
	e := newEnv(t).with("OCIBACKUP_LOCATION", loc, "OCIBACKUP_PASSPHRASE", passphrase)
	src := writeTree(t, 1, 12<<20)

	r := e.ok("create")
	if !strings.Contains(r.stdout, "created store") || !strings.Contains(r.stdout, loc) {
		t.Errorf("create says: %s", r)
	}
	e.fails(1, []string{"already exists", loc}, "create")

	// Backup, and the snapshot in the list.
	r = e.ok("backup", src)
	id := snapshotID(t, r)
	first := regexp.MustCompile(`: 8 files, (\S+ \S+); read (\S+ \S+), stored (\S+ \S+) in \d+ packfile\(s\) and \d+ state\(s\) \([^()]+\) in \S+$`).FindStringSubmatch(strings.TrimSpace(r.stdout))
	if first == nil || first[1] != first[2] || first[1] != "14 MiB" {
		t.Fatalf("the backup summary lacks files, bytes read and stored, time: %s", r)
	}
	r = e.ok("ls")
	if !regexp.MustCompile(`(?m)^` + id + `\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\S+ \S+\s+` + regexp.QuoteMeta(src) + `$`).MatchString(r.stdout) {
		t.Errorf("ls does not list %s (id, date, size, path); %s", id, r)
	}

	// Files: the snapshot's root is the directory backed up.
	r = e.ok("ls", id)
	for _, name := range []string{"README.txt", "empty", "nested", "compressible", "link-to-file -> README.txt", "link-to-dir -> nested/deeper"} {
		if !regexp.MustCompile(`(?m)\s` + regexp.QuoteMeta(name) + `$`).MatchString(r.stdout) {
			t.Errorf("ls %s does not list %q; %s", id, name, r)
		}
	}
	r = e.ok("ls", "-r", id+":nested")
	if !strings.Contains(r.stdout, src+"/nested/deeper/script.sh") || !strings.Contains(r.stdout, "-rwxr-xr-x") {
		t.Errorf("ls -r %s:nested does not list the script with its mode; %s", id, r)
	}
	if !regexp.MustCompile(`(?m)^-rw-r--r--\s+\S+\s+\S+\s+15\s.*` + regexp.QuoteMeta(src+"/nested/data.json") + `$`).MatchString(r.stdout) {
		t.Errorf("ls -r %s:nested does not give the size of data.json; %s", id, r)
	}
	random, err := os.ReadFile(filepath.Join(src, "nested/random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if r = e.ok("cat", id+":"+src+"/nested/random.bin"); r.stdout != string(random) {
		t.Errorf("cat of the random file returned %d bytes, not the file", len(r.stdout))
	}
	e.fails(1, []string{"no such path", "nope"}, "cat", id+":nope")
	e.fails(1, []string{"no such snapshot", "deadbeef"}, "ls", "deadbeef")

	// Restore whole: the same tree.
	dest := filepath.Join(t.TempDir(), "restored")
	r = e.ok("restore", id, dest)
	if !strings.Contains(r.stdout, "restored 8 files") {
		t.Errorf("restore says: %s", r)
	}
	sameTree(t, src, dest)
	// A target that exists and is not empty is refused, unless -force.
	e.fails(1, []string{"not empty", dest, "-force"}, "restore", id, dest)
	if err := os.WriteFile(filepath.Join(dest, "README.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("restore", "-force", id, dest)
	sameTree(t, src, dest)
	// One file, into a new directory.
	one := filepath.Join(t.TempDir(), "one")
	e.ok("restore", id+":nested/deeper/notes.md", one)
	if got := scan(t, one); len(got) != 1 || got["notes.md"].content != strings.Repeat("note\n", 1000) {
		t.Errorf("restoring one file gave %v", got)
	}

	// A second backup of the same tree stores next to nothing.
	r = e.ok("backup", src)
	id2 := snapshotID(t, r)
	// Nothing is read again; what is stored is the snapshot's index and
	// the random padding Kloset puts around every packfile (up to 1 MiB
	// each), far less than the first backup stored.
	if m := regexp.MustCompile(`read (\S+ \S+), stored (\S+ \S+) `).FindStringSubmatch(r.stdout); m == nil || m[1] != "0 B" || parseSize(t, m[2]) > parseSize(t, first[3])/2 {
		t.Errorf("the second backup read or stored too much (the first stored %s); %s", first[3], r)
	}

	// Check reads every chunk back.
	r = e.ok("check", id)
	if !strings.Contains(r.stdout, "snapshot "+id+": ok") {
		t.Errorf("check says: %s", r)
	}

	// The key file instead of the environment.
	keyfile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyfile, []byte(passphrase+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = e.with("OCIBACKUP_PASSPHRASE", "", "OCIBACKUP_LOCATION", "").ok("info", "-at", loc, "-keyfile", keyfile)
	for _, want := range []string{
		"Location:      " + loc,
		"Encryption:    AES256-GCM-SIV",
		"key derived from the passphrase with ARGON2ID",
		"Compression:   LZ4",
		"Chunking:      fastcdc",
		"Snapshots:     2",
		" 0 locks",
		"Stored:",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("info does not say %q; %s", want, r)
		}
	}
	if !regexp.MustCompile(`Objects: +[1-9]\d* packfiles?, [1-9]\d* states?, 0 locks`).MatchString(r.stdout) {
		t.Errorf("info does not count the objects; %s", r)
	}

	// rm: the snapshot is gone, the other stays.
	r = e.ok("rm", id)
	if !strings.Contains(r.stdout, "removed snapshot "+id) {
		t.Errorf("rm says: %s", r)
	}
	r = e.ok("ls")
	if strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, id2) {
		t.Errorf("after rm %s, ls lists: %s", id, r)
	}

	// A wrong passphrase, no passphrase.
	e.with("OCIBACKUP_PASSPHRASE", "not the passphrase").fails(1, []string{"wrong passphrase", loc}, "ls")
	e.with("OCIBACKUP_PASSPHRASE", "").fails(1, []string{"encrypted", "passphrase", "OCIBACKUP_PASSPHRASE", "-keyfile"}, "ls")
}
