package meter

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// realGuest is the Go guest the host embeds (`make guest` copies it
// there).
const realGuest = "../../guest.wasm"

// rig runs modules, instrumented or not, under wazero with the host's
// Yield (or a stand-in) and a few host functions of their own: env.double
// (i32) -> i32, env.sleep () (200 ms, deaf to the context).
type rig struct {
	t      *testing.T
	rt     wazero.Runtime
	yields atomic.Int64
}

func newRig(t *testing.T) *rig {
	ctx := context.Background()
	r := &rig{t: t, rt: wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())}
	t.Cleanup(func() { r.rt.Close(ctx) })
	_, err := r.rt.NewHostModuleBuilder(ImportModule).
		NewFunctionBuilder().
		WithGoFunction(api.GoFunc(func(ctx context.Context, stack []uint64) {
			r.yields.Add(1)
			Yield(ctx, stack)
		}), nil, []api.ValueType{api.ValueTypeI32}).
		Export(ImportName).
		Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.rt.NewHostModuleBuilder("env").
		NewFunctionBuilder().
		WithGoFunction(api.GoFunc(func(ctx context.Context, stack []uint64) {
			stack[0] = uint64(2 * uint32(stack[0]))
		}), []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}).
		Export("double").
		NewFunctionBuilder().
		WithGoFunction(api.GoFunc(func(ctx context.Context, stack []uint64) {
			time.Sleep(200 * time.Millisecond)
		}), nil, nil).
		Export("sleep").
		Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// load instantiates wasm, instrumented first if meter.
func (r *rig) load(wasm []byte, meter bool) api.Module {
	r.t.Helper()
	ctx := context.Background()
	if meter {
		var err error
		if wasm, err = Instrument(wasm); err != nil {
			r.t.Fatal(err)
		}
	}
	compiled, err := r.rt.CompileModule(ctx, wasm)
	if err != nil {
		r.t.Fatal(err)
	}
	mod, err := r.rt.InstantiateModule(ctx, compiled, wazero.NewModuleConfig().WithName(""))
	if err != nil {
		r.t.Fatal(err)
	}
	return mod
}

// callWithin calls f of mod with ctx, failing the test if that takes more
// than 10 s (a guest that does not stop spins on: the test binary ends
// anyway).
func callWithin(t *testing.T, ctx context.Context, mod api.Module, f string, params ...uint64) ([]uint64, error) {
	t.Helper()
	type result struct {
		res []uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := mod.ExportedFunction(f).Call(ctx, params...)
		done <- result{res, err}
	}()
	select {
	case r := <-done:
		return r.res, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10 s", f)
		return nil, nil
	}
}

// spin loops forever: loop br 0 end.
func spinModule() []byte {
	return buildModule(
		sec(secType, functype(nil, nil)),
		sec(secFunction, u32(0)),
		sec(secExport, export("spin", 0, 0)),
		sec(secCode, code(noLocals, opLoop, opEmpty, br(0), opEnd)),
	)
}

// fib calls itself twice per call, with no loop: (fib n) makes 2^n calls.
func recursionModule() []byte {
	return buildModule(
		sec(secType, functype([]byte{i32}, []byte{i32})),
		sec(secFunction, u32(0)),
		sec(secExport, export("fib", 0, 0)),
		sec(secCode, code(noLocals,
			localGet(0), opI32Eqz, opIf, i32,
			i32Const(1),
			opElse,
			localGet(0), i32Const(1), opI32Sub, call(0),
			localGet(0), i32Const(1), opI32Sub, call(0),
			opI32Add,
			opEnd)),
	)
}

// sum(n) is 0 + 1 + ... + n-1, in a loop whose header runs n+1 times,
// behind a block: the entry check is left out.
func sumModule() []byte {
	return buildModule(
		sec(secType, functype([]byte{i32}, []byte{i64})),
		sec(secFunction, u32(0)),
		sec(secExport, export("sum", 0, 0)),
		sec(secCode, code(vec(cat(1, i32), cat(1, i64)),
			opBlock, opEmpty,
			opLoop, opEmpty,
			localGet(1), localGet(0), opI32GeU, brIf(1),
			localGet(2), localGet(1), opI64Ext, opI64Add, localSet(2),
			localGet(1), i32Const(1), opI32Add, localSet(1),
			br(0),
			opEnd,
			opEnd,
			localGet(2))),
	)
}

