// Package witcheck checks a core wasm module built for wasip1 (the guest)
// against the world "plugin" of a WIT package, in two independent ways:
//
//  1. wasm-tools, the one that go.bytecodealliance.org embeds, turns the
//     module into a component: `component embed` then `component new`, with a
//     generated adapter that stands in for wasi_snapshot_preview1. wasm-tools
//     refuses a module whose imports or exports do not lower and lift the
//     world's functions as the canonical ABI says.
//  2. Every import and export of the module is compared with the core
//     signature that go.bytecodealliance.org/wit computes for the WIT
//     function of that name.
package witcheck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"go.bytecodealliance.org/wit"
)

// World is the world of the WIT package the module must implement.
const World = "plugin"

// WASIModule is the import module of WASI preview 1, which the Go runtime
// needs and which no WIT world describes.
const WASIModule = "wasi_snapshot_preview1"

// errnoNOSYS is WASI's "function not supported".
const errnoNOSYS = 52

// Error is what Check returns when the module does not conform.
type Error struct {
	// Component is wasm-tools' refusal to build a component of the module,
	// or nil if it built one.
	Component error
	// Mismatches lists each import or export whose name or signature does
	// not match the WIT, in a stable order.
	Mismatches []string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("module does not conform to world " + World)
	if e.Component != nil {
		b.WriteString("\ncomponent: ")
		b.WriteString(e.Component.Error())
	}
	for _, m := range e.Mismatches {
		b.WriteString("\nmismatch: ")
		b.WriteString(m)
	}
	return b.String()
}

// Check tells whether module implements the world "plugin" of the WIT at
// witPath (a .wit file, or a directory of them). It returns an *Error that
// lists every problem found, or another error if the check itself could not
// run.
func Check(ctx context.Context, witPath string, module []byte) error {
	mod, err := inspect(ctx, module)
	if err != nil {
		return err
	}
	wt, err := loadWasmTools()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "witcheck-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := copyWIT(witPath, filepath.Join(dir, "wit")); err != nil {
		return err
	}

	js, err := wt.run(ctx, dir, "component", "wit", "--json", "--all-features", "/wit")
	if err != nil {
		return fmt.Errorf("reading %s: %w", witPath, err)
	}
	res, err := wit.DecodeJSON(bytes.NewReader(js))
	if err != nil {
		return fmt.Errorf("decoding %s: %w", witPath, err)
	}
	world, err := findWorld(res)
	if err != nil {
		return fmt.Errorf("%s: %w", witPath, err)
	}

	e := &Error{Mismatches: compare(world, mod)}
	e.Component = componentize(ctx, wt, dir, module, mod)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if e.Component != nil || len(e.Mismatches) > 0 {
		return e
	}
	return nil
}

// componentize builds a component of module with wasm-tools, in dir.
func componentize(ctx context.Context, wt *wasmTools, dir string, module []byte, mod *moduleInfo) error {
	module, _, err := dedupeWASI(module)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "module.wasm"), module, 0o644); err != nil {
		return err
	}
	if _, err := wt.run(ctx, dir, "component", "embed", "--world", World, "/wit", "/module.wasm", "-o", "/embedded.wasm"); err != nil {
		return err
	}
	args := []string{"component", "new", "/embedded.wasm", "-o", "/component.wasm"}
	var wasi []api.FunctionDefinition
	for _, f := range mod.imports {
		if m, _, _ := f.Import(); m == WASIModule {
			wasi = append(wasi, f)
		}
	}
	if len(wasi) > 0 {
		// An adapter carries the world it imports; this one imports nothing.
		// `component embed` also turns the text format into a binary.
		if err := os.WriteFile(filepath.Join(dir, "adapter.wat"), []byte(adapterWAT(wasi)), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "adapter.wit"), []byte("package witcheck:adapter;\n\nworld adapter {}\n"), 0o644); err != nil {
			return err
		}
		if _, err := wt.run(ctx, dir, "component", "embed", "--world", "adapter", "/adapter.wit", "/adapter.wat", "-o", "/adapter.wasm"); err != nil {
			return fmt.Errorf("adapter: %w", err)
		}
		args = append(args, "--adapt", WASIModule+"=/adapter.wasm")
	}
	// component new validates the component it builds.
	_, err = wt.run(ctx, dir, args...)
	return err
}

