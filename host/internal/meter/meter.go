// Package meter makes an untrusted WebAssembly module yield to its host
// regularly, so that the host can stop it when a call's context is done
// and so that it never runs long without reaching a Go safe point.
//
// Why not wazero's own WithCloseOnContextDone: it makes the compiler call
// out of native code, to Go and back, at every loop header, and Go's wasm
// backend wraps every function body in a loop (to resume goroutines), so
// every function call in a Go guest pays that exit: a ranged get took
// 250 µs of guest CPU with it, 33 µs without. It also starts a goroutine
// per call.
//
// Instead, Instrument rewrites the module before it is compiled: a fuel
// counter (a global the module cannot name) is decremented at the start
// of every function body and of every loop body, which compiles to a load,
// a subtraction, a store and a branch; only when it runs out does the code
// call the host (the import ImportModule.ImportName, which the module
// cannot name either), which checks the call's context and hands out
// more fuel. Every loop iteration and every call passes a check, so a
// module cannot run more than a refill's worth of checks without calling
// the host: recursion without loops included.
//
// The module is untrusted, so it must not reach the fuel or the import:
// the fuel comes after its globals and an index that names it is refused
// (the module's own code never could have used it: it was out of range);
// the import comes after its imported functions and every function index
// of the module is shifted past it. What the rewrite reads must be read
// as wazero reads it, or code could hide from it: the decoder follows
// wazero v1.12.0 (code.go says where wazero's validator and compiler
// disagree, and what is refused for it). Check it again when upgrading
// wazero: TestKitchenSink and FuzzInstrument help.
//
// The host side (Instantiate, Yield, Fuel) is in host.go.
package meter

import (
	"bytes"
	"fmt"
	"math"
)

// The names the instrumented module uses to reach the host and the host
// to reach the fuel. A module that already uses them is refused.
const (
	// ImportModule and ImportName name the host function the instrumented
	// code calls when it runs out of fuel: () -> i32, the new fuel.
	ImportModule = "ocistore:meter"
	ImportName   = "yield"
	// FuelExport is the name under which the fuel global, a mutable i32,
	// is exported, so that the host can set it to 0 to make the guest
	// yield at its next check (see Fuel.Watch).
	FuelExport = "ocistore:meter/fuel"
)

// Section ids (https://webassembly.github.io/spec/core/binary/modules.html).
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13 // exception handling
)

// rank orders sections as the binary format requires: by id, except the
// tag section (between memory and global) and the data count section
// (between element and code). Custom sections go anywhere.
func rank(id byte) int {
	switch id {
	case secTag:
		return 10*secMemory + 5
	case secDataCount:
		return 10*secElement + 5
	}
	return 10 * int(id)
}

// module is what Instrument learns of its input before rewriting it.
type module struct {
	sections []section

	types           uint32 // types in the type section (rec groups unrolled)
	importedFuncs   uint32
	importedGlobals uint32
	funcs           uint32 // imported and defined: the original function index space
	globals         uint32 // imported and defined: the original global index space

	// What Instrument adds: the type () -> i32, the import (the first
	// function index after the imported ones, which shifts every defined
	// function by one) and the fuel global (after all the others).
	yieldType, yield, fuel uint32

	// check is the code inserted at every function and loop entry.
	check []byte

	// strict is off only for wellFormed (opcodes_test.go), for the fuzz test.
	strict bool
	// lax keeps indices out of range as they are, where wazero never
	// checks them (an imported table's initializer).
	lax bool
}

type section struct {
	id   byte
	body []byte
}

// Instrument returns wasm with a fuel check at the start of every function
// body and every loop body, the fuel global exported as FuelExport and
// the import ImportModule.ImportName added. It refuses a module that
// uses these names, that names a global or function that does not exist
// (after the rewrite, it could exist: the fuel or the import), or that
// uses an instruction it does not know (the error names it). It checks no
// more than it must: wazero validates the result.
func Instrument(wasm []byte) ([]byte, error) { return instrument(wasm, true) }

