package meter

// A few helpers to assemble modules by hand, section by section, in the
// binary format (https://webassembly.github.io/spec/core/binary/).

const (
	i32 = 0x7f
	i64 = 0x7e
)

// cat concatenates byte slices and bytes.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case int:
			b = append(b, byte(p))
		case []byte:
			b = append(b, p...)
		case string:
			b = appendName(b, p)
		default:
			panic("cat: unexpected type")
		}
	}
	return b
}

// u32 is v in unsigned LEB128.
func u32(v uint32) []byte { return appendU32(nil, v) }

// s64 is v in signed LEB128.
func s64(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 && c&0x40 == 0 || v == -1 && c&0x40 != 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// vec is a vector: its length, then its items.
func vec(items ...[]byte) []byte {
	b := u32(uint32(len(items)))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

// sec is a section.
func sec(id byte, items ...[]byte) []byte {
	body := cat(vec(items...))
	return cat(id, u32(uint32(len(body))), body)
}

// rawSec is a section whose body is given whole.
func rawSec(id byte, body []byte) []byte {
	return cat(id, u32(uint32(len(body))), body)
}

func buildModule(sections ...[]byte) []byte {
	return cat([]byte("\x00asm\x01\x00\x00\x00"), cat(anys(sections)...))
}

func anys(b [][]byte) []any {
	a := make([]any, len(b))
	for i := range b {
		a[i] = b[i]
	}
	return a
}

func functype(params, results []byte) []byte {
	return cat(0x60, u32(uint32(len(params))), params, u32(uint32(len(results))), results)
}

func importFunc(mod, name string, typ uint32) []byte {
	return cat(mod, name, 0x00, u32(typ))
}

func export(name string, kind byte, idx uint32) []byte {
	return cat(name, kind, u32(idx))
}

// code is a function body: locals (count, type pairs) and instructions,
// to which it adds the final end.
func code(locals []byte, instrs ...any) []byte {
	body := cat(locals, cat(instrs...), 0x0b)
	return cat(u32(uint32(len(body))), body)
}

// noLocals is an empty local declaration vector.
var noLocals = []byte{0}

// Instructions.
func call(f uint32) []byte         { return cat(0x10, u32(f)) }
func localGet(i uint32) []byte     { return cat(0x20, u32(i)) }
func localSet(i uint32) []byte     { return cat(0x21, u32(i)) }
func globalGet(i uint32) []byte    { return cat(0x23, u32(i)) }
func globalSet(i uint32) []byte    { return cat(0x24, u32(i)) }
func i32Const(v int32) []byte      { return cat(0x41, s64(int64(v))) }
func i64Const(v int64) []byte      { return cat(0x42, s64(v)) }
func refFunc(f uint32) []byte      { return cat(0xd2, u32(f)) }
func br(l uint32) []byte           { return cat(0x0c, u32(l)) }
func brIf(l uint32) []byte         { return cat(0x0d, u32(l)) }
func constExpr(e ...any) []byte    { return cat(cat(e...), 0x0b) }
func callIndirect(t uint32) []byte { return cat(0x11, u32(t), 0x00) }

const (
	opBlock   = 0x02
	opLoop    = 0x03
	opIf      = 0x04
	opElse    = 0x05
	opEnd     = 0x0b
	opEmpty   = 0x40 // empty block type
	opI32Add  = 0x6a
	opI32Sub  = 0x6b
	opI32Eqz  = 0x45
	opI32GeU  = 0x4f
	opI64Add  = 0x7c
	opI64Ext  = 0xad // i64.extend_i32_u
	opFuncref = 0x70
)
