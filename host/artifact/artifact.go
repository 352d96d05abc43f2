// Package artifact ships the OCI store's guest module through OCI
// registries, as an artifact in the CNCF TAG Runtime's layout for
// WebAssembly (the one wkg, Spin and runwasi use):
//
//   - an OCI image manifest whose config has the media type
//     application/vnd.wasm.config.v0+json and holds
//     {"created", "architecture": "wasm", "os": "wasip1", "layerDigests"};
//   - one layer, the module itself, of media type application/wasm, with an
//     org.opencontainers.image.title annotation (the file name);
//   - manifest annotations naming the WIT world the module implements
//     (AnnotationWorld, abi.World) and its ABI version (AnnotationABIVersion,
//     abi.Version), so that a host can refuse an incompatible plugin before
//     downloading it.
//
// Push builds and pushes such an artifact and returns its digest; Pull
// fetches one and verifies every byte against the digests that lead to it
// (the manifest against the digest the reference pins, the config and the
// module against the manifest); Cache keeps verified artifacts on disk by
// digest so that later loads need no network.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/internal/location"
)

// Media types and values of the CNCF wasm artifact layout.
const (
	ConfigMediaType types.MediaType = "application/vnd.wasm.config.v0+json"
	LayerMediaType  types.MediaType = "application/wasm"
	Architecture                    = "wasm"
	OS                              = "wasip1"
)

// Annotations.
const (
	// AnnotationTitle is the module's file name, on the layer and on the
	// manifest.
	AnnotationTitle = "org.opencontainers.image.title"
	// AnnotationWorld is the WIT world the module implements, as abi.World.
	AnnotationWorld = "com.github.plakar-oci.wit-world"
	// AnnotationABIVersion is the version of the WIT package, as abi.Version.
	AnnotationABIVersion = "com.github.plakar-oci.abi-version"
)

// DefaultTitle is the module's file name when Options.Title is empty.
const DefaultTitle = "ocistore.wasm"

// Limits on what Pull reads from a registry.
const (
	MaxModuleSize   = 64 << 20
	maxConfigSize   = 64 << 10
	maxManifestSize = 4 << 20
)

// Errors to test with errors.Is (with ErrABIMismatch and ErrNotModule).
var (
	// ErrNotPinned refuses a reference without a digest when tags are not
	// allowed.
	ErrNotPinned = errors.New("the reference is not pinned by digest")
	// ErrDigestMismatch refuses bytes whose digest is not the one that led
	// to them: a tampered or corrupted artifact.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNotArtifact refuses a manifest that is not a wasm plugin artifact.
	ErrNotArtifact = errors.New("not a wasm plugin artifact")
)

// Options tune how the registry is reached and what is pushed.
type Options struct {
	// Transport performs the HTTP requests: it carries the TLS settings
	// (default: a clone of http.DefaultTransport).
	Transport http.RoundTripper
	// Auth authenticates to the registry (default: anonymous).
	Auth authn.Authenticator
	// UseTLS says whether the registry is reached over HTTPS. Nil means the
	// store's default: plain HTTP for a loopback registry (localhost,
	// 127.0.0.0/8, ::1), HTTPS for any other. With TLS, a request over
	// plain HTTP is refused, redirects included.
	UseTLS *bool

	// AllowTag lets Pull follow a reference without a digest. Off, only
	// references pinned by digest (…@sha256:…) are pulled.
	AllowTag bool
	// RequireABI, if not empty, makes Pull refuse an artifact whose ABI
	// version annotation is another, before it downloads the module.
	RequireABI string

	// Title is the module's file name for AnnotationTitle (DefaultTitle).
	Title string
	// Created is the config's creation time. Zero means the Unix epoch, so
	// that pushing the same module twice gives the same digest.
	Created time.Time
	// Author goes in the config's author field when not empty.
	Author string
	// Annotations are added to the manifest (such as
	// org.opencontainers.image.source or .version). They may not set the
	// world and ABI version, which Push reads from the module.
	Annotations map[string]string
}

// Artifact is a plugin artifact that was verified.
type Artifact struct {
	// Ref is the artifact's reference pinned by digest, repo@sha256:…
	// (empty for an artifact read from the cache alone).
	Ref string
	// Digest is the manifest's digest, sha256:…
	Digest string
	// Manifest and Config are the raw documents.
	Manifest []byte
	Config   []byte
	// Module is the module's bytes (nil after Inspect).
	Module []byte
	// ModuleDigest and ModuleSize come from the manifest's layer.
	ModuleDigest string
	ModuleSize   int64
	// Title, World and ABIVersion come from the annotations.
	Title      string
	World      string
	ABIVersion string
	// Annotations are the manifest's annotations.
	Annotations map[string]string
}

