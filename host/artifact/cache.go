package artifact

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Cache keeps verified artifacts on disk, by manifest digest:
//
//	<Dir>/sha256/<hex>/manifest.json
//	<Dir>/sha256/<hex>/config.json
//	<Dir>/sha256/<hex>/module.wasm
//
// An entry is written whole or not at all (a temporary directory renamed
// into place), and is verified again each time it is read: the manifest
// against the digest that names it, the config and the module against the
// manifest. A corrupted entry is removed and reported as a miss that wraps
// ErrDigestMismatch.
type Cache struct {
	Dir string
}

const (
	manifestFile = "manifest.json"
	configFile   = "config.json"
	moduleFile   = "module.wasm"
)

func (c Cache) entry(digest string) (string, error) {
	hexDigest, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexDigest) != 64 || strings.Trim(hexDigest, "0123456789abcdef") != "" {
		return "", fmt.Errorf("artifact cache: %q is not a sha256 digest", digest)
	}
	return filepath.Join(c.Dir, "sha256", hexDigest), nil
}

// Get returns the artifact of digest, verified. A miss is an error that
// wraps fs.ErrNotExist; a corrupted entry, removed, one that wraps
// ErrDigestMismatch (or ErrABIMismatch if it no longer matches requireABI).
func (c Cache) Get(digest, requireABI string) (*Artifact, error) {
	dir, err := c.entry(digest)
	if err != nil {
		return nil, err
	}
	var docs [3][]byte
	for i, f := range []string{manifestFile, configFile, moduleFile} {
		if docs[i], err = os.ReadFile(filepath.Join(dir, f)); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("artifact cache: %s: %w", digest, fs.ErrNotExist)
			}
			return nil, fmt.Errorf("artifact cache: %w", err)
		}
	}
	a, err := verify(docs[0], docs[1], docs[2], digest, requireABI, true)
	if err != nil {
		if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrNotArtifact) || errors.Is(err, ErrNotModule) {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("artifact cache: %s was corrupted (removed): %w", dir, err)
		}
		return nil, fmt.Errorf("artifact cache: %s: %w", dir, err)
	}
	return a, nil
}

// Put stores a, which must have been verified (by Pull) and carry its
// module.
func (c Cache) Put(a *Artifact) error {
	if a.Module == nil {
		return errors.New("artifact cache: the artifact has no module")
	}
	dir, err := c.entry(a.Digest)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-")
	if err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, f := range []struct {
		name string
		data []byte
	}{{manifestFile, a.Manifest}, {configFile, a.Config}, {moduleFile, a.Module}} {
		if err := os.WriteFile(filepath.Join(tmp, f.name), f.data, 0o644); err != nil {
			return fmt.Errorf("artifact cache: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("artifact cache: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return nil // another process stored it first
		}
		return fmt.Errorf("artifact cache: %w", err)
	}
	return nil
}
