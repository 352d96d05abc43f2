package meter

import (
	"errors"
	"fmt"
)

// The decoder follows wazero v1.12.0's validator
// (internal/wasm/func_validation.go) opcode by opcode, with every feature
// it can enable: an instruction must end where wazero's ends, or the
// rewrite would corrupt the code, or miss a function or global index.
// Where wazero reads a single byte and the specification a LEB128 (the
// 0xfd and 0xfe sub-opcodes, select's type count), so do we. wazero's
// compiler (internal/engine/wazevo/frontend/lower.go) reads immediates as
// its validator does, but for select's reference types: see immSelectT.

// immediates classifies the one-byte opcodes by what follows them.
const (
	immBad      = iota // not an instruction wazero accepts
	immNone            // nothing
	immBlock           // block type (block, if)
	immLoop            // block type, and a fuel check after it
	immEnd             //
	immIndex           // one u32: labels, locals, tables, tags, types
	immIndex2          // two u32: call_indirect, return_call_indirect
	immFunc            // function index: call, return_call, ref.func
	immGlobal          // global index
	immBrTable         // vector of labels, default label
	immMemarg          // align, offset
	immI32             // s32
	immI64             // s64
	immF32             // 4 bytes
	immF64             // 8 bytes
	immSelectT         // select t*
	immRefNull         // heap type
	immTryTable        // block type, catch clauses
	immMisc            // 0xfc u32 sub-opcode
	immSIMD            // 0xfd byte sub-opcode
	immAtomic          // 0xfe byte sub-opcode
)

var immediates = func() (t [256]byte) {
	set := func(lo, hi int, k byte) {
		for op := lo; op <= hi; op++ {
			t[op] = k
		}
	}
	set(0x00, 0x01, immNone) // unreachable, nop
	t[0x02] = immBlock       // block
	t[0x03] = immLoop        // loop
	t[0x04] = immBlock       // if
	t[0x05] = immNone        // else
	// 0x06 try, 0x07 catch, 0x09 rethrow: legacy exception handling,
	// which wazero refuses.
	t[0x08] = immIndex        // throw tag
	t[0x0a] = immNone         // throw_ref
	t[0x0b] = immEnd          // end
	set(0x0c, 0x0d, immIndex) // br, br_if
	t[0x0e] = immBrTable      // br_table
	t[0x0f] = immNone         // return
	t[0x10] = immFunc         // call
	t[0x11] = immIndex2       // call_indirect type table
	t[0x12] = immFunc         // return_call
	t[0x13] = immIndex2       // return_call_indirect type table
	set(0x14, 0x15, immIndex) // call_ref, return_call_ref type
	// 0x18 delegate, 0x19 catch_all: legacy exception handling.
	set(0x1a, 0x1b, immNone)   // drop, select
	t[0x1c] = immSelectT       // select t*
	t[0x1f] = immTryTable      // try_table
	set(0x20, 0x22, immIndex)  // local.get, local.set, local.tee
	set(0x23, 0x24, immGlobal) // global.get, global.set
	set(0x25, 0x26, immIndex)  // table.get, table.set
	set(0x28, 0x3e, immMemarg) // loads and stores
	set(0x3f, 0x40, immIndex)  // memory.size, memory.grow: memory index
	t[0x41] = immI32
	t[0x42] = immI64
	t[0x43] = immF32
	t[0x44] = immF64
	set(0x45, 0xc4, immNone)  // numeric, sign extension
	t[0xd0] = immRefNull      // ref.null
	t[0xd1] = immNone         // ref.is_null
	t[0xd2] = immFunc         // ref.func
	t[0xd4] = immNone         // ref.as_non_null
	set(0xd5, 0xd6, immIndex) // br_on_null, br_on_non_null
	t[0xfc] = immMisc
	t[0xfd] = immSIMD
	t[0xfe] = immAtomic
	return t
}()

// What follows a SIMD sub-opcode.
const (
	simdBad = iota
	simdNone
	simdMemarg
	simdMemargLane
	simdLane
	simd16 // 16 bytes: v128.const, i8x16.shuffle
)

var simd = func() (t [256]byte) {
	for op := range t {
		t[op] = simdNone
	}
	for op := 0x00; op <= 0x0b; op++ { // v128.load*, v128.store
		t[op] = simdMemarg
	}
	t[0x0c] = simd16                   // v128.const
	t[0x0d] = simd16                   // i8x16.shuffle
	for op := 0x15; op <= 0x22; op++ { // extract_lane, replace_lane
		t[op] = simdLane
	}
	for op := 0x54; op <= 0x5b; op++ { // v128.load*_lane, v128.store*_lane
		t[op] = simdMemargLane
	}
	t[0x5c] = simdMemarg // v128.load32_zero
	t[0x5d] = simdMemarg // v128.load64_zero
	// The gaps of the opcode space.
	for _, op := range []byte{0x9a, 0xa2, 0xa5, 0xa6, 0xaf, 0xb0, 0xb2, 0xb3, 0xb4, 0xbb, 0xc2, 0xc5, 0xc6, 0xcf, 0xd0, 0xd2, 0xd3, 0xd4, 0xe2, 0xee} {
		t[op] = simdBad
	}
	return t
}()

