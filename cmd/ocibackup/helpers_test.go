package main_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// The tests drive the ocibackup binary, built once into a temporary
// directory, against real registries on 127.0.0.1.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
	// wazeroCache is shared by every run, so that the guest is compiled
	// once for the whole test binary.
	wazeroCache string
)

func TestMain(m *testing.M) {
	var err error
	if buildDir, err = os.MkdirTemp("", "ocibackup-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wazeroCache = filepath.Join(buildDir, "wazero")
	code := m.Run()
	os.RemoveAll(buildDir)
	os.Exit(code)
}

// binary returns the path of the built ocibackup.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(buildDir, "ocibackup")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s(the host embeds host/guest.wasm: run `make guest` first)", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// env is a user's environment: a home of its own (configuration, cache,
// data), and the variables given.
type env struct {
	t    *testing.T
	home string
	vars map[string]string
}

func newEnv(t *testing.T) *env {
	home := t.TempDir()
	return &env{t: t, home: home, vars: map[string]string{
		"HOME":               home,
		"XDG_CONFIG_HOME":    filepath.Join(home, ".config"),
		"XDG_CACHE_HOME":     filepath.Join(home, ".cache"),
		"XDG_DATA_HOME":      filepath.Join(home, ".local", "share"),
		"OCISTORE_CACHE_DIR": wazeroCache,
	}}
}

// storeEnv is an environment whose store is path on reg, opened with the
// tests' passphrase.
func storeEnv(t *testing.T, reg *registrytest.Registry, path string) *env {
	return newEnv(t).with("OCIBACKUP_LOCATION", "oci://"+reg.Host+"/"+path, "OCIBACKUP_PASSPHRASE", passphrase)
}

func (e *env) with(kv ...string) *env {
	vars := make(map[string]string, len(e.vars)+len(kv)/2)
	for k, v := range e.vars {
		vars[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		vars[kv[i]] = kv[i+1]
	}
	return &env{t: e.t, home: e.home, vars: vars}
}

func (e *env) environ() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "OCIBACKUP_") || strings.HasPrefix(k, "XDG_") || k == "HOME" || k == "OCISTORE_CACHE_DIR" {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range e.vars {
		out = append(out, k+"="+v)
	}
	return out
}

// result is what a run of the binary did.
type result struct {
	args   []string
	code   int
	stdout string
	stderr string
	took   time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("ocibackup %s: exit %d after %v\nstdout:\n%sstderr:\n%s", strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// runTimeout bounds every run.
const runTimeout = 60 * time.Second

func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary(e.t), args...)
	cmd.Env = e.environ()
	cmd.Dir = e.home
	return cmd
}

// run runs ocibackup with args.
func (e *env) run(args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := e.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		e.t.Fatalf("ocibackup %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		e.t.Fatalf("ocibackup %s did not finish within %v\n%s", strings.Join(args, " "), runTimeout, r)
	}
	e.t.Logf("ocibackup %s: exit %d in %v", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond))
	return r
}

// ok runs ocibackup and fails the test unless it succeeds.
func (e *env) ok(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("%s", r)
	}
	return r
}

// fails runs ocibackup, expects exit code and a one-line error on stderr
// that contains every one of want.
func (e *env) fails(code int, want []string, args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != code {
		e.t.Fatalf("want exit %d; %s", code, r)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	var errLine string
	for _, l := range lines {
		if strings.HasPrefix(l, "ocibackup: ") {
			if errLine != "" && !strings.Contains(l, "warning") {
				e.t.Errorf("more than one error line; %s", r)
			}
			errLine = l
		}
	}
	if errLine == "" {
		e.t.Fatalf("no error line on stderr; %s", r)
	}
	for _, w := range want {
		if !strings.Contains(errLine, w) {
			e.t.Errorf("the error %q does not say %q", errLine, w)
		}
	}
	return r
}

var snapshotRE = regexp.MustCompile(`(?m)^snapshot ([0-9a-f]{8}) of `)

// snapshotID is the id a backup printed.
func snapshotID(t *testing.T, r result) string {
	t.Helper()
	m := snapshotRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no snapshot id in the output; %s", r)
	}
	return m[1]
}