func instrument(wasm []byte, strict bool) ([]byte, error) {
	m, err := scan(wasm, strict)
	if err != nil {
		return nil, err
	}
	m.yield = m.importedFuncs
	m.fuel = m.globals
	m.check = checkCode(m.fuel, m.yield)

	// One buffer: the input, plus the checks (one per function, about one
	// per loop, loops being roughly as many as functions in Go code), plus
	// the new entries.
	defined := m.funcs - m.importedFuncs
	out := make([]byte, 0, len(wasm)+3*int(defined)*len(m.check)+256)
	out = append(out, wasm[:8]...)

	// The sections Instrument adds to, and creates when they are missing,
	// in order.
	extended := []byte{secType, secImport, secGlobal, secExport}
	var done [secTag + 1]bool
	addMissing := func(before int) error {
		for _, id := range extended {
			if !done[id] && rank(id) < before {
				if out, err = m.writeSection(out, section{id: id}); err != nil {
					return err
				}
				done[id] = true
			}
		}
		return nil
	}
	for _, s := range m.sections {
		if s.id != secCustom {
			if err := addMissing(rank(s.id)); err != nil {
				return nil, err
			}
			done[s.id] = true
		}
		if out, err = m.writeSection(out, s); err != nil {
			return nil, err
		}
	}
	if err := addMissing(math.MaxInt); err != nil {
		return nil, err
	}
	return out, nil
}

// checkCode is the fuel check:
//
//	global.get $fuel  i32.const 1  i32.sub  global.set $fuel
//	global.get $fuel  i32.const 1  i32.lt_s
//	if  call $yield  global.set $fuel  end
//
// It leaves the operand stack as it found it, so it is valid at the start
// of any function or loop, whatever the loop's parameters. There is no
// global.tee, but wazero's compiler reuses the value just stored for the
// second global.get: the check compiles to load, sub, store, compare and
// branch. The test is fuel < 1 rather than == 0 because the host may set
// the fuel to 0 while the guest runs (see Fuel.Watch): the next decrement
// makes it negative, and that must yield too.
func checkCode(fuel, yield uint32) []byte {
	c := []byte{0x23}
	c = appendU32(c, fuel)
	c = append(c, 0x41, 0x01, 0x6b, 0x24)
	c = appendU32(c, fuel)
	c = append(c, 0x23)
	c = appendU32(c, fuel)
	c = append(c, 0x41, 0x01, 0x48, 0x04, 0x40, 0x10)
	c = appendU32(c, yield)
	c = append(c, 0x24)
	c = appendU32(c, fuel)
	return append(c, 0x0b)
}

// scan splits the module into sections, checks their order and counts
// what the rewrite needs: types, imported functions and globals,
// functions and globals.
func scan(wasm []byte, strict bool) (*module, error) {
	if len(wasm) < 8 || !bytes.Equal(wasm[:8], []byte{0, 'a', 's', 'm', 1, 0, 0, 0}) {
		return nil, fmt.Errorf("meter: not a WebAssembly 1.0 binary module")
	}
	m := &module{strict: strict}
	r := reader{b: wasm, p: 8}
	last := 0
	for r.p < len(wasm) {
		id := r.byte()
		body := r.bytes(r.u32())
		if r.err != nil {
			return nil, fmt.Errorf("meter: section %d: %w", id, r.err)
		}
		if id > secTag {
			return nil, fmt.Errorf("meter: section id %d is not supported", id)
		}
		if id != secCustom {
			if rank(id) <= last {
				return nil, fmt.Errorf("meter: section %d is out of order or repeated", id)
			}
			last = rank(id)
		}
		m.sections = append(m.sections, section{id, body})

		var err error
		s := reader{b: body}
		switch id {
		case secType:
			err = m.countTypes(&s)
		case secImport:
			err = m.scanImports(&s)
		case secFunction:
			m.funcs = s.u32()
			for n := m.funcs; n > 0 && s.ok(); n-- {
				s.u32()
			}
			err = s.end()
		case secGlobal:
			m.globals = s.u32()
			err = s.err
		}
		if err != nil {
			return nil, fmt.Errorf("meter: section %d: %w", id, err)
		}
	}
	var overflow bool
	if m.funcs, overflow = add(m.funcs, m.importedFuncs); overflow {
		return nil, fmt.Errorf("meter: too many functions")
	}
	if m.globals, overflow = add(m.globals, m.importedGlobals); overflow || m.globals == math.MaxUint32 {
		return nil, fmt.Errorf("meter: too many globals")
	}
	if m.types == math.MaxUint32 {
		return nil, fmt.Errorf("meter: too many types")
	}
	m.yieldType = m.types
	return m, nil
}

