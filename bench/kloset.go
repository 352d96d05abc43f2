package main

// The least of Kloset that backs up and restores a tree the way the plakar
// CLI does (create, backup, restore), after host/klosettest_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync/atomic"

	_ "github.com/PlakarKorp/integrations/fs/exporter" // registers fs://
	_ "github.com/PlakarKorp/integrations/fs/importer"
	"github.com/PlakarKorp/kloset/caching"
	"github.com/PlakarKorp/kloset/caching/pebble"
	"github.com/PlakarKorp/kloset/connectors"
	"github.com/PlakarKorp/kloset/connectors/exporter"
	"github.com/PlakarKorp/kloset/connectors/importer"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/encryption"
	"github.com/PlakarKorp/kloset/events"
	"github.com/PlakarKorp/kloset/hashing"
	"github.com/PlakarKorp/kloset/kcontext"
	"github.com/PlakarKorp/kloset/logging"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	kresources "github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/snapshot"
	"github.com/PlakarKorp/kloset/versioning"
)

// klosetEnv is a KContext as the plakar CLI sets one up, with its cache in
// dir, and a count of the error events Kloset reports (a backup or restore
// "succeeds" with them).
type klosetEnv struct {
	kctx    *kcontext.KContext
	cache   *caching.Manager
	errors  atomic.Int64
	drained chan struct{}
	log     bytes.Buffer
}

func newKlosetEnv(dir string) *klosetEnv {
	kctx := kcontext.NewKContext()
	kctx.CacheDir = dir
	kctx.MaxConcurrency = max(2*runtime.NumCPU(), 4)
	kctx.Client = "ocistore-bench"
	kctx.Hostname, _ = os.Hostname()
	kctx.OperatingSystem, kctx.Architecture = runtime.GOOS, runtime.GOARCH
	kctx.ProcessID = os.Getpid()
	kctx.CWD, _ = os.Getwd()
	kctx.Stdin = strings.NewReader("")
	e := &klosetEnv{kctx: kctx, drained: make(chan struct{})}
	kctx.Stdout, kctx.Stderr = io.Discard, io.Discard
	kctx.SetLogger(logging.NewLogger(io.Discard, &e.log))
	e.cache = caching.NewManager(pebble.Constructor(dir))
	kctx.SetCache(e.cache)
	bus := kctx.Events().Listen()
	go func() {
		defer close(e.drained)
		for ev := range bus {
			if ev.Level == events.Error {
				e.errors.Add(1)
			}
		}
	}()
	return e
}

func (e *klosetEnv) close() {
	e.cache.Close()
	e.kctx.Close()
	<-e.drained
}

func (e *klosetEnv) check(what string) error {
	if n := e.errors.Swap(0); n > 0 {
		return fmt.Errorf("%s: kloset reported %d error events", what, n)
	}
	if err := context.Cause(e.kctx); err != nil {
		return fmt.Errorf("%s: the KContext was cancelled: %w", what, err)
	}
	return nil
}

// klosetConfig is `plakar create`'s configuration, encrypted with a key
// derived from passphrase: the wrapped bytes Store.Create keeps, and the
// key.
func klosetConfig(passphrase []byte) (wrapped, key []byte, err error) {
	config := storage.NewConfiguration()
	hc, err := hashing.LookupDefaultConfiguration(strings.ToUpper(hashing.DEFAULT_HASHING_ALGORITHM))
	if err != nil {
		return nil, nil, err
	}
	config.Hashing = *hc
	if key, err = encryption.DeriveKey(config.Encryption.KDFParams, passphrase); err != nil {
		return nil, nil, err
	}
	if config.Encryption.Canary, err = encryption.DeriveCanary(config.Encryption, key); err != nil {
		return nil, nil, err
	}
	serialized, err := config.ToBytes()
	if err != nil {
		return nil, nil, err
	}
	rd, err := storage.Serialize(hashing.GetMACHasher(storage.DEFAULT_HASHING_ALGORITHM, key), kresources.RT_CONFIG,
		versioning.GetCurrentVersion(kresources.RT_CONFIG), bytes.NewReader(serialized))
	if err != nil {
		return nil, nil, err
	}
	wrapped, err = io.ReadAll(rd)
	return wrapped, key, err
}