// code rewrites the code section: every body gets its checks and its
// function indices shifted, and a new size.
func (m *module) code(r *reader, out []byte) []byte {
	n := r.u32()
	out = appendU32(out, n)
	fn := m.importedFuncs
	for ; n > 0 && r.ok(); n-- {
		body := r.bytes(r.u32())
		if r.err != nil {
			break
		}
		reserved, at := reserve(out)
		next, err := m.body(reserved, body)
		if err == nil {
			next, err = fill(next, at)
		}
		if err != nil {
			if m.strict || errors.Is(err, errTooManyLocals) {
				r.err = &funcError{fn, err}
				break
			}
			next = out // wellFormed goes on with the next function
		}
		out = next
		fn++
	}
	return out
}

// maxLocals bounds the locals of a function. The format allows 2^32-1
// in six bytes, and wazero allocates 8 bytes for each before validating
// anything: a module could make the host allocate 32 GiB. 50000 is V8's
// limit; Go functions have a few dozen.
const maxLocals = 50000

var errTooManyLocals = errors.New("too many locals")

// funcError is an error in the code of a function, by its index in the
// original module.
type funcError struct {
	fn  uint32
	err error
}

func (e *funcError) Error() string { return fmt.Sprintf("meter: function %d: %v", e.fn, e.err) }
func (e *funcError) Unwrap() error { return e.err }

