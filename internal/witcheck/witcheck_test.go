package witcheck

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// repoRoot is the module's root directory, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found: %v", err)
	}
	return root
}

// buildGuest builds pkg (relative to the repository root) as the Makefile
// builds the guest and returns the module.
func buildGuest(t *testing.T, pkg string, tags ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guest.wasm")
	args := []string{"build", "-trimpath", "-buildmode=c-shared", "-ldflags=-s -w -buildid=", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func check(t *testing.T, module []byte) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := Check(ctx, filepath.Join(repoRoot(t), "wit", "storage.wit"), module)
	var e *Error
	if err != nil && !errors.As(err, &e) {
		t.Fatalf("Check could not run: %v", err)
	}
	return err
}

// TestStubGuest checks a stub with every export right, so that a failure of
// the real guest below is the guest's and not the checker's.
func TestStubGuest(t *testing.T) {
	t.Parallel()
	if err := check(t, buildGuest(t, "./internal/witcheck/testdata/stubguest")); err != nil {
		t.Fatalf("stub guest refused:\n%v", err)
	}
}

func TestWrongGuest(t *testing.T) {
	t.Parallel()
	err := check(t, buildGuest(t, "./internal/witcheck/testdata/stubguest", "wrong"))
	if err == nil {
		t.Fatal("a guest with wrong signatures passed the check")
	}
	var e *Error
	errors.As(err, &e)
	t.Logf("as expected:\n%v", err)

	if e.Component == nil {
		t.Error("wasm-tools built a component of the wrong guest")
	}
	want := []string{
		`export "plakar:storage/store@0.3.0#put": signature (i32, i32, i32, i64) -> (i32), want (i32, i32, i32, i32) -> (i32)`,
		`import "plakar:storage/log@0.3.0" "log": signature (i32, i32) -> (), want (i32, i32, i32) -> ()`,
	}
	if len(e.Mismatches) != len(want) {
		t.Errorf("got %d mismatches, want %d:\n%s", len(e.Mismatches), len(want), strings.Join(e.Mismatches, "\n"))
	}
	for _, w := range want {
		found := false
		for _, m := range e.Mismatches {
			found = found || m == w
		}
		if !found {
			t.Errorf("mismatch not reported: %s", w)
		}
	}
}

func TestMissingExports(t *testing.T) {
	t.Parallel()
	// A module with memory and nothing else: every store export is missing.
	module := []byte("\x00asm\x01\x00\x00\x00" + // header
		"\x05\x03\x01\x00\x01" + // memory section: one memory, min 1 page
		"\x07\x0a\x01\x06memory\x02\x00") // export section: "memory"
	err := check(t, module)
	if err == nil {
		t.Fatal("an empty module passed the check")
	}
	var e *Error
	errors.As(err, &e)
	for _, name := range []string{"plakar:storage/store@0.3.0#configure", "cabi_post_plakar:storage/store@0.3.0#close", "cabi_realloc"} {
		if !strings.Contains(err.Error(), `export "`+name+`": missing`) {
			t.Errorf("missing export %s not reported:\n%v", name, err)
		}
	}
	if e.Component == nil {
		t.Error("wasm-tools built a component of an empty module")
	}
}

// TestDedupeWASI checks that the stub, like any Go guest, imports fd_write
// twice, and that the renamed module is valid (inspect compiles it) with
// each import once.
func TestDedupeWASI(t *testing.T) {
	t.Parallel()
	module := buildGuest(t, "./internal/witcheck/testdata/stubguest")
	count := func(m []byte) map[string]int {
		t.Helper()
		info, err := inspect(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		n := map[string]int{}
		for _, f := range info.imports {
			mod, name, _ := f.Import()
			n[mod+" "+name]++
		}
		return n
	}
	before := count(module)
	if before[WASIModule+" fd_write"] < 2 {
		t.Fatalf("the stub imports fd_write %d times: the duplicate case is not exercised", before[WASIModule+" fd_write"])
	}

	out, renamed, err := dedupeWASI(module)
	if err != nil {
		t.Fatal(err)
	}
	if !renamed {
		t.Fatal("dedupeWASI renamed nothing")
	}
	after := count(out)
	for k, n := range after {
		if n != 1 {
			t.Errorf("import %s still appears %d times", k, n)
		}
	}
	if after[WASIModule+" "+dupName("fd_write", 2)] != 1 {
		t.Errorf("no import %s: %v", dupName("fd_write", 2), after)
	}
	if len(after) != len(before)+1 {
		t.Errorf("%d distinct imports after, %d before: want one more", len(after), len(before))
	}
}

// TestGuest checks the real guest, ./guest, as `make guest` builds it.
func TestGuest(t *testing.T) {
	t.Parallel()
	if err := check(t, buildGuest(t, "./guest")); err != nil {
		t.Fatalf("guest does not conform to wit/storage.wit:\n%v", err)
	}
}
