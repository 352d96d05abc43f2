package host_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/host"
)

// TestGuestBuildIsReproducible builds the guest twice with the Makefile's
// command, into two directories: once in this checkout, and once from a
// copy of the module at another path with an empty build cache, so that
// every package (the standard library's included) is compiled again. Both
// must give the same bytes: the digest a plugin is published under can be
// rebuilt from source by anyone. In CI, where `make guest` ran first, the
// embedded guest must be that build too.
func TestGuestBuildIsReproducible(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	flags := makefileGuestFlags(t, filepath.Join(root, "Makefile"))
	for _, want := range []string{"-trimpath", "-buildmode=c-shared"} {
		if !strings.Contains(strings.Join(flags, " "), want) {
			t.Fatalf("the Makefile builds the guest without %s: %q", want, flags)
		}
	}

	copyDir := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum"} {
		copyFile(t, filepath.Join(root, f), filepath.Join(copyDir, f))
	}
	for _, d := range []string{"abi", "guest", "internal/location"} {
		copyTree(t, filepath.Join(root, d), filepath.Join(copyDir, d))
	}

	a := buildGuest(t, root, flags, filepath.Join(t.TempDir(), "a", "guest.wasm"), "")
	b := buildGuest(t, copyDir, flags, filepath.Join(t.TempDir(), "b", "guest.wasm"), t.TempDir())
	if sum(a) != sum(b) {
		t.Fatalf("two builds of the guest differ: %s (%d bytes, in %s) and %s (%d bytes, in %s)",
			sum(a), len(a), root, sum(b), len(b), copyDir)
	}
	t.Logf("guest: sha256:%s, %d bytes, built with %q", sum(a), len(a), flags)

	if os.Getenv("CI") == "true" && !bytes.Equal(a, host.EmbeddedGuest()) {
		t.Errorf("host/guest.wasm (sha256:%s) is not the build of ./guest (sha256:%s): `make guest` must run before the tests",
			sum(host.EmbeddedGuest()), sum(a))
	}
}

// makefileGuestFlags reads the go build flags of the Makefile's guest
// recipe: GOOS=wasip1 GOARCH=wasm $(GO) build FLAGS -o build/guest.wasm ./guest.
func makefileGuestFlags(t *testing.T, makefile string) []string {
	t.Helper()
	b, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\tGOOS=wasip1 GOARCH=wasm \$\(GO\) build (.*) -o build/guest\.wasm \./guest$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no guest build command in %s", makefile)
	}
	return shellWords(t, string(m[1]))
}

// shellWords splits s as the shell would, for words and single quotes.
func shellWords(t *testing.T, s string) []string {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case r == '"' || r == '\\' || r == '$':
			t.Fatalf("the guest build flags %q need a real shell", s)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// buildGuest builds ./guest in dir into out, with a build cache of its own
// if cache is not empty.
func buildGuest(t *testing.T, dir string, flags []string, out, cache string) []byte {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := append(append([]string{"build"}, flags...), "-o", out, "./guest")
	cmd := exec.Command(goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOWORK=off")
	if cache != "" {
		cmd.Env = append(cmd.Env, "GOCACHE="+cache)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies the Go sources of a tree, less tests and test data.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		copyFile(t, p, filepath.Join(to, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