// adapterWAT is a core module that exports a stub for each WASI function
// import in fns, under the names dedupeWASI gives them: a function that
// returns an errno returns ENOSYS, any other traps. wasm-tools only needs the
// adapter to type-check the module's imports.
func adapterWAT(fns []api.FunctionDefinition) string {
	var b strings.Builder
	b.WriteString("(module\n")
	seen := map[string]int{}
	for _, f := range fns {
		_, name, _ := f.Import()
		seen[name]++
		if n := seen[name]; n > 1 {
			name = dupName(name, n)
		}
		fmt.Fprintf(&b, "  (func (export %q)", name)
		if p := f.ParamTypes(); len(p) > 0 {
			b.WriteString(" (param")
			for _, t := range p {
				b.WriteString(" " + api.ValueTypeName(t))
			}
			b.WriteString(")")
		}
		r := f.ResultTypes()
		if len(r) > 0 {
			b.WriteString(" (result")
			for _, t := range r {
				b.WriteString(" " + api.ValueTypeName(t))
			}
			b.WriteString(")")
		}
		if len(r) == 1 && r[0] == api.ValueTypeI32 {
			fmt.Fprintf(&b, " i32.const %d)\n", errnoNOSYS)
		} else {
			b.WriteString(" unreachable)\n")
		}
	}
	b.WriteString(")\n")
	return b.String()
}

// moduleInfo is what the module imports and exports.
type moduleInfo struct {
	imports  []api.FunctionDefinition
	exports  map[string]api.FunctionDefinition
	memories map[string]api.MemoryDefinition
}

// inspect decodes and validates module.
func inspect(ctx context.Context, module []byte) (*moduleInfo, error) {
	r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer r.Close(ctx)
	cm, err := r.CompileModule(ctx, module)
	if err != nil {
		return nil, fmt.Errorf("invalid module: %w", err)
	}
	defer cm.Close(ctx)
	return &moduleInfo{
		imports:  cm.ImportedFunctions(),
		exports:  cm.ExportedFunctions(),
		memories: cm.ExportedMemories(),
	}, nil
}

