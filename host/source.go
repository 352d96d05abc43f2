package host

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/artifact"
)

// Where the guest module comes from: the one built into this binary, a file,
// or an OCI artifact (see package artifact). Whatever the source, the module
// must implement abi.World: its ABI version is checked (from the artifact's
// annotations, then from the module's custom section or exports) before it
// is compiled, and Load checks its exports.

// PluginKey is the store configuration key that chooses the module: empty or
// SourceEmbedded for the embedded guest, a file path, or an OCI reference
// pinned by digest. See ParseSource.
const PluginKey = "plugin"

// SourceEmbedded names the guest built into this binary.
const SourceEmbedded = "embedded"

// EnvCacheDir, when set, replaces the user cache directory as the root of
// the on-disk caches when Options.CacheDir is empty ("off" disables them).
const EnvCacheDir = "OCISTORE_CACHE_DIR"

// SourceKind is the kind of a module source.
type SourceKind int

const (
	SourceKindEmbedded SourceKind = iota
	SourceKindFile
	SourceKindRef
)

// ParseSource reads a module source: "" or "embedded"; a file, as
// "file:PATH", an absolute path, a path starting with ./ or ../, or any path
// ending in .wasm; otherwise an OCI reference, with or without an oci://
// prefix (registry/repository@sha256:<hex>, or :tag where tags are allowed).
func ParseSource(src string) (SourceKind, string) {
	switch {
	case src == "" || src == SourceEmbedded:
		return SourceKindEmbedded, ""
	case strings.HasPrefix(src, "file:"):
		return SourceKindFile, strings.TrimPrefix(src, "file:")
	case strings.HasPrefix(src, "oci://"):
		return SourceKindRef, strings.TrimPrefix(src, "oci://")
	case filepath.IsAbs(src), strings.HasPrefix(src, "./"), strings.HasPrefix(src, "../"),
		strings.HasSuffix(src, ".wasm") && !strings.Contains(src, "@"):
		return SourceKindFile, src
	}
	return SourceKindRef, src
}

// RefOptions tune LoadRef and LoadSource.
type RefOptions struct {
	// Options compile the module. Its CacheDir also keeps the modules pulled
	// from registries, under <CacheDir>/modules/.
	Options
	// Registry says how to reach the registry (transport and TLS, auth) and
	// whether a reference without a digest may be followed (AllowTag, off
	// by default). RequireABI is always abi.Version.
	Registry artifact.Options
}

// Module is a module fetched for a reference, verified.
type Module struct {
	*artifact.Artifact
	// FromCache tells that it was read from the on-disk cache, with no
	// request to the registry.
	FromCache bool
}

// FetchRef returns the module ref names, verified: from the on-disk cache
// when ref is pinned by digest and the cache has it (no network), from the
// registry otherwise, and then kept in the cache. A reference without a
// digest is refused unless opts.Registry.AllowTag; one whose artifact
// implements another ABI version is refused before its module is
// downloaded.
func FetchRef(ctx context.Context, ref string, opts RefOptions) (*Module, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ref = strings.TrimPrefix(ref, "oci://")
	ropts := opts.Registry
	ropts.RequireABI = abi.Version
	cache, err := moduleCache(opts.CacheDir)
	if err != nil {
		logger.Warn("oci plugin: module cache disabled", "error", err)
	}
	if r, err := name.ParseReference(ref, name.StrictValidation); err == nil && cache != nil {
		if d, ok := r.(name.Digest); ok {
			a, err := cache.Get(d.DigestStr(), abi.Version)
			switch {
			case err == nil:
				a.Ref = d.String()
				return &Module{Artifact: a, FromCache: true}, nil
			case errors.Is(err, artifact.ErrABIMismatch):
				return nil, fmt.Errorf("oci plugin: %s: %w", ref, err)
			case !errors.Is(err, fs.ErrNotExist):
				logger.Warn("oci plugin: cached module refused, fetching it again", "ref", ref, "error", err)
			}
		}
	}
	a, err := artifact.Pull(ctx, ref, ropts)
	if err != nil {
		return nil, fmt.Errorf("oci plugin: %w", err)
	}
	if cache != nil {
		if err := cache.Put(a); err != nil {
			logger.Warn("oci plugin: cannot cache the module", "ref", a.Ref, "error", err)
		}
	}
	return &Module{Artifact: a}, nil
}

// LoadRef fetches the module ref names (see FetchRef) and compiles it.
func LoadRef(ctx context.Context, ref string, opts RefOptions) (*Plugin, error) {
	m, err := FetchRef(ctx, ref, opts)
	if err != nil {
		return nil, err
	}
	if _, err := artifact.CheckModule(m.Module); err != nil {
		return nil, fmt.Errorf("oci plugin: %s: %w", m.Ref, err)
	}
	return Load(ctx, m.Module, opts.Options)
}

