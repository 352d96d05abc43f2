package meter

import (
	"errors"
	"fmt"
)

// The readers below decode exactly as wazero v1.12.0 does
// (internal/leb128), so that an instruction we skip ends where wazero's
// ends. Where wazero is stricter (overflowing encodings) we need not be:
// such a module fails in wazero after us. Where wazero is looser (the
// 5-byte s33 it accepts with a continuation bit set), we follow it.

// errTruncated and errMalformed say that the module is not even well
// formed: wazero refuses it too.
var (
	errTruncated = errors.New("unexpected end")
	errMalformed = errors.New("malformed integer")
)

// reader walks a byte slice. Its first error sticks: later reads return
// zeroes, so loops over vectors must check err, which they do through
// ok().
type reader struct {
	b   []byte
	p   int
	err error
}

func (r *reader) ok() bool { return r.err == nil }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) byte() byte {
	if r.p >= len(r.b) {
		r.fail(errTruncated)
		return 0
	}
	c := r.b[r.p]
	r.p++
	return c
}

// bytes returns the next n bytes, without copying.
func (r *reader) bytes(n uint32) []byte {
	if uint64(n) > uint64(len(r.b)-r.p) {
		r.fail(errTruncated)
		r.p = len(r.b)
		return nil
	}
	b := r.b[r.p : r.p+int(n)]
	r.p += int(n)
	return b
}

// u32 decodes an unsigned LEB128 of at most 5 bytes.
func (r *reader) u32() uint32 {
	if r.p < len(r.b) && r.b[r.p] < 0x80 { // the common case, inlined
		r.p++
		return uint32(r.b[r.p-1])
	}
	return r.u32Slow()
}

func (r *reader) u32Slow() uint32 {
	v, n := u32At(r.b, r.p)
	if n == 0 {
		r.fail(fmt.Errorf("%w at offset %d", errMalformed, r.p))
		r.p = len(r.b)
		return 0
	}
	r.p += n
	return v
}

// skipLEB skips a LEB128 of at most max bytes (5 for 32-bit integers, 10
// for 64-bit ones).
func (r *reader) skipLEB(max int) {
	if r.p < len(r.b) && r.b[r.p] < 0x80 { // the common case, inlined
		r.p++
		return
	}
	r.skipLEBSlow(max)
}

func (r *reader) skipLEBSlow(max int) {
	n := lebLen(r.b, r.p, max)
	if n == 0 {
		r.fail(fmt.Errorf("%w at offset %d", errMalformed, r.p))
		r.p = len(r.b)
		return
	}
	r.p += n
}

// s33 decodes a signed 33-bit LEB128 the way wazero's
// DecodeInt33AsInt64 does: at most 5 bytes, the fifth ending it whatever
// its continuation bit.
func (r *reader) s33() int64 {
	var v int64
	var shift uint
	var c byte
	for i := 0; i < 5; i++ {
		c = r.byte()
		if r.err != nil {
			return 0
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			break
		}
	}
	if shift < 33 && c&0x40 != 0 {
		v |= -1 << shift
	}
	v &= 1<<33 - 1
	if v&(1<<32) != 0 {
		v -= 1 << 33
	}
	return v
}

// name reads a length-prefixed string (not checked for UTF-8: wazero
// does that).
func (r *reader) name() []byte { return r.bytes(r.u32()) }

// u32At decodes the unsigned LEB128 at b[p:]; n is 0 if it is truncated
// or longer than 5 bytes.
func u32At(b []byte, p int) (v uint32, n int) {
	if p < len(b) && b[p] < 0x80 { // the common case, inlined
		return uint32(b[p]), 1
	}
	var shift uint
	for i := 0; i < 5; i++ {
		if p+i >= len(b) {
			return 0, 0
		}
		c := b[p+i]
		v |= uint32(c&0x7f) << shift
		if c < 0x80 {
			return v, i + 1
		}
		shift += 7
	}
	return 0, 0
}

// lebLen is the length of the LEB128 at b[p:], 0 if it is truncated or
// longer than max bytes.
func lebLen(b []byte, p, max int) int {
	for i := 0; i < max; i++ {
		if p+i >= len(b) {
			return 0
		}
		if b[p+i] < 0x80 {
			return i + 1
		}
	}
	return 0
}

func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendName(b []byte, s string) []byte {
	return append(appendU32(b, uint32(len(s))), s...)
}

// putU32 writes v's minimal encoding at the start of b, which has room
// for it, and returns its length.
func putU32(b []byte, v uint32) int {
	n := 0
	for v >= 0x80 {
		b[n] = byte(v) | 0x80
		v >>= 7
		n++
	}
	b[n] = byte(v)
	return n + 1
}

// reserve and fill write a length prefix once what follows it is known:
// reserve leaves room for the longest encoding, fill writes the minimal
// one and moves what follows back over the unused bytes.
const reserved = 5

func reserve(out []byte) ([]byte, int) {
	return append(out, make([]byte, reserved)...), len(out)
}

func fill(out []byte, at int) ([]byte, error) {
	n := len(out) - at - reserved
	if n > 1<<32-1 {
		return nil, errors.New("meter: output too large")
	}
	k := putU32(out[at:], uint32(n))
	copy(out[at+k:], out[at+reserved:])
	return out[:len(out)-(reserved-k)], nil
}
