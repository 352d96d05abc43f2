package ocistore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// readAheadHost is a testHost that reads some put bodies ahead, as the
// real host does (host/session.ReadAhead): their digest and length are
// known before the store sends a byte.
type readAheadHost struct {
	*testHost
	ahead map[abi.Stream]descriptor
}

func (h *readAheadHost) Digest(id abi.Stream) (string, uint64) {
	if d, ok := h.ahead[id]; ok {
		return d.Digest, uint64(d.Size)
	}
	return h.testHost.Digest(id)
}

// addAhead registers body as read ahead, measured as the first n bytes of
// it (all of it for an honest host).
func (h *readAheadHost) addAhead(body []byte, n int) abi.Stream {
	id := h.AddReader(bytes.NewReader(body))
	sum := sha256.Sum256(body[:n])
	h.ahead[id] = descriptor{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(n)}
	return id
}

func TestPutReadAhead(t *testing.T) {
	x := newHarness(t)
	h := &readAheadHost{testHost: x.host, ahead: map[abi.Stream]descriptor{}}
	st, err := New(h, map[string]string{OptionLocation: x.loc})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("read ahead "), 100_000)
	mac := abi.MAC{1, 2, 3}
	x.list(abi.KindLock) // as Kloset does before it puts: the deletion mode is known
	x.host.takeRequests()
	x.must("Put", x.do(func() error {
		n, err := st.Put(abi.KindPackfile, mac, h.addAhead(data, len(data)))
		if err == nil && n != uint64(len(data)) {
			t.Errorf("Put = %d bytes, want %d", n, len(data))
		}
		return err
	}))
	reqs := x.host.takeRequests()
	if len(reqs) != 3 || countRequests(reqs, "POST") != 1 || countRequests(reqs, "PUT") != 2 {
		t.Fatalf("a put read ahead made %q, want POST, PUT of the blob, PUT of the manifest", reqs)
	}
	var got []byte
	x.must("Get", x.do(func() error {
		s, err := st.Get(abi.KindPackfile, mac, nil)
		if err != nil {
			return err
		}
		rc := x.host.Take(s)
		defer rc.Close()
		got, err = io.ReadAll(rc)
		return err
	}))
	if !bytes.Equal(got, data) {
		t.Fatalf("Get returned %d bytes, not the %d put", len(got), len(data))
	}

	// A host that measured only part of the body: the registry refuses
	// the blob, or the store the tag; never a truncated object.
	liar := abi.MAC{4, 5, 6}
	err = x.do(func() error {
		_, err := st.Put(abi.KindPackfile, liar, h.addAhead(data, len(data)/2))
		return err
	})
	if err == nil {
		t.Fatal("a put whose body was measured short succeeded")
	}
	for _, m := range x.list(abi.KindPackfile) {
		if m == liar {
			t.Fatal("a put whose body was measured short left a tag")
		}
	}
}
