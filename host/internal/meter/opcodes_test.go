package meter

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
)

// allFeatures is everything wazero v1.12.0 can validate: what the
// decoder must follow, although the host only enables CoreFeaturesV2.
const allFeatures = api.CoreFeaturesV2 |
	experimental.CoreFeaturesThreads |
	experimental.CoreFeaturesTailCall |
	experimental.CoreFeaturesExtendedConst |
	experimental.CoreFeaturesExceptionHandling |
	experimental.CoreFeaturesTypedFunctionReferences

func allFeaturesConfig() wazero.RuntimeConfig {
	return wazero.NewRuntimeConfigCompiler().WithCoreFeatures(allFeatures)
}

type sinkFunc struct {
	name   string
	typ    uint32
	locals []byte
	body   []byte
}

// kitchenSink is a module with an instruction of every immediate shape
// wazero knows (and a few encodings where it reads a byte and the
// specification a LEB128), each in a function of its own, exported under
// its name. Function 0 is env.double, 1 is nop.
func kitchenSink() ([]byte, []sinkFunc) {
	const (
		tVoid = 0 // () -> ()
		tI32  = 1 // () -> i32
		tPair = 2 // (i32 i32) -> (i32 i32), a multi-value block type
		tTag  = 3 // (i32) -> ()
		tDbl  = 4 // (i32) -> i32
	)
	const fx = 1 // nop
	v128 := func(b byte) []byte { return cat(0xfd, 0x0c, bytes.Repeat([]byte{b}, 16)) }
	memarg := func(align, off uint32) []byte { return cat(u32(align), u32(off)) }
	f32 := func(v float32) []byte { return binary.LittleEndian.AppendUint32([]byte{0x43}, math.Float32bits(v)) }
	f64 := func(v float64) []byte { return binary.LittleEndian.AppendUint64([]byte{0x44}, math.Float64bits(v)) }
	lanes := make([]byte, 16)
	for i := range lanes {
		lanes[i] = byte(2 * i)
	}
	funcs := []sinkFunc{
		{"nop", tVoid, noLocals, cat(0x01)},
		{"mem", tVoid, noLocals, cat(
			i32Const(0), 0x28, memarg(2, 4), 0x1a, // i32.load
			i32Const(0), i64Const(7), 0x3e, memarg(2, 300), // i64.store32, 2-byte offset
			0x3f, 0x00, 0x1a, // memory.size
			i32Const(0), 0x40, 0x00, 0x1a)}, // memory.grow
		{"consts", tVoid, noLocals, cat(f32(1.5), 0x1a, f64(2.5), 0x1a, i64Const(-1234567890123), 0x1a, i32Const(-100000), 0x1a)},
		{"brtable", tVoid, noLocals, cat(opBlock, opEmpty, opBlock, opEmpty, i32Const(1), 0x0e, vec(u32(0), u32(1)), u32(0), opEnd, opEnd)},
		{"select", tVoid, noLocals, cat(
			i32Const(1), i32Const(2), i32Const(0), 0x1b, 0x1a,
			i32Const(1), i32Const(2), i32Const(0), 0x1c, 0x01, i32, 0x1a)},
		{"multivalue", tVoid, noLocals, cat(
			i32Const(1), i32Const(2), opBlock, u32(tPair), opEnd,
			opLoop, u32(tPair), opEnd, // a loop with parameters: the check goes over them
			0x1a, 0x1a)},
		{"if", tVoid, noLocals, cat(i32Const(1), opIf, opEmpty, 0x01, opElse, 0x01, opEnd)},
		{"sat", tVoid, noLocals, cat(f32(1), 0xfc, 0x00, 0x1a, f64(1), 0xfc, 0x07, 0x1a, f32(1), 0xfc, 0x80, 0x00, 0x1a)},
		{"signext", tVoid, noLocals, cat(i32Const(1), 0xc0, 0x1a, i64Const(1), 0xc4, 0x1a)},
		{"bulk", tVoid, noLocals, cat(
			i32Const(0), i32Const(0), i32Const(5), 0xfc, 0x08, 0x01, 0x00, // memory.init 1
			0xfc, 0x09, 0x01, // data.drop 1
			i32Const(0), i32Const(1), i32Const(1), 0xfc, 0x0a, 0x00, 0x00, // memory.copy
			i32Const(0), i32Const(0), i32Const(1), 0xfc, 0x0b, 0x00)}, // memory.fill
		{"table", tVoid, noLocals, cat(
			i32Const(0), i32Const(0), i32Const(1), 0xfc, 0x0c, 0x01, 0x00, // table.init 1 0
			0xfc, 0x0d, 0x01, // elem.drop 1
			i32Const(0), i32Const(1), i32Const(1), 0xfc, 0x0e, 0x00, 0x00, // table.copy
			0xd0, 0x70, i32Const(1), 0xfc, 0x0f, 0x00, 0x1a, // table.grow
			0xfc, 0x10, 0x00, 0x1a, // table.size
			i32Const(0), 0xd0, 0x70, i32Const(1), 0xfc, 0x11, 0x00, // table.fill
			i32Const(0), 0x25, 0x00, 0x1a, // table.get
			i32Const(0), refFunc(fx), 0x26, 0x00, // table.set
			0xd0, 0x6f, 0xd1, 0x1a, // ref.null extern, ref.is_null
			i32Const(0), 0x25, 0x01, 0x1a)}, // table.get 1
		{"simd", tVoid, noLocals, cat(
			v128(1), v128(2), 0xfd, 0x0d, lanes, 0xfd, 0x15, 3, 0x1a, // shuffle, extract_lane
			i32Const(0), 0xfd, 0x00, memarg(4, 0), 0x1a, // v128.load
			i32Const(0), v128(3), 0xfd, 0x54, memarg(0, 0), 1, 0x1a, // v128.load8_lane
			i32Const(16), v128(4), 0xfd, 0x0b, memarg(4, 0), // v128.store
			i32Const(0), 0xfd, 0x5c, memarg(2, 0), // v128.load32_zero
			0xfd, 0x60, 0xfd, 0x80, 0x01, 0xfd, 0x5f, 0x1a, // i8x16.abs, i16x8.abs (LEB: wazero reads 0x80, nop), f64x2.promote_low
			v128(5), i32Const(9), 0xfd, 0x17, 2, 0xfd, 0xff, 0x01, 0x1a)}, // replace_lane, f64x2.convert_low_i32x4_u
		{"atomic", tVoid, noLocals, cat(
			i32Const(0), 0xfe, 0x10, memarg(2, 0), 0x1a, // i32.atomic.load
			0xfe, 0x03, 0x00, // atomic.fence
			i32Const(0), i32Const(1), 0xfe, 0x1e, memarg(2, 0), 0x1a)}, // i32.atomic.rmw.add
		{"catch", tI32, noLocals, cat(
			opBlock, opEmpty,
			opBlock, i32,
			0x1f, opEmpty, vec(cat(0x00, u32(0), u32(0)), cat(0x02, u32(1))), // try_table (catch 0 0) (catch_all 1)
			i32Const(42), 0x08, u32(0), // throw 0
			opEnd,
			i32Const(0),
			opEnd,
			0x0f,
			opEnd,
			i32Const(-1))},
		{"rethrow", tVoid, noLocals, cat(
			opBlock, 0x69, // (result exnref)
			0x1f, opEmpty, vec(cat(0x03, u32(0))), // try_table (catch_all_ref 0)
			i32Const(1), 0x08, u32(0),
			opEnd,
			0x00,
			opEnd,
			0x0a)}, // throw_ref
		{"tail", tVoid, noLocals, cat(0x12, u32(fx))},
		{"tailindirect", tVoid, noLocals, cat(i32Const(0), 0x13, u32(tVoid), 0x00)},
		{"typedrefs", tVoid, vec(cat(u32(1), 0x63, 0x70)), cat(
			refFunc(fx), 0x14, u32(tVoid), // call_ref
			refFunc(fx), 0xd4, 0x1a, // ref.as_non_null
			opBlock, opEmpty, 0xd0, 0x70, 0xd5, u32(0), 0x1a, opEnd, // br_on_null
			opBlock, 0x64, 0x70, refFunc(fx), 0xd6, u32(0), 0x00, opEnd, 0x1a, // br_on_non_null
			0xd0, u32(tVoid), 0x1a, // ref.null $t
			localGet(0), 0x1a)}, // a local of type (ref null func)
		{"globals", tVoid, noLocals, cat(globalGet(6), globalSet(6), globalGet(1), 0x1a, globalGet(5), 0x1a, globalGet(2), 0x1a)},
		{"call", tVoid, noLocals, cat(i32Const(3), call(0), 0x1a, call(fx))},
	}
	var fsec, csec, esec [][]byte
	for i, f := range funcs {
		fsec = append(fsec, u32(f.typ))
		csec = append(csec, code(f.locals, f.body))
		esec = append(esec, export(f.name, 0, uint32(i+1)))
	}
	wasm := buildModule(
		sec(secType, functype(nil, nil), functype(nil, []byte{i32}), functype([]byte{i32, i32}, []byte{i32, i32}),
			functype([]byte{i32}, nil), functype([]byte{i32}, []byte{i32})),
		sec(secImport, importFunc("env", "double", tDbl)),
		sec(secFunction, fsec...),
		sec(secTable,
			cat(opFuncref, 0x01, u32(4), u32(16)),
			cat(0x6f, 0x00, u32(2)),
			cat(0x40, 0x00, opFuncref, 0x00, u32(1), constExpr(refFunc(fx)))), // with an initializer
		sec(secMemory, cat(0x01, u32(1), u32(2))),
		sec(secTag, cat(0x00, u32(tTag))),
		sec(secGlobal,
			cat(i32, 0x00, constExpr(i32Const(2), i32Const(3), opI32Mul)), // extended constant
			cat(i64, 0x00, constExpr(i64Const(-5))),
			cat(0x7b, 0x00, constExpr(v128(7))),
			cat(opFuncref, 0x00, constExpr(refFunc(fx))),
			cat(0x6f, 0x00, constExpr(0xd0, 0x6f)),
			cat(i32, 0x00, constExpr(i32Const(10), i32Const(1), opI32Add)),
			cat(i32, 0x01, constExpr(i32Const(0)))),
		sec(secExport, esec...),
		sec(secElement,
			cat(0, constExpr(i32Const(0)), vec(u32(fx), u32(fx))),
			cat(5, opFuncref, vec(constExpr(refFunc(fx)))),
			cat(3, 0x00, vec(u32(fx)))),
		rawSec(secDataCount, u32(2)),
		sec(secCode, csec...),
		sec(secData,
			cat(0, constExpr(i32Const(0)), "hello"),
			cat(1, "world")),
	)
	return wasm, funcs
}

