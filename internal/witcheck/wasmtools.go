package witcheck

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// witModule is the module that ships wasm-tools compiled to wasip1, in its
// internal/wasmtools directory.
const witModule = "go.bytecodealliance.org"

// wasmTools runs the wasm-tools CLI that go.bytecodealliance.org embeds,
// under wazero. Its package is internal, so the compressed module is read
// from the module's source directory instead.
type wasmTools struct {
	runtime wazero.Runtime
	module  wazero.CompiledModule
}

var (
	toolsOnce sync.Once
	tools     *wasmTools
	toolsErr  error
)

// loadWasmTools compiles wasm-tools once per process. The compiled code is
// also cached on disk, so that later test processes start quickly.
func loadWasmTools() (*wasmTools, error) {
	toolsOnce.Do(func() { tools, toolsErr = newWasmTools() })
	return tools, toolsErr
}

func newWasmTools() (*wasmTools, error) {
	gz, err := WasmToolsPath()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(gz)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gz, err)
	}
	bin, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gz, err)
	}

	// The runtime lives as long as the process: it is shared by every Check.
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfig().WithCloseOnContextDone(true)
	if c, err := wazero.NewCompilationCacheWithDir(filepath.Join(os.TempDir(), "ocistore-wasm-tools-cache")); err == nil {
		cfg = cfg.WithCompilationCache(c)
	}
	r := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r); err != nil {
		r.Close(ctx)
		return nil, err
	}
	m, err := r.CompileModule(ctx, bin)
	if err != nil {
		r.Close(ctx)
		return nil, fmt.Errorf("compiling wasm-tools: %w", err)
	}
	return &wasmTools{runtime: r, module: m}, nil
}

// run runs wasm-tools with dir mounted as the guest's root directory, so
// that args name files in dir by absolute paths ("/module.wasm"), and
// returns what it printed on its standard output.
func (w *wasmTools) run(ctx context.Context, dir string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cfg := wazero.NewModuleConfig().
		WithName(""). // anonymous: instances may run concurrently
		WithArgs(append([]string{"wasm-tools"}, args...)...).
		WithStdout(&stdout).
		WithStderr(&stderr).
		WithRandSource(rand.Reader).
		WithSysWalltime().
		WithSysNanotime().
		WithFSConfig(wazero.NewFSConfig().WithDirMount(dir, "/"))
	mod, err := w.runtime.InstantiateModule(ctx, w.module, cfg)
	if mod != nil {
		mod.Close(ctx)
	}
	var exit *sys.ExitError
	switch {
	case err == nil, errors.As(err, &exit) && exit.ExitCode() == 0:
		return stdout.Bytes(), nil
	case errors.As(err, &exit):
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return nil, fmt.Errorf("wasm-tools %s: exit code %d: %s", strings.Join(args, " "), exit.ExitCode(), msg)
	default:
		return nil, fmt.Errorf("wasm-tools %s: %w", strings.Join(args, " "), err)
	}
}

// WasmToolsPath returns the path of the compressed wasm-tools module that
// go.bytecodealliance.org ships (internal/wasmtools/wasm-tools.wasm.gz), in
// the version this binary was built with. It looks in the module cache, as
// `go env GOMODCACHE` tells, and falls back to `go list -m`.
func WasmToolsPath() (string, error) {
	const rel = "internal/wasmtools/wasm-tools.wasm.gz"
	var tried []string
	if dir, err := moduleDir(); err == nil {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	} else {
		tried = append(tried, err.Error())
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", witModule).Output()
	if err == nil && len(bytes.TrimSpace(out)) > 0 {
		p := filepath.Join(string(bytes.TrimSpace(out)), filepath.FromSlash(rel))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	} else if err != nil {
		tried = append(tried, "go list -m "+witModule+": "+err.Error())
	}
	return "", fmt.Errorf("wasm-tools not found (run `go mod download %s`): tried %s", witModule, strings.Join(tried, "; "))
}

// moduleDir is the directory of go.bytecodealliance.org in the module cache,
// at the version recorded in this binary's build information.
func moduleDir() (string, error) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", errors.New("no build information in this binary")
	}
	for _, dep := range bi.Deps {
		if dep.Path != witModule {
			continue
		}
		if dep.Replace != nil {
			if dep.Replace.Version == "" { // a directory replacement
				return dep.Replace.Path, nil
			}
			dep = dep.Replace
		}
		cache, err := modCache()
		if err != nil {
			return "", err
		}
		return filepath.Join(cache, filepath.FromSlash(escape(dep.Path))+"@"+escape(dep.Version)), nil
	}
	return "", fmt.Errorf("%s is not in this binary's build information", witModule)
}

func modCache() (string, error) {
	if c := os.Getenv("GOMODCACHE"); c != "" {
		return c, nil
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	if c := strings.TrimSpace(string(out)); c != "" {
		return c, nil
	}
	return "", errors.New("go env GOMODCACHE is empty")
}

// escape is the module cache's case encoding: "!" and the lower-case letter
// for each upper-case one.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