// writeTree writes a small tree with the kinds of entries a backup must
// keep: nested directories, an empty file, an executable, binary data,
// symlinks to a file and to a directory. It returns its root.
func writeTree(t *testing.T, seed uint64, randomBytes int) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	files := map[string]string{
		"README.txt":               "hello, registry\n",
		"empty":                    "",
		"nested/data.json":         `{"answer": 42}` + "\n",
		"nested/deeper/notes.md":   strings.Repeat("note\n", 1000),
		"nested/deeper/script.sh":  "#!/bin/sh\necho hi\n",
		"compressible/zeros.txt":   strings.Repeat("0", 1<<20),
		"compressible/repeats.txt": strings.Repeat("the same line, again and again\n", 20000),
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "nested/deeper/script.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	random := make([]byte, randomBytes)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(root, "nested/random.bin"), random, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("README.txt", filepath.Join(root, "link-to-file")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nested/deeper", filepath.Join(root, "link-to-dir")); err != nil {
		t.Fatal(err)
	}
	return root
}

// createdStore is a store created at path on a new distribution registry
// (the tests' passphrase), and a directory of n files of size random
// bytes to back up.
func createdStore(t *testing.T, path string, seed uint64, n, size int) (*registrytest.Registry, *env, string) {
	t.Helper()
	reg := registrytest.Distribution(t, registrytest.Options{})
	e := storeEnv(t, reg, path)
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFiles(t, src, seed, n, size)
	e.ok("create")
	return reg, e, src
}

// writeRandomFiles writes n files of size random bytes each under dir.
func writeRandomFiles(t *testing.T, dir string, seed uint64, n, size int) {
	t.Helper()
	var key [32]byte
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range key {
		key[i] = byte(r.Uint32())
	}
	content := rand.NewChaCha8(key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("r%03d.bin", i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, content, int64(size)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// entry is what is compared of a path.
type entry struct {
	mode    fs.FileMode
	content string // regular files: the content; symlinks: the target
	mtime   int64  // regular files, in ns
}

// scan describes the tree under root, by relative path.
func scan(t *testing.T, root string) map[string]entry {
	t.Helper()
	tree := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode()}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.content, e.mtime = string(b), fi.ModTime().UnixNano()
		case fi.Mode()&fs.ModeSymlink != 0:
			if e.content, err = os.Readlink(p); err != nil {
				return err
			}
		}
		tree[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// sameTree fails t if the trees under want and got differ.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := scan(t, want), scan(t, got)
	var diffs []string
	for _, p := range slices.Sorted(maps.Keys(w)) {
		ge, ok := g[p]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+p)
		case ge.mode != w[p].mode:
			diffs = append(diffs, fmt.Sprintf("%s: mode %v, want %v", p, ge.mode, w[p].mode))
		case ge.content != w[p].content:
			diffs = append(diffs, fmt.Sprintf("%s: content differs (%d bytes, want %d)", p, len(ge.content), len(w[p].content)))
		case ge.mtime-w[p].mtime >= 1000 || w[p].mtime-ge.mtime >= 1000:
			// The fs exporter sets times with utimes: to the µs.
			diffs = append(diffs, fmt.Sprintf("%s: mtime %d, want %d", p, ge.mtime, w[p].mtime))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(g)) {
		if _, ok := w[p]; !ok {
			diffs = append(diffs, "unexpected "+p)
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("%s and %s differ:\n%s", want, got, strings.Join(diffs, "\n"))
	}
}

// parseSize reads a size as the CLI prints it ("1.7 MiB").
func parseSize(t *testing.T, s string) float64 {
	t.Helper()
	var n float64
	var unit string
	if _, err := fmt.Sscanf(s, "%g %s", &n, &unit); err != nil {
		t.Fatalf("size %q: %v", s, err)
	}
	for i, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if u == unit {
			return n * float64(int64(1)<<(10*i))
		}
	}
	t.Fatalf("size %q: unknown unit", s)
	return 0
}
