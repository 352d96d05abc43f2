package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/blobcache"
)

func windowsEnv(t *testing.T) *Env {
	t.Helper()
	c, err := blobcache.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	env, err := NewEnv(Config{Registry: "http://127.0.0.1:1", Windows: c})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestWindowsClaims: a window planned and never kept (its request failed)
// neither blocks a new plan of the same call nor, once the call ends, a
// plan of another call; a kept window serves the next read.
func TestWindowsClaims(t *testing.T) {
	env := windowsEnv(t)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	size := uint64(len(blob))

	s1 := env.NewSession(context.Background())
	if held, win := s1.Plan(digest, size, 1000, 100); held != 0 || win.Length == 0 {
		t.Fatalf("first plan: held %d, window %+v; want a window to fetch", held, win)
	}
	// The same call plans again (a retry): it must not wait for itself.
	held, win := s1.Plan(digest, size, 1000, 100)
	if held != 0 || win.Length == 0 {
		t.Fatalf("second plan: held %d, window %+v; want a window to fetch", held, win)
	}
	s1.CloseAll() // the request failed: nothing kept

	// Another call is not kept waiting; it fetches and keeps its window.
	s2 := env.NewSession(context.Background())
	held, win = s2.Plan(digest, size, 1000, 100)
	if held != 0 {
		t.Fatalf("plan after a failed fetch: held %d; want a window to fetch", held)
	}
	body := s2.AddReader(bytes.NewReader(blob[win.Offset : win.Offset+uint64(win.Length)]))
	st, err := s2.Keep(body, digest, size, win, 1000, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := readStream(t, s2, st); !bytes.Equal(got, blob[1000:1100]) {
		t.Fatalf("kept read: %q, want %q", got, blob[1000:1100])
	}
	s2.CloseAll()

	s3 := env.NewSession(context.Background())
	defer s3.CloseAll()
	held, _ = s3.Plan(digest, size, 1050, 20)
	if held == 0 {
		t.Fatal("a read inside a kept window was not served from it")
	}
	if got := readStream(t, s3, held); !bytes.Equal(got, blob[1050:1070]) {
		t.Fatalf("held read: %q, want %q", got, blob[1050:1070])
	}
}

func readStream(t *testing.T, s *Session, h abi.Stream) []byte {
	t.Helper()
	rd, err := s.Take(h)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