func TestCancelStopsALoop(t *testing.T) {
	r := newRig(t)
	mod := r.load(spinModule(), true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := callWithin(t, ctx, mod, "spin")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("spin: %v, want context.DeadlineExceeded", err)
	}
	t.Logf("stopped %v after the deadline, after %d yields", time.Since(start)-50*time.Millisecond, r.yields.Load())
}

func TestCancelStopsRecursion(t *testing.T) {
	r := newRig(t)
	mod := r.load(recursionModule(), true)
	// Unmetered, it computes (the module is right).
	if res, err := r.load(recursionModule(), false).ExportedFunction("fib").Call(context.Background(), 10); err != nil || res[0] != 1024 {
		t.Fatalf("fib 10 = %v, %v; want 1024", res, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := callWithin(t, ctx, mod, "fib", 62) // 2^62 calls
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fib 62: %v, want context.DeadlineExceeded", err)
	}
}

// TestWatch stops a guest that spends its time in a host function deaf to
// the context: without Watch, it would only yield Refill sleeps later.
func TestWatch(t *testing.T) {
	r := newRig(t)
	wasm := buildModule(
		sec(secType, functype(nil, nil)),
		sec(secImport, importFunc("env", "sleep", 0)),
		sec(secFunction, u32(0)),
		sec(secExport, export("nap", 0, 1)),
		sec(secCode, code(noLocals, opLoop, opEmpty, call(0), br(0), opEnd)),
	)
	mod := r.load(wasm, true)
	fuel, err := FuelOf(mod)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	stop := fuel.Watch(ctx)
	defer stop()
	start := time.Now()
	_, err = callWithin(t, ctx, mod, "nap")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nap: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("nap stopped after %v, want about 400ms", d)
	}
	if _, err := FuelOf(r.load(spinModule(), false)); err == nil {
		t.Fatal("Fuel found fuel in a module that was not instrumented")
	}
}