const opI32Mul = 0x6c

// TestKitchenSink checks the decoder against wazero on every immediate
// shape: wazero accepts the module, metered too, and the functions do the
// same metered or not.
func TestKitchenSink(t *testing.T) {
	ctx := context.Background()
	wasm, funcs := kitchenSink()
	results := map[bool]map[string]string{}
	for _, metered := range []bool{false, true} {
		rt := wazero.NewRuntimeWithConfig(ctx, allFeaturesConfig())
		defer rt.Close(ctx)
		if err := Instantiate(ctx, rt); err != nil {
			t.Fatal(err)
		}
		_, err := rt.NewHostModuleBuilder("env").NewFunctionBuilder().
			WithGoFunction(api.GoFunc(func(ctx context.Context, stack []uint64) { stack[0] *= 2 }),
				[]api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}).
			Export("double").Instantiate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		in := wasm
		if metered {
			if in, err = Instrument(wasm); err != nil {
				t.Fatal(err)
			}
		}
		mod, err := rt.Instantiate(ctx, in)
		if err != nil {
			t.Fatalf("metered %v: %v", metered, err)
		}
		results[metered] = map[string]string{}
		for _, f := range funcs {
			res, err := mod.ExportedFunction(f.name).Call(ctx)
			// Keep the first line of errors: wazero's stack traces
			// name functions by index.
			s := fmt.Sprint(res, err)
			s, _, _ = strings.Cut(s, "\n")
			results[metered][f.name] = s
		}
	}
	for _, f := range funcs {
		if p, m := results[false][f.name], results[true][f.name]; p != m {
			t.Errorf("%s: %s unmetered, %s metered", f.name, p, m)
		}
	}
	if got := results[true]["catch"]; got != "[42] <nil>" {
		t.Errorf("catch = %s, want 42", got)
	}
}

