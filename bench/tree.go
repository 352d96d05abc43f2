package main

import (
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The tree Kloset backs up: the Go source tree (text, many small files)
// and generated files (sizes from 4 KiB to 8 MiB, half random, half
// compressible), size bytes in all.

func goroot() (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if s := strings.TrimSpace(string(out)); err == nil && s != "" {
		return s, nil
	}
	return "", fmt.Errorf("finding the Go source tree to back up (go env GOROOT): %v: put the go command on PATH", err)
}

// treeSize is the bytes of the regular files under root.
func treeSize(root string) (int64, int, error) {
	var total int64
	var files int
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			total += fi.Size()
			files++
		}
		return err
	})
	return total, files, err
}

// rootsSize is treeSize of every root, added up.
func rootsSize(roots []string) (int64, int, error) {
	var total int64
	var files int
	for _, r := range roots {
		n, f, err := treeSize(r)
		if err != nil {
			return 0, 0, err
		}
		total += n
		files += f
	}
	return total, files, nil
}

// sourceRoots picks directories of src whose sizes add up to at most
// budget: the whole of src when it fits.
func sourceRoots(src string, budget int64) ([]string, int64, error) {
	total, _, err := treeSize(src)
	if err != nil {
		return nil, 0, err
	}
	if total <= budget {
		return []string{src}, total, nil
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, 0, err
	}
	var roots []string
	var used int64
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(src, e.Name())
		n, _, err := treeSize(p)
		if err != nil {
			return nil, 0, err
		}
		if used+n <= budget {
			roots = append(roots, p)
			used += n
		}
	}
	return roots, used, nil
}

// generateTree writes files of about size bytes in all under dir, from a
// fixed seed.
func generateTree(dir string, size int64) (int64, error) {
	r := rand.New(rand.NewPCG(6, 2024))
	content := rand.NewChaCha8([32]byte{6})
	text := []byte(strings.Repeat("the OCI store keeps a whole Kloset repository in one registry repository; ", 64))
	var total int64
	for i := 0; total < size; i++ {
		// Log-uniform sizes, 4 KiB to 8 MiB.
		n := int64(math.Exp(math.Log(4<<10) + r.Float64()*(math.Log(8<<20)-math.Log(4<<10))))
		n = min(n, size-total)
		name := filepath.Join(dir, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("f%05d.bin", i))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return total, err
		}
		f, err := os.Create(name)
		if err != nil {
			return total, err
		}
		var src io.Reader = content
		if i%2 == 1 {
			src = &repeatReader{b: text, off: r.IntN(len(text))}
		}
		_, err = io.CopyN(f, src, n)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m := copy(p[n:], r.b[r.off:])
		n += m
		r.off = (r.off + m) % len(r.b)
	}
	return n, nil
}

// warm reads every file under roots once, so that every backup reads the
// tree from the page cache.
func warm(roots []string) error {
	buf := make([]byte, 1<<20)
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(io.Discard, onlyReader{f}, buf)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// sortedRoots keeps roots in a stable order for the report.
func sortedRoots(roots []string) []string { return slices.Sorted(slices.Values(roots)) }