// TestSameResults runs the sum loop metered and not, and counts the
// yields: a check per loop iteration, none at entry.
func TestSameResults(t *testing.T) {
	r := newRig(t)
	plain, metered := r.load(sumModule(), false), r.load(sumModule(), true)
	for _, n := range []uint64{0, 1, 10, Refill - 1, Refill, 3*Refill + 7, 1_000_000} {
		want, err := plain.ExportedFunction("sum").Call(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		if want[0] != n*(n-1)/2 && n > 0 {
			t.Fatalf("sum %d = %d unmetered: the test module is wrong", n, want[0])
		}
		got, err := metered.ExportedFunction("sum").Call(context.Background(), n)
		if err != nil || got[0] != want[0] {
			t.Fatalf("sum %d = %v, %v metered; want %d", n, got, err, want[0])
		}
	}
	// Yields, counted on fresh instances (fuel carries over from call to
	// call).
	for _, n := range []uint64{0, Refill - 1, Refill, Refill + 1, 5 * Refill} {
		mod := r.load(sumModule(), true)
		before := r.yields.Load()
		if _, err := mod.ExportedFunction("sum").Call(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		// n+1 checks, from fuel 0: yields at checks 1, Refill+1, 2*Refill+1...
		checks := n + 1
		if got, want := r.yields.Load()-before, int64((checks-1)/Refill+1); got != want {
			t.Errorf("sum %d: %d yields, want %d", n, got, want)
		}
	}
}

// tableModule exercises every place a function index hides: calls, an
// imported function before the defined ones, exports, the start function,
// element segments of all eight forms, ref.func in code, in elements and
// in a global's initializer, call_indirect and table.set.
//
// Functions: 0 env.double (import); 1 one, 2 two, 3 three, 4 four (return
// their number); 5 dispatch(i) calls table[i]; 6 start sets $g to
// double(7); 7 started returns $g; 8 viaglobal stores $f (ref.func four)
// in table[7] and calls it; 9 isnull is ref.is_null (ref.func two).
func tableModule() []byte {
	const (
		tVoidI32 = 0 // () -> i32
		tI32I32  = 1 // (i32) -> i32
		tVoid    = 2 // () -> ()
	)
	return buildModule(
		sec(secType, functype(nil, []byte{i32}), functype([]byte{i32}, []byte{i32}), functype(nil, nil)),
		sec(secImport, importFunc("env", "double", tI32I32)),
		sec(secFunction, u32(tVoidI32), u32(tVoidI32), u32(tVoidI32), u32(tVoidI32), u32(tI32I32), u32(tVoid), u32(tVoidI32), u32(tVoidI32), u32(tVoidI32)),
		sec(secTable, cat(opFuncref, 0x00, u32(8))),
		sec(secGlobal,
			cat(i32, 0x01, constExpr(i32Const(0))),
			cat(opFuncref, 0x00, constExpr(refFunc(4)))),
		sec(secExport,
			export("one", 0, 1), export("two", 0, 2), export("three", 0, 3), export("four", 0, 4),
			export("dispatch", 0, 5), export("started", 0, 7), export("viaglobal", 0, 8),
			export("isnull", 0, 9), export("double", 0, 0), export("g", 3, 0)),
		rawSec(secStart, u32(6)),
		sec(secElement,
			cat(0, constExpr(i32Const(0)), vec(u32(1), u32(2))),                           // active, table 0
			cat(1, 0x00, vec(u32(1))),                                                     // passive
			cat(2, u32(0), constExpr(i32Const(4)), 0x00, vec(u32(4))),                     // active, table index
			cat(3, 0x00, vec(u32(9))),                                                     // declarative
			cat(4, constExpr(i32Const(2)), vec(constExpr(refFunc(3)))),                    // active, expressions
			cat(5, opFuncref, vec(constExpr(refFunc(1)), constExpr(0xd0, opFuncref))),     // passive, expressions
			cat(6, u32(0), constExpr(i32Const(5)), opFuncref, vec(constExpr(refFunc(2)))), // active, table index, expressions
			cat(7, opFuncref, vec(constExpr(refFunc(2)))),                                 // declarative, expressions
		),
		sec(secCode,
			code(noLocals, i32Const(1)),
			code(noLocals, i32Const(2)),
			code(noLocals, i32Const(3)),
			code(noLocals, i32Const(4)),
			code(noLocals, localGet(0), callIndirect(tVoidI32)),
			code(noLocals, i32Const(7), call(0), globalSet(0)),
			code(noLocals, globalGet(0)),
			code(noLocals, i32Const(7), globalGet(1), 0x26, 0x00, i32Const(7), callIndirect(tVoidI32)),
			code(noLocals, refFunc(2), 0xd1),
		),
	)
}

func TestIndices(t *testing.T) {
	r := newRig(t)
	plain, metered := r.load(tableModule(), false), r.load(tableModule(), true)
	calls := []struct {
		f      string
		params []uint64
		want   uint64
	}{
		{"one", nil, 1}, {"two", nil, 2}, {"three", nil, 3}, {"four", nil, 4},
		{"dispatch", []uint64{0}, 1}, {"dispatch", []uint64{1}, 2}, {"dispatch", []uint64{2}, 3},
		{"dispatch", []uint64{4}, 4}, {"dispatch", []uint64{5}, 2},
		{"started", nil, 14}, {"viaglobal", nil, 4}, {"isnull", nil, 0}, {"double", []uint64{21}, 42},
	}
	for _, c := range calls {
		for name, mod := range map[string]api.Module{"plain": plain, "metered": metered} {
			res, err := mod.ExportedFunction(c.f).Call(context.Background(), c.params...)
			if err != nil || res[0] != c.want {
				t.Errorf("%s: %s%v = %v, %v; want %d", name, c.f, c.params, res, err, c.want)
			}
		}
	}
	if g := metered.ExportedGlobal("g").Get(); g != 14 {
		t.Errorf("metered: exported global g = %d, want 14", g)
	}
	if _, err := metered.ExportedFunction("dispatch").Call(context.Background(), 3); err == nil {
		t.Error("metered: dispatch 3 (a null entry) did not trap")
	}
	if fuel, err := FuelOf(metered); err != nil || fuel.global.Type() != api.ValueTypeI32 {
		t.Errorf("metered: fuel %v, %v", fuel, err)
	}
}

// TestRefused checks what Instrument refuses, next to the module it
// accepts when the offending part is fixed.
func TestRefused(t *testing.T) {
	withGlobal := func(instr []byte) []byte {
		return buildModule(
			sec(secType, functype(nil, []byte{i32})),
			sec(secFunction, u32(0)),
			sec(secGlobal, cat(i32, 0x01, constExpr(i32Const(5)))),
			sec(secCode, code(noLocals, instr)),
		)
	}
	withExport := func(name string) []byte {
		return buildModule(
			sec(secType, functype(nil, nil)),
			sec(secFunction, u32(0)),
			sec(secExport, export(name, 0, 0)),
			sec(secCode, code(noLocals)),
		)
	}
	withImport := func(mod string) []byte {
		return buildModule(
			sec(secType, functype(nil, []byte{i32})),
			sec(secImport, importFunc(mod, ImportName, 0)),
		)
	}
	withOp := func(op ...any) []byte {
		return buildModule(
			sec(secType, functype(nil, nil)),
			sec(secFunction, u32(0)),
			sec(secCode, code(noLocals, cat(op...))),
		)
	}
	cases := []struct {
		name      string
		bad, good []byte
		want      string
	}{
		{"global out of range", withGlobal(globalGet(1)), withGlobal(globalGet(0)), "global index 1 is out of range"},
		{"global set out of range", withGlobal(cat(i32Const(0), globalSet(1), i32Const(0))), withGlobal(cat(i32Const(0), globalSet(0), i32Const(0))), "global index 1 is out of range"},
		{"fuel export", withExport(FuelExport), withExport("fuel"), "reserved"},
		{"reserved import", withImport(ImportModule), withImport("env"), "reserved"},
		{"call out of range", withOp(call(1)), withOp(call(0)), "function index 1 is out of range"},
		{"legacy try", withOp(0x06, opEmpty, opEnd), withOp(opBlock, opEmpty, opEnd), "opcode 0x06 is not supported"},
		{"unknown SIMD", withOp(0xfd, 0x9a, 0x01), withOp(0xfd, 0x0f, 0x1a), "opcode 0xfd 0x9a is not supported"},
		{"unknown misc", withOp(0xfc, 18), withOp(0xfc, 0), "opcode 0xfc 18 is not supported"},
		// wazero's compiler would read 0x24 0x01 after select's 0x63 as
		// global.set 1: the fuel, here.
		{"typed select", withOp(i32Const(7), i32Const(7), i32Const(1), 0x1c, 0x01, 0x63, 0x24, 0x01, 0x0f),
			withOp(i32Const(7), i32Const(7), i32Const(1), 0x1c, 0x01, i32, 0x1a), "select with a reference type"},
		{"global in a constant expression", buildModule(
			sec(secType, functype(nil, nil)),
			sec(secGlobal, cat(i32, 0x00, constExpr(i32Const(1))), cat(i32, 0x00, constExpr(globalGet(2))))),
			buildModule(
				sec(secType, functype(nil, nil)),
				sec(secGlobal, cat(i32, 0x00, constExpr(i32Const(1))), cat(i32, 0x00, constExpr(globalGet(0))))),
			"global index 2 is out of range"},
		{"too many locals", buildModule(
			sec(secType, functype(nil, nil)),
			sec(secFunction, u32(0)),
			sec(secCode, code(vec(cat(u32(1<<32-1), i64))))),
			buildModule(
				sec(secType, functype(nil, nil)),
				sec(secFunction, u32(0)),
				sec(secCode, code(vec(cat(u32(1000), i64))))),
			"too many locals: 4294967295"},
		{"global export", buildModule(sec(secGlobal, cat(i32, 0x00, constExpr(i32Const(1)))), sec(secExport, export("g", 3, 1))),
			buildModule(sec(secGlobal, cat(i32, 0x00, constExpr(i32Const(1)))), sec(secExport, export("g", 3, 0))),
			"global index 1 is out of range"},
	}
	for _, c := range cases {
		if _, err := Instrument(c.good); err != nil {
			t.Errorf("%s: the good module is refused: %v", c.name, err)
		}
		_, err := Instrument(c.bad)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "meter: ") {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	// Cut anywhere in its last section, the code, a good module is
	// refused (elsewhere, a cut may fall between sections and leave a
	// good module).
	good := tableModule()
	m, err := scan(good, true)
	if err != nil {
		t.Fatal(err)
	}
	last := m.sections[len(m.sections)-1]
	for n := len(good) - len(last.body); n < len(good); n++ {
		if _, err := Instrument(good[:n]); err == nil {
			t.Errorf("the module cut at %d bytes of %d was not refused", n, len(good))
		}
	}
}

// TestImportedTableInit rewrites the initializer of an imported table
// (wazero reads one there too), which scan must walk before it knows the
// counts.
func TestImportedTableInit(t *testing.T) {
	out, err := Instrument(importedTableModule())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, cat(0x00, u32(1), refFunc(2), 0x0b)) {
		t.Errorf("ref.func 1 was not shifted to 2 in the table's initializer: %x", out)
	}
}

func importedTableModule() []byte {
	return buildModule(
		sec(secType, functype(nil, nil)),
		sec(secImport,
			importFunc("env", "f", 0),
			cat("env", "t", 0x01, 0x40, 0x00, opFuncref, 0x00, u32(1), constExpr(refFunc(1)))),
		sec(secFunction, u32(0)),
		sec(secCode, code(noLocals)),
	)
}

// TestBombs checks that modules whose counts promise far more entries
// than they hold are refused: wazero allocates for the count before it
// reads the entries, so these few bytes would cost the host gigabytes (the
// host instruments before wazero sees the module).
func TestBombs(t *testing.T) {
	many := u32(1<<28 - 1)
	bombs := map[string][]byte{
		"exports":  buildModule(rawSec(secExport, many)),
		"types":    buildModule(rawSec(secType, many)),
		"imports":  buildModule(rawSec(secImport, many)),
		"tags":     buildModule(rawSec(secTag, many)),
		"elements": buildModule(sec(secElement, cat(5, opFuncref, many))),
		"params":   buildModule(sec(secType, cat(0x60, many))),
		"names": buildModule(
			sec(secType, functype(nil, nil)), sec(secFunction, u32(0)), sec(secCode, code(noLocals)),
			rawSec(secCustom, cat("name", 1, u32(uint32(len(many))), many))),
	}
	for name, wasm := range bombs {
		out, err := Instrument(wasm)
		if name == "names" {
			// Dropped rather than refused: it only names functions.
			if err != nil || bytes.Contains(out, []byte("name")) {
				t.Errorf("%s: %v; want the name section dropped", name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: not refused", name)
		}
	}
}

// TestRealGuest instruments the guest the host embeds, a 4 MB Go module,
// and has wazero compile it.
func TestRealGuest(t *testing.T) {
	in, err := os.ReadFile(realGuest)
	if err != nil {
		t.Fatalf("%v: run make guest", err)
	}
	start := time.Now()
	out, err := Instrument(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("instrumented %d bytes into %d in %v", len(in), len(out), time.Since(start))
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	compiled, err := rt.CompileModule(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := rt.CompileModule(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	for name, def := range orig.ExportedFunctions() {
		got, ok := compiled.ExportedFunctions()[name]
		if !ok || got.DebugName() == "" || len(got.ParamTypes()) != len(def.ParamTypes()) {
			t.Errorf("export %s lost or changed", name)
		}
	}
	imports := compiled.ImportedFunctions()
	if len(imports) != len(orig.ImportedFunctions())+1 {
		t.Errorf("%d imports, want %d", len(imports), len(orig.ImportedFunctions())+1)
	}
	for i, f := range imports {
		mod, name, _ := f.Import()
		if yield := mod == ImportModule && name == ImportName; yield != (i == len(imports)-1) {
			t.Errorf("import %d is %s.%s: the yield should be last", i, mod, name)
		}
	}
}

// TestRefillInterval measures how long Refill checks take in the tightest
// loop there is, to keep Refill's comment honest (see there for the Go
// guest).
func TestRefillInterval(t *testing.T) {
	r := newRig(t)
	mod := r.load(sumModule(), true)
	const n = 200 * Refill
	start := time.Now()
	if _, err := mod.ExportedFunction("sum").Call(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d checks of a tight loop in %v: %v per refill", n, time.Since(start), time.Since(start)/200)
}

func BenchmarkInstrument(b *testing.B) {
	in, err := os.ReadFile(realGuest)
	if err != nil {
		b.Fatalf("%v: run make guest", err)
	}
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := Instrument(in); err != nil {
			b.Fatal(err)
		}
	}
}
