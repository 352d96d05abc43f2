package scratch

import (
	"strings"
	"testing"
)

func TestBytes(t *testing.T) {
	var m Bytes
	// A cold buffer hands out heap memory, counted for the next Reset.
	a := m.Concat("abc", "def")
	n := m.Uint(12345)
	if a != "abcdef" || n != "12345" {
		t.Fatalf("Concat, Uint = %q, %q", a, n)
	}
	m.Reset()
	if cap(m.buf) < len(a)+len(n) {
		t.Fatalf("after a call that spilled %d bytes, the buffer holds %d", len(a)+len(n), cap(m.buf))
	}

	// A warm one hands out its own, each piece apart from the others.
	allocs := testing.AllocsPerRun(10, func() {
		m.Reset()
		a = m.Concat("abc", "def")
		b := m.Make(3)
		copy(b, "xyz")
		n = m.Uint(12345)
		if a != "abcdef" || string(b) != "xyz" || n != "12345" {
			t.Fatalf("Concat, Make, Uint = %q, %q, %q", a, b, n)
		}
	})
	if allocs != 0 {
		t.Errorf("a warm buffer allocated %v times", allocs)
	}

	// Appending to what was handed out cannot reach the next piece.
	m.Reset()
	b := m.Bytes(func(b []byte) []byte { return append(b, "12"...) })
	c := m.String(func(b []byte) []byte { return append(b, "34"...) })
	_ = append(b, "!!"...)
	if c != "34" {
		t.Errorf("appending to a piece overwrote the next: %q", c)
	}

	// Poison shows memory kept past Reset.
	defer func(p bool) { Poison = p }(Poison)
	Poison = true
	m.Reset()
	if strings.Contains(c, "34") {
		t.Errorf("a piece kept past a poisoning Reset still reads %q", c)
	}
}

func TestSlots(t *testing.T) {
	type v struct{ s []int }
	var s Slots[v]
	p, q := s.Next(), s.Next()
	if p == q {
		t.Fatal("Next handed out one value twice in a call")
	}
	p.s = append(p.s, 1, 2, 3)
	s.Reset()
	if s.Next() != p || cap(p.s) != 3 {
		t.Error("after Reset, Next does not hand out the values again, with what they kept")
	}

	// Without Reset, a value is still never handed out twice, and what is
	// kept stays bounded.
	seen := map[*v]bool{}
	for range 3 * maxSlots {
		p := s.Next()
		if seen[p] {
			t.Fatal("Next handed out one value twice without a Reset")
		}
		seen[p] = true
	}
	if len(s.all) > maxSlots {
		t.Errorf("Slots kept %d values, more than %d", len(s.all), maxSlots)
	}
}

func TestBuffer(t *testing.T) {
	var b Buffer[[4]byte]
	s := append(b.Take(), [4]byte{1}, [4]byte{2})
	if b.Take() != nil {
		t.Fatal("Take lent the slice twice in one call")
	}
	b.Keep(s)
	b.Reset()
	if r := b.Take(); len(r) != 0 || cap(r) != cap(s) || &r[:1][0] != &s[0] {
		t.Fatalf("after Keep and Reset, Take returned len %d cap %d, not the kept slice", len(r), cap(r))
	}

	// Neither what is smaller than the kept slice nor what is larger
	// than maxBuffer replaces it.
	b.Keep(make([][4]byte, 0, 1))
	b.Keep(make([][4]byte, 0, maxBuffer/4+1))
	b.Reset()
	if r := b.Take(); cap(r) != cap(s) {
		t.Errorf("Keep kept %d bytes, more than %d", 4*cap(r), maxBuffer)
	}

	// Poisoned, what was lent reads as zeros after Reset.
	Poison = true
	defer func() { Poison = false }()
	b.Reset()
	if s[0] != ([4]byte{}) || s[1] != ([4]byte{}) {
		t.Errorf("after a poisoned Reset, the lent slice holds %v", s[:2])
	}
}
