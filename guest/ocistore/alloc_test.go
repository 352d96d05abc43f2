package ocistore

import (
	"io"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/internal/scratch"
)

// TestCallsDoNotAllocate holds the calls Kloset makes most, a put whose
// body the host read ahead and a ranged get of a blob the cache knows, to
// no Go allocation once the store's memory (package scratch) is warm: in
// the sandbox, each allocation costs microseconds, and the first after a
// call to the host the most.
func TestCallsDoNotAllocate(t *testing.T) {
	defer func(p bool) { scratch.Poison = p }(scratch.Poison)
	scratch.Poison = false // poisoning drops what the slots keep for reuse
	h := &cannedHost{}
	s, err := New(h, map[string]string{OptionLocation: "oci://127.0.0.1:5000/team/backups"})
	if err != nil {
		t.Fatal(err)
	}
	s.lay = ourLayout // as Open leaves it
	mac := abi.MAC{1, 2, 3}
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"put", func() error { _, err := s.Put(abi.KindPackfile, mac, 1); return err }},
		{"ranged get", func() error {
			_, err := s.Get(abi.KindPackfile, mac, &abi.Range{Offset: 10, Length: 100})
			return err
		}},
	} {
		before := h.requests
		allocs := testing.AllocsPerRun(100, func() {
			s.Reset()
			if err := tt.call(); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		})
		if allocs != 0 {
			t.Errorf("a %s makes %v Go allocations, want none", tt.name, allocs)
		}
		if h.requests == before {
			t.Errorf("a %s made no request: the test measures nothing", tt.name)
		}
	}
}

// cannedHost answers as a registry would, from answers made once, and
// allocates nothing itself.
type cannedHost struct{ requests int }

const cannedDigest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

var (
	cannedStarted = &abi.Response{Status: 202, Header: []abi.Header{
		{"Content-Length", "0"}, {"Location", "/v2/team/backups/blobs/uploads/u1?_state=s"}, {"Range", "0-0"}}}
	cannedCreated = &abi.Response{Status: 201, Header: []abi.Header{{"Content-Length", "0"}, {"Docker-Content-Digest", cannedDigest}}}
	cannedRange   = &abi.Response{Status: 206, Header: []abi.Header{{"Content-Length", "100"}, {"Content-Range", "bytes 10-109/1024"}}, Body: 2}
)

func (h *cannedHost) RoundTrip(req *abi.Request) (*abi.Response, error) {
	h.requests++
	switch req.Method {
	case "POST":
		return cannedStarted, nil
	case "PUT":
		return cannedCreated, nil
	case "GET":
		if strings.Contains(req.URL, "/blobs/sha256:") && len(req.Header) == 1 && req.Header[0] == (abi.Header{"Range", "bytes=10-109"}) {
			return cannedRange, nil
		}
	}
	return nil, io.ErrUnexpectedEOF
}

func (h *cannedHost) Start(*abi.Request) abi.Pending              { return 0 }
func (h *cannedHost) Finish(abi.Pending) (*abi.Response, error)   { return nil, io.ErrUnexpectedEOF }
func (h *cannedHost) Read(abi.Stream, []byte) (int, error)        { return 0, io.EOF }
func (h *cannedHost) Digest(abi.Stream) (string, uint64)          { return cannedDigest, 1024 }
func (h *cannedHost) Slice(abi.Stream, uint64, uint64) abi.Stream { return 3 }
func (h *cannedHost) Verify(abi.Stream, string, uint64)           {}
func (h *cannedHost) Close(abi.Stream)                            {}
func (h *cannedHost) CacheGet(string) (string, bool)              { return cannedDigest + " 1024", true }
func (h *cannedHost) CacheSet(string, string)                     {}
func (h *cannedHost) CacheRemove(string)                          {}
func (h *cannedHost) Log(abi.Level, string)                       {}
func (h *cannedHost) Plan(_ string, _, off uint64, n uint32) (abi.Stream, abi.Range) {
	return 0, abi.Range{Offset: off, Length: n}
}
func (h *cannedHost) Keep(body abi.Stream, _ string, _ uint64, _ abi.Range, _ uint64, _ uint32) (abi.Stream, error) {
	return body, nil
}
