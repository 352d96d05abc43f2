// Package host runs the OCI store guest under wazero and presents it to
// Kloset as a connectors/storage.Store registered as "oci".
//
// The guest holds the store logic; the host lends it what wit/storage.wit
// imports: HTTP round trips to the store's registry only (credentials and
// TLS stay here), byte streams that keep payloads out of guest memory, a
// cache and a logger. Nothing else: no filesystem, no environment, no
// sockets.
package host

import (
	"context"
	"crypto/rand"
	_ "embed"
	"fmt"
	"log/slog"
	"slices"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/internal/meter"
)

// embeddedGuest is build/guest.wasm, copied here by `make guest`.
//
//go:embed guest.wasm
var embeddedGuest []byte

// EmbeddedGuest returns the guest module built into this binary.
func EmbeddedGuest() []byte { return embeddedGuest }

// Options tune how a Plugin is loaded.
type Options struct {
	// CacheDir is the root of the on-disk caches: compiled code in
	// <CacheDir>/wazero-<wazero version>/ (where wazero keys it by module
	// content), modules pulled from registries in <CacheDir>/modules/. Empty
	// means $OCISTORE_CACHE_DIR or <user cache dir>/ocistore; "off" disables
	// them.
	CacheDir string
	// MemoryLimitPages caps each instance's linear memory, in 64 KiB pages
	// (default 2048, 128 MiB: the guest keeps payloads out of its memory).
	MemoryLimitPages uint32
	// Logger receives the guest's logs and its panics (default slog.Default).
	Logger *slog.Logger
}

// Plugin is a compiled guest module, shared by every store of a process.
type Plugin struct {
	runtime  wazero.Runtime
	compiled wazero.CompiledModule
	logger   *slog.Logger
}

// Load compiles a guest module. It checks that the module implements the
// WIT world this host speaks before anything runs.
func Load(ctx context.Context, wasm []byte, opts Options) (*Plugin, error) {
	if opts.MemoryLimitPages == 0 {
		opts.MemoryLimitPages = 2048
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// WithCloseOnContextDone is off: metering replaces it (see
	// host/internal/meter). The module yields to the host every
	// meter.Refill function entries and loop iterations, and the host
	// stops it there once the call's context is done. wazero's option
	// costs an exit from native code at every loop header instead, so at
	// every function call of a Go guest (Go wraps every function body in
	// a loop): 7 times the guest CPU of a ranged get.
	config := wazero.NewRuntimeConfigCompiler().
		WithCloseOnContextDone(false).
		WithMemoryLimitPages(opts.MemoryLimitPages)
	if cache, err := compilationCache(opts.CacheDir); err != nil {
		opts.Logger.Warn("compiled plugin cache disabled", "error", err)
	} else if cache != nil {
		config = config.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, config)
	p := &Plugin{runtime: rt, logger: opts.Logger}
	if err := p.instantiateImports(ctx); err != nil {
		rt.Close(ctx)
		return nil, err
	}
	metered, err := meter.Instrument(wasm)
	if err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("oci plugin: the module cannot be metered: %w", err)
	}
	compiled, err := rt.CompileModule(ctx, metered)
	if err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("oci plugin: the module does not compile: %w", err)
	}
	if err := checkExports(compiled); err != nil {
		rt.Close(ctx)
		return nil, err
	}
	p.compiled = compiled
	return p, nil
}

// Close releases the compiled module and every instance still open.
func (p *Plugin) Close(ctx context.Context) error { return p.runtime.Close(ctx) }

func (p *Plugin) instantiateImports(ctx context.Context) error {
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, p.runtime); err != nil {
		return fmt.Errorf("oci plugin: WASI: %w", err)
	}
	if err := meter.Instantiate(ctx, p.runtime); err != nil {
		return fmt.Errorf("oci plugin: %w", err)
	}
	return instantiateImports(ctx, p.runtime)
}

// newModuleConfig gives each instance real clocks and crypto randomness
// (wazero's defaults are fake and deterministic), stdout and stderr into the
// log (a Go panic prints there), and nothing else: no filesystem, no
// environment, no arguments.
func (p *Plugin) newModuleConfig() wazero.ModuleConfig {
	w := &logWriter{logger: p.logger}
	return wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions("_initialize").
		WithSysWalltime().
		WithSysNanotime().
		WithSysNanosleep().
		WithRandSource(rand.Reader).
		WithStdout(w).
		WithStderr(w)
}

func compilationCache(dir string) (wazero.CompilationCache, error) {
	dir, err := compiledCodeDir(dir)
	if dir == "" || err != nil {
		return nil, err
	}
	return wazero.NewCompilationCacheWithDir(dir)
}

// checkExports refuses a module that does not implement this host's
// version of the contract, with an error that says which.
func checkExports(m wazero.CompiledModule) error {
	exports := m.ExportedFunctions()
	var missing []string
	for _, name := range append([]string{abi.Realloc, "_initialize"}, abi.Exports...) {
		if _, ok := exports[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	return fmt.Errorf("oci plugin: the module does not implement %s (missing exports %q): rebuild it against wit/storage.wit of this version", abi.World, missing)
}

// logWriter turns what the guest prints into log records, a line at a time.
type logWriter struct {
	logger *slog.Logger
	buf    []byte
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := slices.Index(w.buf, '\n')
		if i < 0 {
			break
		}
		w.logger.Warn(string(w.buf[:i]), "plugin", "oci")
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}
