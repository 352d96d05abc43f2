package vault

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors"
	"github.com/PlakarKorp/kloset/objects"
)

// exportRecords runs a rootExporter on dir over recs, one at a time in
// their order, and returns the errors it reported.
func exportRecords(t *testing.T, dir string, force bool, recs []*connectors.Record) []string {
	t.Helper()
	o := &op{}
	x, err := newRootExporter(dir, force, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close(context.Background())
	in := make(chan *connectors.Record, len(recs))
	for _, r := range recs {
		in <- r
	}
	close(in)
	out := make(chan *connectors.Result, len(recs))
	if err := x.Export(context.Background(), in, out); err != nil {
		t.Fatal(err)
	}
	errs, _ := o.Errors()
	return errs
}

func record(p string, mode fs.FileMode, target, content string) *connectors.Record {
	fi := objects.FileInfo{Lname: filepath.Base(p), Lmode: mode, Lsize: int64(len(content)), LmodTime: time.Unix(1e9, 0), Lnlink: 1}
	return connectors.NewRecord(p, target, fi, nil, func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(content)), nil
	})
}

// TestExportBelowRestoredSymlink: a snapshot (a hostile one: Kloset's
// own walk skips such entries) that restores a symlink leading out of the
// target, then files under the same path: the files are refused, nothing
// is written outside.
func TestExportBelowRestoredSymlink(t *testing.T) {
	outside := t.TempDir()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, outside)
	if err != nil {
		t.Fatal(err)
	}
	errs := exportRecords(t, dir, true, []*connectors.Record{
		record("/", fs.ModeDir|0o755, "", ""),
		record("/abs", fs.ModeSymlink|0o777, outside, ""),
		record("/abs/evil.txt", 0o644, "", "evil\n"),
		record("/abs/sub", fs.ModeDir|0o755, "", ""),
		record("/rel", fs.ModeSymlink|0o777, rel, ""),
		record("/rel/evil.txt", 0o644, "", "evil\n"),
		record("/ok.txt", 0o644, "", "ok\n"),
	})
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 0 {
		t.Errorf("written outside the target: %v, %v", ents, err)
	}
	if len(errs) != 3 {
		t.Errorf("errors %q, want one for each of the three paths below a symlink", errs)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ok.txt")); err != nil || string(b) != "ok\n" {
		t.Errorf("ok.txt: %q, %v", b, err)
	}
}

// TestExportHardlinks: the names of a file with several links are
// restored as links to one file; with force, a symlink where the second
// name goes is replaced, not followed.
func TestExportHardlinks(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(victim, filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	linked := func(p string) *connectors.Record {
		r := record(p, 0o644, "", "shared\n")
		r.FileInfo.Lnlink, r.FileInfo.Ldev, r.FileInfo.Lino = 2, 7, 42
		return r
	}
	if errs := exportRecords(t, dir, true, []*connectors.Record{record("/", fs.ModeDir|0o755, "", ""), linked("/a"), linked("/b")}); len(errs) != 0 {
		t.Fatalf("errors: %q", errs)
	}
	a, errA := os.Lstat(filepath.Join(dir, "a"))
	b, errB := os.Lstat(filepath.Join(dir, "b"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("a and b are not one file: %v, %v, %v, %v", a, b, errA, errB)
	}
	if got, err := os.ReadFile(victim); err != nil || string(got) != "precious\n" {
		t.Errorf("the symlink's target was written: %q, %v", got, err)
	}
}