// wasmConfig is the config document of the CNCF layout.
type wasmConfig struct {
	Created      time.Time `json:"created"`
	Author       string    `json:"author,omitempty"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	LayerDigests []string  `json:"layerDigests"`
}

// Push pushes wasm to ref (a tag, or a digest, which must then be the
// artifact's) and returns the manifest's digest. The world and ABI version
// annotations are read from the module (see InspectModule), so an artifact
// never claims a contract its module does not export.
func Push(ctx context.Context, ref string, wasm []byte, opts Options) (string, error) {
	r, err := parseRef(ref, opts)
	if err != nil {
		return "", err
	}
	img, digest, err := build(wasm, opts)
	if err != nil {
		return "", err
	}
	if d, ok := r.(name.Digest); ok && d.DigestStr() != digest {
		return "", fmt.Errorf("artifact: %s: the artifact's digest is %s", ref, digest)
	}
	if err := remote.Write(r, img, remoteOptions(ctx, opts)...); err != nil {
		return "", fmt.Errorf("artifact: pushing %s: %w", ref, err)
	}
	return digest, nil
}

// Build returns the manifest, the config and the digest Push would push for
// wasm, without pushing anything.
func Build(wasm []byte, opts Options) (manifest, config []byte, digest string, err error) {
	img, digest, err := build(wasm, opts)
	if err != nil {
		return nil, nil, "", err
	}
	manifest, _ = img.RawManifest()
	config, _ = img.RawConfigFile()
	return manifest, config, digest, nil
}

func build(wasm []byte, opts Options) (v1.Image, string, error) {
	if len(wasm) > MaxModuleSize {
		return nil, "", fmt.Errorf("artifact: the module is %d bytes, more than the %d a host accepts", len(wasm), MaxModuleSize)
	}
	info, err := InspectModule(wasm)
	if err != nil {
		return nil, "", fmt.Errorf("artifact: %w", err)
	}
	annotations := map[string]string{}
	for k, v := range opts.Annotations {
		if k == AnnotationWorld || k == AnnotationABIVersion {
			return nil, "", fmt.Errorf("artifact: annotation %s is read from the module, it cannot be set", k)
		}
		annotations[k] = v
	}
	title := opts.Title
	if title == "" {
		title = DefaultTitle
	}
	annotations[AnnotationTitle] = title
	annotations[AnnotationWorld] = info.World
	annotations[AnnotationABIVersion] = info.ABIVersion

	layer := static.NewLayer(wasm, LayerMediaType)
	layerDigest, err := layer.Digest()
	if err != nil {
		return nil, "", err
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	config, err := json.Marshal(wasmConfig{
		Created:      created.UTC(),
		Author:       opts.Author,
		Architecture: Architecture,
		OS:           OS,
		LayerDigests: []string{layerDigest.String()},
	})
	if err != nil {
		return nil, "", err
	}
	manifest, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config: v1.Descriptor{
			MediaType: ConfigMediaType,
			Size:      int64(len(config)),
			Digest:    sha256Hash(config),
		},
		Layers: []v1.Descriptor{{
			MediaType:   LayerMediaType,
			Size:        int64(len(wasm)),
			Digest:      layerDigest,
			Annotations: map[string]string{AnnotationTitle: title},
		}},
		Annotations: annotations,
	})
	if err != nil {
		return nil, "", err
	}
	img, err := partial.CompressedToImage(&image{config: config, manifest: manifest, layer: layer, layerDigest: layerDigest})
	if err != nil {
		return nil, "", err
	}
	return img, sha256Hash(manifest).String(), nil
}

// image is the artifact as go-containerregistry's image, with the config
// document of the CNCF layout rather than a container config.
type image struct {
	config, manifest []byte
	layer            v1.Layer
	layerDigest      v1.Hash
}

func (i *image) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *image) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == i.layerDigest {
		return i.layer, nil
	}
	return nil, fmt.Errorf("artifact: no layer %s", h)
}

// Pull fetches ref and verifies it: the manifest against the digest ref
// pins, the config and the module against the manifest, the annotations
// against the module's exports (and against opts.RequireABI). A reference
// without a digest is refused unless opts.AllowTag.
func Pull(ctx context.Context, ref string, opts Options) (*Artifact, error) {
	return fetch(ctx, ref, opts, true)
}

// Inspect fetches ref's manifest and config, verified as Pull does, but not
// the module. Tags are always allowed and no ABI version is required: it is
// for looking.
func Inspect(ctx context.Context, ref string, opts Options) (*Artifact, error) {
	opts.AllowTag, opts.RequireABI = true, ""
	return fetch(ctx, ref, opts, false)
}

func fetch(ctx context.Context, ref string, opts Options, withModule bool) (*Artifact, error) {
	r, err := parseRef(ref, opts)
	if err != nil {
		return nil, err
	}
	pinned, isDigest := r.(name.Digest)
	if !isDigest && !opts.AllowTag {
		return nil, fmt.Errorf("artifact: %s: %w: name the module by digest (…@sha256:<hex>, as `ociplugin push` prints it), or allow tags explicitly", ref, ErrNotPinned)
	}
	ropts := remoteOptions(ctx, opts)
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		if strings.Contains(err.Error(), "does not match requested digest") {
			return nil, fmt.Errorf("artifact: %s: %w: %v", ref, ErrDigestMismatch, err)
		}
		return nil, fmt.Errorf("artifact: fetching %s: %w", ref, err)
	}
	if len(desc.Manifest) > maxManifestSize {
		return nil, fmt.Errorf("artifact: %s: a %d-byte manifest is not a plugin's", ref, len(desc.Manifest))
	}
	digest := sha256Hash(desc.Manifest).String()
	if isDigest && pinned.DigestStr() != digest {
		return nil, fmt.Errorf("artifact: %s: %w: the registry served a manifest of digest %s", ref, ErrDigestMismatch, digest)
	}
	m, err := parseManifest(desc.Manifest, opts.RequireABI)
	if err != nil {
		return nil, fmt.Errorf("artifact: %s: %w", ref, err)
	}
	repo := r.Context()
	config, err := fetchBlob(repo, m.Config, maxConfigSize, ropts)
	if err != nil {
		return nil, fmt.Errorf("artifact: %s: config: %w", ref, err)
	}
	var module []byte
	if withModule {
		if module, err = fetchBlob(repo, m.Layers[0], MaxModuleSize, ropts); err != nil {
			return nil, fmt.Errorf("artifact: %s: module: %w", ref, err)
		}
	}
	a, err := verify(desc.Manifest, config, module, digest, opts.RequireABI, withModule)
	if err != nil {
		return nil, fmt.Errorf("artifact: %s: %w", ref, err)
	}
	a.Ref = repo.Digest(digest).String()
	return a, nil
}

// fetchBlob reads a blob of at most max bytes and checks it against d.
func fetchBlob(repo name.Repository, d v1.Descriptor, max int64, ropts []remote.Option) ([]byte, error) {
	if d.Size < 0 || d.Size > max {
		return nil, fmt.Errorf("%s: a size of %d bytes is out of bounds (at most %d)", d.Digest, d.Size, max)
	}
	layer, err := remote.Layer(repo.Digest(d.Digest.String()), ropts...)
	if err != nil {
		return nil, err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		if strings.Contains(err.Error(), "error verifying") || strings.Contains(err.Error(), "does not match") {
			return nil, fmt.Errorf("%s: %w: %v", d.Digest, ErrDigestMismatch, err)
		}
		return nil, err
	}
	return b, checkBlob(b, d)
}

func checkBlob(b []byte, d v1.Descriptor) error {
	if got := sha256Hash(b); got != d.Digest {
		return fmt.Errorf("%w: the blob read for %s has digest %s", ErrDigestMismatch, d.Digest, got)
	}
	if int64(len(b)) != d.Size {
		return fmt.Errorf("%w: the blob %s has %d bytes, the manifest says %d", ErrDigestMismatch, d.Digest, len(b), d.Size)
	}
	return nil
}

// parseManifest checks that raw is a wasm plugin artifact's manifest and,
// if requireABI is set, that it implements that version.
func parseManifest(raw []byte, requireABI string) (*v1.Manifest, error) {
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: the manifest does not parse: %v", ErrNotArtifact, err)
	}
	if m.SchemaVersion != 2 || (m.MediaType != "" && m.MediaType != types.OCIManifestSchema1) {
		return nil, fmt.Errorf("%w: manifest media type %q (schema %d), want %s", ErrNotArtifact, m.MediaType, m.SchemaVersion, types.OCIManifestSchema1)
	}
	if m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("%w: config media type %q, want %s", ErrNotArtifact, m.Config.MediaType, ConfigMediaType)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != LayerMediaType {
		var got []string
		for _, l := range m.Layers {
			got = append(got, string(l.MediaType))
		}
		return nil, fmt.Errorf("%w: layers %q, want one %s layer", ErrNotArtifact, got, LayerMediaType)
	}
	world, version := m.Annotations[AnnotationWorld], m.Annotations[AnnotationABIVersion]
	if version == "" || world == "" {
		return nil, fmt.Errorf("%w: the manifest has no %s and %s annotations", ErrABIMismatch, AnnotationWorld, AnnotationABIVersion)
	}
	if world != worldPrefix+version {
		return nil, fmt.Errorf("%w: annotations disagree: world %s, ABI version %s", ErrABIMismatch, world, version)
	}
	if requireABI != "" && version != requireABI {
		return nil, fmt.Errorf("%w: the artifact implements %s (annotation %s), this host speaks %s%s: use a plugin built for it",
			ErrABIMismatch, world, AnnotationABIVersion, worldPrefix, requireABI)
	}
	return &m, nil
}

// verify checks an artifact's three documents against each other and, if
// digest is set, the manifest against it. With module nil and withModule
// false, the module is not checked.
func verify(manifest, config, module []byte, digest, requireABI string, withModule bool) (*Artifact, error) {
	if digest != "" {
		if got := sha256Hash(manifest).String(); got != digest {
			return nil, fmt.Errorf("%w: the manifest's digest is %s, not %s", ErrDigestMismatch, got, digest)
		}
	}
	m, err := parseManifest(manifest, requireABI)
	if err != nil {
		return nil, err
	}
	if err := checkBlob(config, m.Config); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c wasmConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("%w: the config does not parse: %v", ErrNotArtifact, err)
	}
	layer := m.Layers[0]
	if c.Architecture != Architecture || c.OS != OS {
		return nil, fmt.Errorf("%w: config architecture %q, os %q: want %s, %s", ErrNotArtifact, c.Architecture, c.OS, Architecture, OS)
	}
	if !slices.Equal(c.LayerDigests, []string{layer.Digest.String()}) {
		return nil, fmt.Errorf("%w: config layerDigests %q do not list the layer %s", ErrNotArtifact, c.LayerDigests, layer.Digest)
	}
	a := &Artifact{
		Digest:       sha256Hash(manifest).String(),
		Manifest:     manifest,
		Config:       config,
		ModuleDigest: layer.Digest.String(),
		ModuleSize:   layer.Size,
		Title:        m.Annotations[AnnotationTitle],
		World:        m.Annotations[AnnotationWorld],
		ABIVersion:   m.Annotations[AnnotationABIVersion],
		Annotations:  maps.Clone(m.Annotations),
	}
	if !withModule {
		return a, nil
	}
	if err := checkBlob(module, layer); err != nil {
		return nil, fmt.Errorf("module: %w", err)
	}
	info, err := InspectModule(module)
	if err != nil {
		return nil, fmt.Errorf("module: %w", err)
	}
	if info.World != a.World {
		return nil, fmt.Errorf("%w: the artifact says %s but its module implements %s (read from its %s)", ErrABIMismatch, a.World, info.World, info.From)
	}
	a.Module = module
	return a, nil
}

// parseRef parses ref, refusing names without an explicit tag or digest.
func parseRef(ref string, opts Options) (name.Reference, error) {
	ref = strings.TrimPrefix(ref, "oci://")
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("artifact: reference %q: %w (want registry/repository:tag or registry/repository@sha256:<hex>)", ref, err)
	}
	if !useTLS(r.Context().RegistryStr(), opts) {
		r, err = name.ParseReference(ref, name.StrictValidation, name.Insecure)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// IsLoopback tells whether a registry (host[:port]) is on this machine,
// where plain HTTP is the default.
func IsLoopback(registry string) bool {
	return location.Location{Registry: registry}.IsLoopback()
}

func useTLS(registry string, opts Options) bool {
	if opts.UseTLS != nil {
		return *opts.UseTLS
	}
	return !IsLoopback(registry)
}

func remoteOptions(ctx context.Context, opts Options) []remote.Option {
	t := opts.Transport
	if t == nil {
		t = http.DefaultTransport.(*http.Transport).Clone()
	}
	// go-containerregistry falls back to plain HTTP for private addresses
	// by itself; with TLS wanted, nothing may go out in the clear.
	if opts.UseTLS == nil || *opts.UseTLS {
		t = &tlsOnly{next: t, allowLoopback: opts.UseTLS == nil}
	}
	auth := opts.Auth
	if auth == nil {
		auth = authn.Anonymous
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(t),
		remote.WithAuth(auth),
		remote.WithUserAgent("ocistore-plugin/" + abi.Version),
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 3, Jitter: 0.1, Steps: 3}),
	}
}

// tlsOnly refuses requests over plain HTTP, but to loopback registries when
// the default applies.
type tlsOnly struct {
	next          http.RoundTripper
	allowLoopback bool
}

func (t *tlsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !(t.allowLoopback && IsLoopback(req.URL.Host)) {
		return nil, fmt.Errorf("artifact: refusing plain HTTP to %s: this registry is reached over TLS", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// ModuleDigest is the digest of a module's bytes, as a layer's.
func ModuleDigest(wasm []byte) string { return sha256Hash(wasm).String() }