// body appends a function body with its checks: one after the locals
// (unless entryCheck says the first loop's does as well) and one after
// each loop's block type. It copies unchanged runs of code in one go.
func (m *module) body(out, body []byte) ([]byte, error) {
	r := &reader{b: body}
	var locals uint64
	for n := r.u32(); n > 0 && r.ok(); n-- {
		locals += uint64(r.u32())
		valueType(r)
	}
	if r.err != nil {
		return nil, r.err
	}
	if locals > maxLocals {
		return nil, fmt.Errorf("%w: %d, more than %d", errTooManyLocals, locals, maxLocals)
	}
	out = append(out, body[:r.p]...)
	if entryCheck(body, r.p) {
		out = append(out, m.check...)
	}
	mark := r.p // body[mark:r.p] is still to copy
	depth := 1
	for depth > 0 && r.err == nil {
		if r.p >= len(body) {
			return nil, errTruncated
		}
		op := body[r.p]
		r.p++
		switch immediates[op] {
		case immNone:
		case immBlock:
			blockType(r)
			depth++
		case immLoop:
			blockType(r)
			depth++
			out = append(out, body[mark:r.p]...)
			out = append(out, m.check...)
			mark = r.p
		case immEnd:
			depth--
		case immIndex:
			r.skipLEB(5)
		case immIndex2, immMemarg:
			r.skipLEB(5)
			r.skipLEB(5)
		case immFunc:
			at := r.p
			idx := r.u32()
			if r.ok() {
				if n := m.fn(r, idx); n != idx {
					out = append(out, body[mark:at]...)
					out = appendU32(out, n)
					mark = r.p
				}
			}
		case immGlobal:
			m.global(r, r.u32())
		case immBrTable:
			for n := uint64(r.u32()); r.ok(); n-- { // n labels and the default
				r.skipLEB(5)
				if n == 0 {
					break
				}
			}
		case immI32:
			r.skipLEB(5)
		case immI64:
			r.skipLEB(10)
		case immF32:
			r.bytes(4)
		case immF64:
			r.bytes(8)
		case immSelectT:
			if c := r.byte(); c != 1 && r.ok() {
				r.fail(fmt.Errorf("select with %d types", c))
			}
			// wazero's validator reads a reference type's heap type after
			// 0x63 and 0x64, but its compiler skips only the count and
			// that byte and compiles the heap type's bytes as code: code
			// this rewrite would not see, a global.set of the fuel say.
			// Such a module does not compile right anyway.
			if c := r.byte(); (c == 0x63 || c == 0x64) && r.ok() {
				r.fail(fmt.Errorf("select with a reference type (%#x) is not supported: wazero v1.12.0 compiles it wrong", c))
			}
		case immRefNull:
			refNull(r)
		case immTryTable:
			blockType(r)
			depth++
			for n := r.u32(); n > 0 && r.ok(); n-- {
				switch kind := r.byte(); kind {
				case 0x00, 0x01: // catch, catch_ref: tag, label
					r.skipLEB(5)
					r.skipLEB(5)
				case 0x02, 0x03: // catch_all, catch_all_ref: label
					r.skipLEB(5)
				default:
					r.fail(fmt.Errorf("try_table catch kind %#x is not supported", kind))
				}
			}
		case immMisc:
			misc(r)
		case immSIMD:
			switch sub := r.byte(); simd[sub] {
			case simdNone:
			case simdMemarg:
				r.skipLEB(5)
				r.skipLEB(5)
			case simdMemargLane:
				r.skipLEB(5)
				r.skipLEB(5)
				r.byte()
			case simdLane:
				r.byte()
			case simd16:
				r.bytes(16)
			default:
				if r.ok() {
					r.fail(fmt.Errorf("opcode 0xfd %#02x is not supported", sub))
				}
			}
		case immAtomic:
			switch sub := r.byte(); {
			case sub == 0x03: // atomic.fence: a zero byte
				r.byte()
			case sub <= 0x02 || 0x10 <= sub && sub <= 0x4e: // notify, wait, loads, stores, rmw
				r.skipLEB(5)
				r.skipLEB(5)
			default:
				if r.ok() {
					r.fail(fmt.Errorf("opcode 0xfe %#02x is not supported", sub))
				}
			}
		default:
			return nil, fmt.Errorf("opcode %#02x is not supported", op)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.p != len(body) {
		return nil, fmt.Errorf("%d bytes after the end of the function", len(body)-r.p)
	}
	return append(out, body[mark:]...), nil
}

// entryCheck reports whether a function needs a check at its entry: not
// if, from there, it reaches a loop (whose check comes first) through
// straight-line code that calls nothing and branches nowhere. Go's
// functions with a loop start so (global.get $sp, local.set, block,
// loop): this halves the checks of a Go call. The code is checked like
// any other afterwards.
func entryCheck(body []byte, p int) bool {
	r := &reader{b: body, p: p}
	for range 16 {
		switch r.byte() {
		case 0x03: // loop
			return false
		case 0x02: // block
			blockType(r)
		case 0x01, 0x1a: // nop, drop
		case 0x20, 0x21, 0x22, 0x23, 0x24, 0x41: // local.*, global.*, i32.const
			r.skipLEB(5)
		case 0x42: // i64.const
			r.skipLEB(10)
		default:
			return true
		}
		if !r.ok() {
			return true
		}
	}
	return true
}

// blockType skips a block type as wazero's DecodeBlockType reads it: an
// s33 that is a value type, the empty type or a type index, and a heap
// type after the ref and ref null prefixes.
func blockType(r *reader) {
	if v := r.s33(); v == -29 || v == -28 { // 0x63, 0x64
		r.s33()
	}
}

// refNull skips ref.null's heap type: funcref, externref or exnref in a
// byte, or else a type index.
func refNull(r *reader) {
	switch c := r.byte(); c {
	case 0x70, 0x6f, 0x69:
	default:
		if r.ok() {
			r.p--
			r.skipLEB(5)
		}
	}
}

// misc skips a 0xfc instruction: saturating truncation, bulk memory,
// tables.
func misc(r *reader) {
	sub := r.u32()
	switch {
	case sub <= 0x07: // trunc_sat
	case sub == 0x08, sub == 0x0a, sub == 0x0c, sub == 0x0e: // memory.init, memory.copy, table.init, table.copy
		r.skipLEB(5)
		r.skipLEB(5)
	case sub <= 0x11: // data.drop, memory.fill, elem.drop, table.grow, table.size, table.fill
		r.skipLEB(5)
	default:
		if r.ok() {
			r.fail(fmt.Errorf("opcode 0xfc %d is not supported", sub))
		}
	}
}

// constExpr copies a constant expression, up to its end, to out, with
// its function indices shifted; it refuses global indices out of range.
// The instructions are those wazero allows in constant expressions
// (extended constants included).
func (m *module) constExpr(r *reader, out []byte) []byte {
	mark := r.p
	for r.ok() {
		switch op := r.byte(); op {
		case 0x0b: // end
			return append(out, r.b[mark:r.p]...)
		case 0x41: // i32.const
			r.skipLEB(5)
		case 0x42: // i64.const
			r.skipLEB(10)
		case 0x43: // f32.const
			r.bytes(4)
		case 0x44: // f64.const
			r.bytes(8)
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // i32 and i64 add, sub, mul
		case 0x23: // global.get
			m.global(r, r.u32())
		case 0xd0: // ref.null
			refNull(r)
		case 0xd2: // ref.func
			at := r.p
			idx := r.u32()
			if r.ok() {
				if n := m.fn(r, idx); n != idx {
					out = append(out, r.b[mark:at]...)
					out = appendU32(out, n)
					mark = r.p
				}
			}
		case 0xfd: // v128.const
			if r.byte() != 0x0c && r.ok() {
				r.fail(fmt.Errorf("SIMD opcode in a constant expression is not supported"))
			}
			r.bytes(16)
		default:
			if r.ok() {
				r.fail(fmt.Errorf("opcode %#02x in a constant expression is not supported", op))
			}
		}
	}
	return out
}

// funcIndices copies a vector of function indices, shifted.
func (m *module) funcIndices(r *reader, out []byte) []byte {
	n := r.u32()
	out = appendU32(out, n)
	for ; n > 0 && r.ok(); n-- {
		out = appendU32(out, m.fn(r, r.u32()))
	}
	return out
}

// elements rewrites the element section, whose segments come in eight
// forms (flags 0 to 7): active or passive or declarative, with function
// indices or constant expressions, with or without a table index and a
// type.
func (m *module) elements(r *reader, out []byte) []byte {
	n := r.u32()
	out = appendU32(out, n)
	for ; n > 0 && r.ok(); n-- {
		start := r.p
		flags := r.u32()
		if flags > 7 {
			r.fail(fmt.Errorf("element segment flags %d are not supported", flags))
			break
		}
		if flags&3 == 2 { // active with a table index
			r.skipLEB(5)
		}
		out = append(out, r.b[start:r.p]...)
		if flags&1 == 0 { // active: an offset
			out = m.constExpr(r, out)
		}
		start = r.p
		if flags&3 != 0 { // an element kind (0x00) or a reference type
			if flags&4 == 0 {
				r.byte()
			} else {
				valueType(r)
			}
		}
		out = append(out, r.b[start:r.p]...)
		if flags&4 == 0 {
			out = m.funcIndices(r, out)
		} else {
			k := r.u32()
			out = appendU32(out, k)
			for ; k > 0 && r.ok(); k-- {
				out = m.constExpr(r, out)
			}
		}
	}
	return out
}

// data copies the data section, checking the global indices of offsets.
func (m *module) data(r *reader, out []byte) []byte {
	n := r.u32()
	out = appendU32(out, n)
	for ; n > 0 && r.ok(); n-- {
		start := r.p
		flags := r.u32()
		switch flags {
		case 0, 1: // active, passive
		case 2: // active with a memory index
			r.skipLEB(5)
		default:
			r.fail(fmt.Errorf("data segment flags %d are not supported", flags))
		}
		out = append(out, r.b[start:r.p]...)
		if flags != 1 && r.ok() { // active: an offset
			out = m.constExpr(r, out)
		}
		start = r.p
		r.bytes(r.u32())
		out = append(out, r.b[start:r.p]...)
	}
	return out
}

// writeCustom copies a custom section; the name section, whose function
// indices changed, is rewritten, or dropped if it is not what it should be
// (it only serves stack traces; wazero would refuse the module).
func (m *module) writeCustom(out, body []byte) ([]byte, error) {
	r := &reader{b: body}
	name := r.name()
	if r.err != nil && !m.strict {
		return nil, fmt.Errorf("meter: custom section: %w", r.err)
	}
	if r.err != nil || string(name) != "name" {
		out = append(out, secCustom)
		out = appendU32(out, uint32(len(body)))
		return append(out, body...), nil
	}
	start := len(out)
	out = append(out, secCustom)
	out, at := reserve(out)
	out = append(out, body[:r.p]...)
	out = m.names(r, out)
	err := r.end()
	if err == nil {
		out, err = fill(out, at)
	}
	if err != nil {
		if !m.strict {
			return nil, fmt.Errorf("meter: name section: %w", err)
		}
		return out[:start], nil
	}
	return out, nil
}

// names rewrites the subsections of the name section: the module name is
// kept, function and local names get the new function indices, the
// others (labels, types, tables... of the extended name section) are
// dropped.
func (m *module) names(r *reader, out []byte) []byte {
	for r.p < len(r.b) && r.ok() {
		id := r.byte()
		sub := &reader{b: r.bytes(r.u32())}
		if r.err != nil {
			break
		}
		if id > 2 {
			continue
		}
		out = append(out, id)
		var at int
		out, at = reserve(out)
		if id == 0 {
			out = append(out, sub.b...)
			sub.p = len(sub.b)
		} else {
			n := sub.u32()
			out = appendU32(out, n)
			for ; n > 0 && sub.ok(); n-- {
				out = appendU32(out, m.fn(sub, sub.u32()))
				start := sub.p
				if id == 1 {
					sub.name()
				} else {
					for k := sub.u32(); k > 0 && sub.ok(); k-- { // local index, name
						sub.u32()
						sub.name()
					}
				}
				out = append(out, sub.b[start:sub.p]...)
			}
		}
		var err error
		if err = sub.end(); err == nil {
			out, err = fill(out, at)
		}
		if err != nil {
			r.fail(err)
		}
	}
	return out
}
