package main_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestSecretsNotRecorded backs up to a plaintext, uncompressed store with
// the registry password on the command line, to an encrypted one with a
// key file, and to a plaintext one with a registry token on the command
// line, then looks for the password, the passphrase and the token in
// every file of the registries' storage and of the user's home (Kloset's
// cache): a snapshot records how it was made, and must not record a
// secret with it.
func TestSecretsNotRecorded(t *testing.T) {
	t.Parallel()
	const password = "pw-Zq81xVv0-never-stored"
	reg := registrytest.DistributionAuth(t, registrytest.AuthOptions{Users: map[string]string{"me": password}})
	loc := "oci://" + reg.Host + "/team/secrets"
	e := newEnv(t)
	creds := []string{"-at", loc, "-o", "username=me", "-o", "password=" + password}
	e.ok(append(creds, "create", "-no-encryption", "-no-compression")...)
	e.ok(append(creds, "backup", writeTree(t, 7, 1<<20))...)
	e.ok(append(creds, "ls")...)

	// An encrypted store, its passphrase in a key file.
	const passphrase = "pass-Kq72-never-stored"
	keyfile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyfile, []byte(passphrase), 0o600); err != nil {
		t.Fatal(err)
	}
	creds = []string{"-at", loc + "-encrypted", "-o", "username=me", "-o", "password=" + password, "-keyfile", keyfile}
	e.ok(append(creds, "create")...)
	e.ok(append(creds, "backup", writeTree(t, 8, 1<<20))...)

	// A store on a registry with token authentication, reached with a
	// token given as is on the command line.
	ca := registrytest.NewCA(t)
	ts := registrytest.NewTokenServer(t, ca, map[string]string{"me": password})
	treg := registrytest.DistributionAuth(t, registrytest.AuthOptions{CA: ca, Token: ts})
	token := issueToken(t, ca, ts, "me", password, "team/token")
	creds = []string{"-at", "oci://" + treg.Host + "/team/token", "-o", "ca_file=" + ca.CertPath, "-o", "token=" + token}
	e.ok(append(creds, "create", "-no-encryption", "-no-compression")...)
	e.ok(append(creds, "backup", writeTree(t, 9, 1<<20))...)
	e.ok(append(creds, "ls")...)

	for _, dir := range []string{reg.Dir, treg.Dir, e.home} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, secret := range []string{password, passphrase, token} {
				if bytes.Contains(b, []byte(secret)) {
					t.Errorf("%s holds a secret (%.8s…)", path, secret)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// issueToken asks ts, as user, for a token that lets its holder pull, push
// and delete in repository repo, as a user would before giving it as is.
func issueToken(t *testing.T, ca *registrytest.CA, ts *registrytest.TokenServer, user, password, repo string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.URL+"?"+url.Values{
		"service": {ts.Service},
		"scope":   {"repository:" + repo + ":pull,push,delete"},
	}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	resp, err := ca.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || answer.Token == "" {
		t.Fatalf("the token server answered %s: %v", resp.Status, err)
	}
	return answer.Token
}
