package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// onlyRead hides everything but Read, as Kloset's readers do.
type onlyRead struct{ io.Reader }

func TestReadAhead(t *testing.T) {
	env, _ := newEnv(t, Config{Registry: "http://127.0.0.1:1"})
	data := testData(spoolChunk*2 + 12345)
	n := int64(len(data))
	for _, c := range []struct {
		name  string
		r     io.Reader
		limit int64
		whole bool
	}{
		{"seeker", bytes.NewReader(data), 0, true},
		{"seeker over the limit", bytes.NewReader(data), n - 1, false},
		{"reader", onlyRead{bytes.NewReader(data)}, 0, true},
		{"reader of exactly the limit", onlyRead{bytes.NewReader(data)}, n, true},
		{"reader one byte over the limit", onlyRead{bytes.NewReader(data)}, n - 1, false},
		{"reader, read-ahead off", onlyRead{bytes.NewReader(data)}, -1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := ReadAhead(context.Background(), c.r, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			if b.Whole() != c.whole {
				t.Fatalf("Whole() = %v, want %v", b.Whole(), c.whole)
			}
			s := env.NewSession(context.Background())
			defer s.CloseAll()
			h := s.AddBody(b)
			d, size := s.Digest(h)
			if c.whole && (d != digestOf(data) || size != uint64(n)) {
				t.Fatalf("Digest before any read = %s (%d), want the whole body's", d, size)
			}
			if !c.whole && size != 0 {
				t.Fatalf("Digest before any read counts %d bytes of a body not read ahead", size)
			}
			rc, err := s.Take(h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes (%v), want the %d of the body", len(got), err, n)
			}
			// Reading counted nothing twice.
			if st := rc.(*stream); st.digest() != digestOf(data) || st.n != uint64(n) {
				t.Fatalf("after reading: %s (%d), want the body's digest and length", st.digest(), st.n)
			}
			rc.Close()
			b.Release() // after the stream's Close: nothing happens twice
		})
	}

	empty, err := ReadAhead(context.Background(), onlyRead{bytes.NewReader(nil)}, 0)
	if err != nil || !empty.Whole() || empty.Size() != 0 {
		t.Fatalf("empty body: whole %v, size %d, %v", empty.Whole(), empty.Size(), err)
	}
	empty.Release()

	boom := errors.New("boom")
	if _, err := ReadAhead(context.Background(), io.MultiReader(bytes.NewReader(data[:100]), errReader{boom}), 0); !errors.Is(err, boom) {
		t.Fatalf("a failing reader: %v, want its error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ReadAhead(ctx, onlyRead{bytes.NewReader(data)}, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled read-ahead: %v, want context.Canceled", err)
	}
}