func connectorOptions(kctx *kcontext.KContext) *connectors.Options {
	return &connectors.Options{
		Hostname: kctx.Hostname, OperatingSystem: kctx.OperatingSystem, Architecture: kctx.Architecture,
		CWD: kctx.CWD, MaxConcurrency: kctx.MaxConcurrency, Stdin: kctx.Stdin, Stdout: kctx.Stdout, Stderr: kctx.Stderr,
	}
}

// klosetBackup is `plakar backup ROOTS...` into repo, with packfiles staged
// in packDir.
func klosetBackup(e *klosetEnv, repo *repository.Repository, packDir string, roots ...string) (objects.MAC, error) {
	var imps []importer.Importer
	defer func() {
		for _, imp := range imps {
			imp.Close(e.kctx)
		}
	}()
	for _, root := range roots {
		imp, err := importer.NewImporter(e.kctx, connectorOptions(e.kctx), map[string]string{"location": "fs://" + root})
		if err != nil {
			return objects.NilMac, err
		}
		imps = append(imps, imp)
	}
	source, err := snapshot.NewSource(e.kctx, imps...)
	if err != nil {
		return objects.NilMac, err
	}
	snap, err := snapshot.Create(repo, repository.DefaultType, packDir, objects.RandomMAC(), &snapshot.BuilderOptions{Name: "bench"})
	if err != nil {
		return objects.NilMac, err
	}
	defer snap.Close()
	if err := snap.Backup(source); err != nil {
		return objects.NilMac, err
	}
	if err := snap.Commit(); err != nil {
		return objects.NilMac, err
	}
	for _, s := range snap.Header.Sources {
		if n := s.Summary.Directory.Errors + s.Summary.Below.Errors; n > 0 {
			return objects.NilMac, fmt.Errorf("the snapshot records %d errors", n)
		}
	}
	return snap.Header.Identifier, e.check("backup")
}

// klosetRestore is `plakar restore -to DEST SNAPSHOT:/`.
func klosetRestore(e *klosetEnv, repo *repository.Repository, id objects.MAC, dest string) error {
	exp, err := exporter.NewExporter(e.kctx, connectorOptions(e.kctx), map[string]string{"location": "fs://" + dest})
	if err != nil {
		return err
	}
	defer exp.Close(e.kctx)
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return err
	}
	defer snap.Close()
	if err := snap.Export(exp, "/", &snapshot.ExportOptions{}); err != nil {
		return err
	}
	return e.check("restore")
}

// klosetCheck is `plakar check SNAPSHOT`: every chunk of every file read
// and checked against its MAC.
func klosetCheck(e *klosetEnv, repo *repository.Repository, id objects.MAC) error {
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return err
	}
	defer snap.Close()
	cc, err := e.cache.Check()
	if err != nil {
		return err
	}
	defer cc.Close()
	snap.SetCheckCache(cc)
	if err := snap.Check("/", &snapshot.CheckOptions{}); err != nil {
		return err
	}
	return e.check("check")
}

// openRepository is what plakar does before a command: the store's
// configuration read and checked against the key.
func openRepository(e *klosetEnv, store storage.Store, key []byte) (*repository.Repository, error) {
	wrapped, err := store.Open(e.kctx)
	if err != nil {
		return nil, err
	}
	config, err := storage.NewConfigurationFromWrappedBytes(wrapped)
	if err != nil {
		return nil, err
	}
	if !encryption.VerifyCanary(config.Encryption, key) {
		return nil, errors.New("wrong key")
	}
	return repository.New(e.kctx, key, store, wrapped)
}