func add(a, b uint32) (uint32, bool) {
	s := a + b
	return s, s < a
}

func (m *module) countTypes(r *reader) error {
	n := r.u32()
	for i := uint32(0); i < n && r.ok(); i++ {
		k := uint32(1)
		if r.p < len(r.b) && r.b[r.p] == 0x4e { // a recursion group
			r.p++
			k = r.u32()
		}
		for j := uint32(0); j < k && r.ok(); j++ {
			if r.byte() != 0x60 {
				r.fail(fmt.Errorf("type %d is not a function type", m.types))
			}
			for range 2 { // parameters, results
				for c := r.u32(); c > 0 && r.ok(); c-- {
					valueType(r)
				}
			}
			m.types++
		}
	}
	return r.end()
}

// scanImports counts the imported functions and globals and refuses the
// module if it imports from ImportModule: the import Instrument adds must
// be the only way to the host's yield.
func (m *module) scanImports(r *reader) error {
	n := r.u32()
	for i := uint32(0); i < n && r.ok(); i++ {
		mod := r.name()
		r.name()
		kind := r.byte()
		if r.ok() && string(mod) == ImportModule && m.strict {
			return fmt.Errorf("the module imports from %q, which is reserved", ImportModule)
		}
		switch kind {
		case 0x00:
			m.importedFuncs++
		case 0x03:
			m.importedGlobals++
		}
		importDesc(r, kind, skipper, nil)
	}
	return r.end()
}

// skipper walks constant expressions before the counts are known: it
// shifts nothing and refuses nothing.
var skipper = &module{importedFuncs: math.MaxUint32, funcs: math.MaxUint32, globals: math.MaxUint32}

// end reports the reader's error, or bytes left over.
func (r *reader) end() error {
	if r.err == nil && r.p != len(r.b) {
		r.err = fmt.Errorf("%d bytes after the end", len(r.b)-r.p)
	}
	return r.err
}

// valueType skips a value type: one byte, or a reference type's prefix and
// heap type (typed function references).
func valueType(r *reader) {
	if c := r.byte(); c == 0x63 || c == 0x64 {
		r.s33()
	}
}

// importDesc copies the description of an import of kind to out; m
// rewrites the constant expression of a table.
func importDesc(r *reader, kind byte, m *module, out []byte) []byte {
	start := r.p
	switch kind {
	case 0x00: // function: type index
		r.u32()
	case 0x01: // table
		// wazero reads an initializer on an imported table without
		// checking its indices (nor evaluating it: the table is the
		// exporter's), so none is refused there; those in range are
		// shifted all the same.
		lax := *m
		lax.lax = true
		return tableType(r, &lax, out)
	case 0x02: // memory
		limits(r)
	case 0x03: // global
		valueType(r)
		r.byte()
	case 0x04: // tag: attribute, type index
		r.byte()
		r.u32()
	default:
		r.fail(fmt.Errorf("import kind %#x is not supported", kind))
	}
	return append(out, r.b[start:r.p]...)
}

// tableType copies a table type to out, as wazero reads it: an optional
// 0x40 0x00 that announces an initializer, the reference type, the limits,
// the initializer.
func tableType(r *reader, m *module, out []byte) []byte {
	start := r.p
	c := r.byte()
	init := c == 0x40
	if init {
		if r.byte() != 0 {
			r.fail(fmt.Errorf("malformed table type"))
		}
		c = r.byte()
	}
	if c == 0x63 || c == 0x64 {
		r.s33()
	}
	limits(r)
	out = append(out, r.b[start:r.p]...)
	if init {
		out = m.constExpr(r, out)
	}
	return out
}

func limits(r *reader) {
	flags := r.byte()
	if flags > 3 {
		r.fail(fmt.Errorf("limits flags %#x are not supported", flags))
	}
	r.skipLEB(5)
	if flags&1 != 0 {
		r.skipLEB(5)
	}
}

