package witcheck

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Go's wasip1 port declares some WASI functions more than once (the runtime
// and package syscall both import fd_write, for one), and the linker keeps
// each declaration as an import of its own. The component model allows
// each module/name pair once, so wasm-tools refuses such a module. WASI is
// outside the WIT contract and stands in for the adapter only, so before
// building the component, every repeated WASI function import is renamed
// "<name>.dup<N>" (the N-th import of that name), and the adapter exports
// those names too. Only the import section's names change: no index moves.
// Repeated imports of the WIT's own functions are left as they are.

// dupName is the name of the n-th (n >= 2) import of a function name.
func dupName(name string, n int) string { return name + ".dup" + strconv.Itoa(n) }

// dedupeWASI returns module with its repeated WASI function imports
// renamed, and whether it renamed any.
func dedupeWASI(module []byte) ([]byte, bool, error) {
	if len(module) < 8 || !bytes.Equal(module[:4], []byte("\x00asm")) {
		return nil, false, errors.New("not a wasm module")
	}
	out := append([]byte(nil), module[:8]...)
	renamed := false
	r := &reader{b: module, off: 8}
	for r.off < len(r.b) {
		id := r.byte()
		size := r.u32()
		start := r.off
		r.skip(int(size))
		if r.err != nil {
			return nil, false, r.err
		}
		payload := module[start:r.off]
		if id == 2 { // the import section
			p, changed, err := renameImports(payload)
			if err != nil {
				return nil, false, fmt.Errorf("import section: %w", err)
			}
			payload, renamed = p, changed
		}
		out = append(out, id)
		out = appendU32(out, uint32(len(payload)))
		out = append(out, payload...)
	}
	return out, renamed, nil
}

func renameImports(sec []byte) ([]byte, bool, error) {
	r := &reader{b: sec}
	n := r.u32()
	out := appendU32(nil, n)
	seen := map[string]int{}
	changed := false
	for i := uint32(0); i < n && r.err == nil; i++ {
		module := r.name()
		name := r.name()
		descStart := r.off
		kind := r.byte()
		switch kind {
		case 0x00: // func: type index
			r.u32()
		case 0x01: // table: reference type, limits
			r.byte()
			r.limits()
		case 0x02: // memory: limits
			r.limits()
		case 0x03: // global: value type, mutability
			r.byte()
			r.byte()
		case 0x04: // tag: attribute, type index
			r.byte()
			r.u32()
		default:
			return nil, false, fmt.Errorf("import %d: unknown kind 0x%02x", i, kind)
		}
		if kind == 0x00 && module == WASIModule {
			seen[name]++
			if c := seen[name]; c > 1 {
				name = dupName(name, c)
				changed = true
			}
		}
		out = appendName(out, module)
		out = appendName(out, name)
		out = append(out, r.b[descStart:r.off]...)
	}
	if r.err != nil {
		return nil, false, r.err
	}
	if r.off != len(sec) {
		return nil, false, errors.New("trailing bytes")
	}
	return out, changed, nil
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail(errors.New("unexpected end of module"))
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

// uleb reads an unsigned LEB128 number of at most 64 bits.
func (r *reader) uleb() uint64 {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
	r.fail(errors.New("LEB128 number too long"))
	return 0
}

func (r *reader) u32() uint32 {
	v := r.uleb()
	if v > 1<<32-1 {
		r.fail(errors.New("u32 out of range"))
	}
	return uint32(v)
}

func (r *reader) skip(n int) {
	if r.err == nil && (n < 0 || n > len(r.b)-r.off) {
		r.fail(errors.New("unexpected end of module"))
	}
	if r.err == nil {
		r.off += n
	}
}

func (r *reader) name() string {
	n := int(r.u32())
	start := r.off
	r.skip(n)
	if r.err != nil {
		return ""
	}
	return string(r.b[start:r.off])
}

// limits reads table or memory limits: flags, minimum, and the maximum if
// flags say so (bit 0); 64-bit and shared memories use the same layout.
func (r *reader) limits() {
	flags := r.byte()
	r.uleb()
	if flags&1 != 0 {
		r.uleb()
	}
	if flags&^0x07 != 0 {
		r.fail(fmt.Errorf("unknown limits flags 0x%02x", flags))
	}
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	return append(appendU32(b, uint32(len(s))), s...)
}