// LoadFile reads a module from a file, checks its ABI version (from its
// custom section artifact.WorldSection, or else from its exports) and
// compiles it.
func LoadFile(ctx context.Context, path string, opts Options) (*Plugin, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("oci plugin: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() > artifact.MaxModuleSize {
		return nil, fmt.Errorf("oci plugin: %s is not a module file of at most %d bytes", path, artifact.MaxModuleSize)
	}
	wasm, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("oci plugin: %w", err)
	}
	if _, err := artifact.CheckModule(wasm); err != nil {
		return nil, fmt.Errorf("oci plugin: %s: %w", path, err)
	}
	return Load(ctx, wasm, opts)
}

// LoadSource loads the module src names (see ParseSource).
func LoadSource(ctx context.Context, src string, opts RefOptions) (*Plugin, error) {
	switch kind, value := ParseSource(src); kind {
	case SourceKindFile:
		return LoadFile(ctx, value, opts.Options)
	case SourceKindRef:
		return LoadRef(ctx, value, opts)
	}
	return Load(ctx, embeddedGuest, opts.Options)
}

var configured = struct {
	sync.Mutex
	plugins map[string]*Plugin
}{plugins: map[string]*Plugin{}}

func configuredPlugin(ctx context.Context, src string, c *Config) (*Plugin, error) {
	kind, value := ParseSource(src)
	if kind == SourceKindEmbedded {
		return defaultPlugin()
	}
	configured.Lock()
	defer configured.Unlock()
	if p := configured.plugins[src]; p != nil {
		return p, nil
	}
	var opts RefOptions
	if kind == SourceKindRef {
		var err error
		if opts.Registry, err = registryOptions(c, value); err != nil {
			return nil, err
		}
	}
	p, err := LoadSource(ctx, src, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, PluginKey, err)
	}
	configured.plugins[src] = p
	return p, nil
}

// registryOptions reaches the registry of ref with the store's TLS
// settings, and with its use_tls and configured credentials (token, or
// username and password) when it is the store's registry; other registries
// are reached anonymously.
func registryOptions(c *Config, ref string) (artifact.Options, error) {
	transport, err := newTLSTransport(c)
	if err != nil {
		return artifact.Options{}, err
	}
	opts := artifact.Options{Transport: transport}
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err == nil && strings.EqualFold(r.Context().RegistryStr(), c.Location.Registry) {
		useTLS := c.UseTLS
		opts.UseTLS = &useTLS
		switch {
		case c.Token != "":
			opts.Auth = &authn.Bearer{Token: c.Token}
		case c.Username != "":
			opts.Auth = &authn.Basic{Username: c.Username, Password: c.Password}
		}
	}
	return opts, nil
}

// cacheRoot is the root of the on-disk caches for Options.CacheDir: "" is
// $OCISTORE_CACHE_DIR or <user cache dir>/ocistore (Plakar's cache
// directory for its plugin: PlakarPlugin), and "off" (in either) disables
// them ("" returned).
func cacheRoot(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv(EnvCacheDir)
	}
	switch dir {
	case "off":
		return "", nil
	case "":
		if defaultCacheRoot != "" {
			return defaultCacheRoot, nil
		}
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		return filepath.Join(base, "ocistore"), nil
	}
	return dir, nil
}

// compiledCodeDir is where wazero keeps compiled code: a directory per
// wazero version, in which wazero keys entries by module content.
func compiledCodeDir(dir string) (string, error) {
	root, err := cacheRoot(dir)
	if root == "" || err != nil {
		return "", err
	}
	return filepath.Join(root, "wazero-"+WazeroVersion()), nil
}

func moduleCache(dir string) (*artifact.Cache, error) {
	root, err := cacheRoot(dir)
	if root == "" || err != nil {
		return nil, err
	}
	return &artifact.Cache{Dir: filepath.Join(root, "modules")}, nil
}

// wazeroVersion is the wazero this module requires, for binaries built
// without module information.
const wazeroVersion = "v1.12.0"

// WazeroVersion is the version of wazero built into this binary.
var WazeroVersion = sync.OnceValue(func() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path != "github.com/tetratelabs/wazero" {
				continue
			}
			if dep.Replace != nil && dep.Replace.Version != "" {
				dep = dep.Replace
			}
			if dep.Version != "" && dep.Version != "(devel)" {
				return dep.Version
			}
		}
	}
	return wazeroVersion
})