// fn maps an original function index to its new one: the added import
// comes after the imported functions. An index out of range is refused:
// shifted, it could become valid.
func (m *module) fn(r *reader, idx uint32) uint32 {
	if idx >= m.funcs {
		if m.lax {
			return idx
		}
		m.refuse(r, fmt.Errorf("function index %d is out of range", idx))
		return idx
	}
	if idx >= m.importedFuncs {
		return idx + 1
	}
	return idx
}

// global refuses a global index out of range: the fuel is the first index
// after the original globals.
func (m *module) global(r *reader, idx uint32) {
	if idx >= m.globals && !m.lax {
		m.refuse(r, fmt.Errorf("global index %d is out of range", idx))
	}
}

// refuse fails the walk for a module that is well formed but that
// Instrument refuses.
func (m *module) refuse(r *reader, err error) {
	if m.strict {
		r.fail(err)
	}
}

// writeSection appends s, rewritten, to out. A section with no body is
// one that Instrument creates.
func (m *module) writeSection(out []byte, s section) ([]byte, error) {
	if s.id == secCustom {
		return m.writeCustom(out, s.body)
	}
	out = append(out, s.id)
	out, at := reserve(out)
	r := &reader{b: s.body}
	var n uint32
	switch s.id {
	case secType:
		_, out = count(r, out, 1)
		out = append(out, r.b[r.p:]...) // scan has read them
		r.p = len(r.b)
		out = append(out, 0x60, 0x00, 0x01, 0x7f) // () -> i32
	case secImport:
		for n, out = count(r, out, 1); n > 0 && r.ok(); n-- {
			start := r.p
			r.name()
			r.name()
			kind := r.byte()
			out = append(out, r.b[start:r.p]...)
			out = importDesc(r, kind, m, out)
		}
		out = appendName(out, ImportModule)
		out = appendName(out, ImportName)
		out = append(out, 0x00)
		out = appendU32(out, m.yieldType)
	case secTable:
		for n, out = count(r, out, 0); n > 0 && r.ok(); n-- {
			out = tableType(r, m, out)
		}
	case secGlobal:
		for n, out = count(r, out, 1); n > 0 && r.ok(); n-- {
			start := r.p
			valueType(r)
			r.byte() // mutability
			out = append(out, r.b[start:r.p]...)
			out = m.constExpr(r, out)
		}
		out = append(out, 0x7f, 0x01, 0x41, 0x00, 0x0b) // mut i32 = i32.const 0
	case secExport:
		for n, out = count(r, out, 1); n > 0 && r.ok(); n-- {
			start := r.p
			name := r.name()
			kind := r.byte()
			if r.ok() && string(name) == FuelExport {
				m.refuse(r, fmt.Errorf("the module exports %q, which is reserved", FuelExport))
			}
			out = append(out, r.b[start:r.p]...)
			idx := r.u32()
			switch kind {
			case 0x00:
				idx = m.fn(r, idx)
			case 0x03:
				m.global(r, idx)
			}
			out = appendU32(out, idx)
		}
		out = appendName(out, FuelExport)
		out = append(out, 0x03)
		out = appendU32(out, m.fuel)
	case secStart:
		out = appendU32(out, m.fn(r, r.u32()))
	case secElement:
		out = m.elements(r, out)
	case secCode:
		out = m.code(r, out)
	case secData:
		out = m.data(r, out)
	case secTag:
		// Nothing to change, but wazero allocates what the count says:
		// see that the entries are there.
		for n := r.u32(); n > 0 && r.ok(); n-- {
			r.byte() // attribute
			r.u32()  // type
		}
		out = append(out, r.b...)
	default: // function (scan read it), memory, data count: nothing to change
		out = append(out, r.b...)
		r.p = len(r.b)
	}
	if err := r.end(); err != nil {
		if _, ok := err.(*funcError); ok {
			return nil, err // it says where
		}
		return nil, fmt.Errorf("meter: section %d: %w", s.id, err)
	}
	return fill(out, at)
}

// count reads the length of a vector and writes it with extra more
// entries; a section Instrument creates has none.
func count(r *reader, out []byte, extra uint32) (uint32, []byte) {
	if r.b == nil {
		return 0, appendU32(out, extra)
	}
	n := r.u32()
	if n > math.MaxUint32-extra {
		r.fail(fmt.Errorf("too many entries"))
	}
	return n, appendU32(out, n+extra)
}