// wellFormed walks the module as Instrument does, but refuses only what
// stops the walk: malformed or truncated parts, which wazero refuses too,
// and parts that would make wazero allocate far more than the module's
// size (too many locals, counts of entries that are not there; wazero
// allocates before it reads). Instructions it does not know end the walk
// of their function only. The fuzz test hands wazero what passes.
func wellFormed(wasm []byte) error {
	_, err := instrument(wasm, false)
	return err
}

// FuzzInstrument checks that Instrument never panics and that a module
// wazero accepts (every feature on) is instrumented into one it accepts.
func FuzzInstrument(f *testing.F) {
	sink, _ := kitchenSink()
	for _, seed := range [][]byte{sink, spinModule(), recursionModule(), sumModule(), tableModule(), importedTableModule()} {
		f.Add(seed)
	}
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, allFeaturesConfig())
	f.Cleanup(func() { rt.Close(ctx) })
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, err := Instrument(wasm)
		if err != nil && !strings.HasPrefix(err.Error(), "meter: ") {
			t.Fatalf("error without the package's prefix: %v", err)
		}
		// Only well-formed inputs are worth wazero's time: it refuses
		// the others, some after seconds and gigabytes (it allocates
		// what counts say before reading the entries).
		if wellFormed(wasm) != nil {
			return
		}
		in, cerr := compile(ctx, rt, wasm)
		if cerr != nil {
			return
		}
		defer in.Close(ctx)
		if err != nil {
			if strings.Contains(err.Error(), "reserved") {
				return
			}
			t.Fatalf("wazero accepts the module, Instrument does not: %v", err)
		}
		compiled, err := compile(ctx, rt, out)
		if err != nil {
			t.Fatalf("wazero accepts the module, not its instrumented version: %v", err)
		}
		compiled.Close(ctx)
	})
}

// compile is rt.CompileModule, with its panics as errors: wazero's
// compiler panics on some modules its validator accepts (see the typed
// select in code.go), which are not Instrument's business.
func compile(ctx context.Context, rt wazero.Runtime, wasm []byte) (m wazero.CompiledModule, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("wazero panicked: %v", r)
		}
	}()
	return rt.CompileModule(ctx, wasm)
}

// TestFuzzSeedsAreValid keeps the fuzz seeds meaningful: wazero must
// accept them, or the fuzzer's main property is never exercised.
func TestFuzzSeedsAreValid(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, allFeaturesConfig())
	defer rt.Close(ctx)
	sink, _ := kitchenSink()
	for i, seed := range [][]byte{sink, spinModule(), recursionModule(), sumModule(), tableModule()} {
		if _, err := rt.CompileModule(ctx, seed); err != nil {
			t.Errorf("seed %d: %v", i, err)
		}
	}
}