func findWorld(res *wit.Resolve) (*wit.World, error) {
	var found *wit.World
	for _, w := range res.Worlds {
		if w.Name == World {
			if found != nil {
				return nil, fmt.Errorf("more than one world named %q", World)
			}
			found = w
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no world named %q", World)
	}
	return found, nil
}

// signature is a core function type.
type signature struct {
	params, results []api.ValueType
}

func (s signature) String() string {
	name := func(ts []api.ValueType) string {
		n := make([]string, len(ts))
		for i, t := range ts {
			n[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(n, ", ") + ")"
	}
	return name(s.params) + " -> " + name(s.results)
}

func (s signature) equal(o signature) bool {
	return slices.Equal(s.params, o.params) && slices.Equal(s.results, o.results)
}

func defSignature(f api.FunctionDefinition) signature {
	return signature{params: f.ParamTypes(), results: f.ResultTypes()}
}

// coreSignature is the core type of a function that go.bytecodealliance.org
// computed (CoreFunction, PostReturn).
func coreSignature(f *wit.Function) signature {
	var s signature
	for _, p := range f.Params {
		s.params = append(s.params, flatTypes(p.Type)...)
	}
	for _, r := range f.Results {
		s.results = append(s.results, flatTypes(r.Type)...)
	}
	return s
}

// flatTypes maps a flattened WIT type (the ones Flat returns: u32, u64,
// f32, f64 and pointers) to wasm value types.
func flatTypes(t wit.Type) []api.ValueType {
	var out []api.ValueType
	for _, f := range t.Flat() {
		switch f.(type) {
		case wit.F32:
			out = append(out, api.ValueTypeF32)
		case wit.F64:
			out = append(out, api.ValueTypeF64)
		default:
			if f.Size() == 8 {
				out = append(out, api.ValueTypeI64)
			} else {
				out = append(out, api.ValueTypeI32)
			}
		}
	}
	return out
}

// expected is one function the module may import or must export.
type expected struct {
	sig      signature
	required bool
}

// compare lists every import and export of mod that does not match world.
func compare(world *wit.World, mod *moduleInfo) []string {
	var mismatches []string
	add := func(format string, args ...any) { mismatches = append(mismatches, fmt.Sprintf(format, args...)) }

	// What the module may import: module name -> function name -> type.
	imports := map[string]map[string]signature{}
	needRealloc := false
	world.Imports.All()(func(key string, item wit.WorldItem) bool {
		switch item := item.(type) {
		case *wit.InterfaceRef:
			fns := map[string]signature{}
			imports[interfaceName(key, item.Interface)] = fns
			item.Interface.Functions.All()(func(_ string, f *wit.Function) bool {
				fns[f.Name] = coreSignature(f.CoreFunction(wit.Imported))
				needRealloc = needRealloc || f.ReturnsPointer()
				return true
			})
		case *wit.Function:
			if imports["$root"] == nil {
				imports["$root"] = map[string]signature{}
			}
			imports["$root"][item.Name] = coreSignature(item.CoreFunction(wit.Imported))
			needRealloc = needRealloc || item.ReturnsPointer()
		}
		return true
	})

	// What the module must export: export name -> type.
	exports := map[string]expected{}
	exportFunc := func(name string, f *wit.Function) {
		exports[name] = expected{sig: coreSignature(f.CoreFunction(wit.Exported)), required: true}
		if pr := f.PostReturn(wit.Exported); pr != nil {
			exports["cabi_post_"+name] = expected{sig: coreSignature(pr), required: true}
		}
		for _, p := range f.Params {
			needRealloc = needRealloc || wit.HasPointer(p.Type)
		}
	}
	world.Exports.All()(func(key string, item wit.WorldItem) bool {
		switch item := item.(type) {
		case *wit.InterfaceRef:
			prefix := interfaceName(key, item.Interface) + "#"
			item.Interface.Functions.All()(func(_ string, f *wit.Function) bool {
				exportFunc(prefix+f.Name, f)
				return true
			})
		case *wit.Function:
			exportFunc(item.Name, item)
		}
		return true
	})
	i32 := api.ValueTypeI32
	exports["cabi_realloc"] = expected{sig: signature{params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}}, required: needRealloc}
	exports["_initialize"] = expected{sig: signature{}} // wasip1 reactors (-buildmode=c-shared)

	for _, f := range mod.imports {
		m, name, _ := f.Import()
		if m == WASIModule {
			continue
		}
		fns, ok := imports[m]
		if !ok {
			add("import %q %q: module %q is not imported by world %s", m, name, m, World)
			continue
		}
		want, ok := fns[name]
		if !ok {
			add("import %q %q: no function %q in %s", m, name, name, m)
			continue
		}
		if got := defSignature(f); !got.equal(want) {
			add("import %q %q: signature %s, want %s", m, name, got, want)
		}
	}

	names := make([]string, 0, len(exports)+len(mod.exports))
	for name := range exports {
		names = append(names, name)
	}
	for name := range mod.exports {
		if _, ok := exports[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		want, isExpected := exports[name]
		f, isExported := mod.exports[name]
		switch {
		case isExpected && isExported:
			if got := defSignature(f); !got.equal(want.sig) {
				add("export %q: signature %s, want %s", name, got, want.sig)
			}
		case isExpected && want.required:
			add("export %q: missing, want signature %s", name, want.sig)
		case isExported:
			add("export %q: not a function of world %s", name, World)
		}
	}
	if _, ok := mod.memories["memory"]; !ok {
		add("export \"memory\": missing")
	}
	return mismatches
}

// interfaceName is the name of an interface's import module or export
// prefix: "namespace:package/interface@version".
func interfaceName(key string, i *wit.Interface) string {
	if i.Name == nil || i.Package == nil {
		return key
	}
	id := i.Package.Name
	id.Extension = *i.Name
	return id.String()
}

// copyWIT copies the WIT file or directory at src to the directory dst.
func copyWIT(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, filepath.Base(src)), b, 0o644)
	}
	return os.CopyFS(dst, os.DirFS(src))
}
