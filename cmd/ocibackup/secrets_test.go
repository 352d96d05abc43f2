package main_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestSecretsNotRecorded backs up to a plaintext, uncompressed store with
// the registry password on the command line, and to an encrypted one with
// a key file, then looks for the password and the passphrase in every file
// of the registry's storage and of the user's home (Kloset's cache): a
// snapshot records how it was made, and must not record a secret with it.
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

	for _, dir := range []string{reg.Dir, e.home} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, secret := range []string{password, passphrase} {
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
