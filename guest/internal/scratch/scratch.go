// Package scratch is memory for one call of the store: the strings and
// buffers a call builds (URLs, header values, manifests, cache entries)
// and those the guest lifts from the host (an answer's headers, a
// digest). It is reused from one call to the next, so that a put or a
// ranged get makes no Go allocation in steady state.
//
// Why: an allocation costs the sandboxed guest a few microseconds, and
// the first after a call to the host, which let the CPU caches go cold,
// costs the most: it brings Go's allocator back into them. A put that
// allocated 25 times took about 320 µs of guest time against a real
// registry; without allocations, about 200 (RATIONALE.md, "what the
// sandbox costs").
//
// The rule that makes it safe: nothing handed out may be kept once the
// call that got it returns; the owner resets its memory only between two
// calls. Tests set Poison, so that memory kept too long reads as garbage
// rather than as the next call's values.
package scratch

import (
	"strconv"
	"unsafe"
)

// Poison makes Reset overwrite what was handed out. Tests set it.
var Poison bool

const poison = 0xA5

// Bytes hands out bytes and strings from one buffer, a bump at a time. A
// call that needs more than the buffer holds gets heap memory for the
// rest, and the next Reset makes the buffer large enough for it. A Bytes
// never reset hands out heap memory only, never reused: for what is kept
// for good.
type Bytes struct {
	buf   []byte // buf[:len] is handed out
	spill int    // bytes handed out from the heap since the last Reset
}

// Reset makes everything handed out since the last Reset available again.
func (m *Bytes) Reset() {
	if Poison {
		b := m.buf[:len(m.buf)]
		for i := range b {
			b[i] = poison
		}
	}
	if m.spill > 0 {
		// The old buffer stays alive as long as something (wrongly)
		// points into it: growing never overwrites what was handed out.
		m.buf = make([]byte, 0, 2*(len(m.buf)+m.spill))
		m.spill = 0
		return
	}
	m.buf = m.buf[:0]
}

// Bytes returns what f appends to an empty slice, which f gets over the
// free part of the buffer, and returns appended to. Appending past it
// moves the slice to the heap, which is safe: the next Reset grows the
// buffer. f must not use m: the free part is f's until it returns.
func (m *Bytes) Bytes(f func([]byte) []byte) []byte {
	return m.keep(f(m.buf[len(m.buf):len(m.buf)]))
}

// String is Bytes, as a string.
func (m *Bytes) String(f func([]byte) []byte) string {
	b := m.Bytes(f)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// keep takes b, appended to the free part of the buffer, until Reset.
func (m *Bytes) keep(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if free := m.buf[len(m.buf):cap(m.buf)]; len(free) > 0 && unsafe.SliceData(b) == unsafe.SliceData(free) && len(b) <= len(free) {
		m.buf = m.buf[:len(m.buf)+len(b)]
	} else {
		m.spill += len(b)
	}
	return b[:len(b):len(b)]
}

// Make returns n bytes, zeroed.
func (m *Bytes) Make(n int) []byte {
	if free := m.buf[len(m.buf):cap(m.buf)]; len(free) >= n {
		clear(free[:n])
		return m.keep(free[:n])
	}
	m.spill += n
	return make([]byte, n)
}

// Concat returns the concatenation of parts.
func (m *Bytes) Concat(parts ...string) string {
	return m.String(func(b []byte) []byte {
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	})
}

// Uint returns n in decimal.
func (m *Bytes) Uint(n uint64) string {
	return m.String(func(b []byte) []byte { return strconv.AppendUint(b, n, 10) })
}

// Slots hands out *T values, each its own until Reset. Their fields keep
// what the last call left in them: a caller that reuses a slice field's
// capacity saves an allocation, and resets the rest.
type Slots[T any] struct {
	all  []*T
	used int
}

// maxSlots bounds the values Slots keeps: a call that needs more (a list
// of many pages) gets new ones, and an owner that forgot Reset allocates
// rather than grows without end.
const maxSlots = 64

// Next returns a value that no one else holds until Reset.
func (s *Slots[T]) Next() *T {
	if s.used == maxSlots {
		return new(T)
	}
	if s.used == len(s.all) {
		s.all = append(s.all, new(T))
	}
	p := s.all[s.used]
	s.used++
	return p
}

// Reset makes every value handed out available again.
func (s *Slots[T]) Reset() {
	if Poison {
		for _, p := range s.all[:s.used] {
			*p = *new(T)
		}
	}
	s.used = 0
}

// Buffer lends one slice a call, whose capacity it keeps for the next
// call: for what a call builds that is large and grows with the data, as
// the pages of a tag list and the MACs read from them. Made anew at each
// list, they were most of the sandbox's allocations, and its garbage
// collections, when listing.
type Buffer[T any] struct {
	s    []T
	lent bool
}

// maxBuffer bounds what a Buffer keeps, in bytes: the MACs of 32,768
// objects, or a page of 13,000 tags. A larger list pays its allocations;
// memory is not held for it between calls.
const maxBuffer = 1 << 20

// Take returns the slice, empty, with the capacity kept: the first time
// in a call. Later in the same call it returns nil, so that two uses in
// one call never share memory.
func (b *Buffer[T]) Take() []T {
	if b.lent {
		return nil
	}
	b.lent = true
	return b.s[:0]
}

// Keep keeps s, a slice the call made (from what Take returned, or not),
// for the next call, if it holds more than what is kept and at most
// maxBuffer bytes.
func (b *Buffer[T]) Keep(s []T) {
	if cap(s) > cap(b.s) && uintptr(cap(s))*unsafe.Sizeof(*new(T)) <= maxBuffer {
		b.s = s[:0]
	}
}

// Reset ends the call: what Take lent may be lent again.
func (b *Buffer[T]) Reset() {
	if Poison {
		s := b.s[:cap(b.s)]
		for i := range s {
			s[i] = *new(T)
		}
	}
	b.lent = false
}
