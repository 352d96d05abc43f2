package host_test

// Helpers that drive Kloset v1.1.4 the way the plakar CLI does (create,
// backup, ls, restore), for the end-to-end test in e2e_test.go. Each one
// names the plakar subcommand it mirrors.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

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
	"github.com/PlakarKorp/kloset/locate"
	"github.com/PlakarKorp/kloset/logging"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	"github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/snapshot"
	"github.com/PlakarKorp/kloset/snapshot/vfs"
	"github.com/PlakarKorp/kloset/versioning"

	// The fs importer and exporter register "fs" with Kloset; the fs
	// storage backend is the reference the oci store is compared with.
	_ "github.com/PlakarKorp/integrations/fs/exporter"
	_ "github.com/PlakarKorp/integrations/fs/importer"
	_ "github.com/PlakarKorp/integrations/fs/storage"
)

// klosetEnv is what the plakar CLI sets up before any subcommand: a
// KContext with a cache manager and a logger, and a listener on its event
// bus. Everything lives in t.TempDir() and is closed by t.Cleanup.
type klosetEnv struct {
	kctx *kcontext.KContext
	log  *lockedBuffer

	mu     sync.Mutex
	errors []string // events of level "error" not yet checked
}

func newKlosetEnv(t *testing.T) *klosetEnv {
	t.Helper()
	kctx := kcontext.NewKContext()
	kctx.CacheDir = t.TempDir()
	// plakar derives its concurrency from the CPU count; 0 would start no
	// importer or packer workers at all.
	kctx.MaxConcurrency = max(2*runtime.NumCPU(), 4)
	kctx.Client = "ocistore-e2e-test"
	kctx.Hostname, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		kctx.Username = u.Username
	}
	kctx.OperatingSystem = runtime.GOOS
	kctx.Architecture = runtime.GOARCH
	kctx.ProcessID = os.Getpid()
	kctx.CWD, _ = os.Getwd()
	kctx.Stdin = strings.NewReader("")

	env := &klosetEnv{kctx: kctx, log: &lockedBuffer{}}
	kctx.Stdout = env.log
	kctx.Stderr = env.log
	kctx.SetLogger(logging.NewLogger(env.log, env.log))
	// The cache goes where plakar's would, in its cache directory.
	cache := caching.NewManager(pebble.Constructor(kctx.CacheDir))
	kctx.SetCache(cache)

	// An event bus that nobody listens to drops its events; plakar's UI
	// listens, and so do we, to catch the per-path errors that Kloset
	// reports only as events (a backup or restore "succeeds" with them).
	bus := kctx.Events().Listen()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for ev := range bus {
			if ev.Level == events.Error {
				env.mu.Lock()
				env.errors = append(env.errors, formatEvent(ev))
				env.mu.Unlock()
			}
		}
	}()

	t.Cleanup(func() {
		if err := cache.Close(); err != nil {
			t.Errorf("closing the cache manager: %v", err)
		}
		kctx.Close() // closes the event bus
		<-drained
		if s := env.log.String(); s != "" && t.Failed() {
			t.Logf("kloset log:\n%s", s)
		}
	})
	return env
}

func formatEvent(ev *events.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", ev.Workflow, ev.Type)
	for _, k := range slices.Sorted(maps.Keys(ev.Data)) {
		fmt.Fprintf(&b, " %s=%v", k, ev.Data[k])
	}
	return b.String()
}

// checkClean fails t if Kloset reported error events or logged anything
// (warnings and errors go to the log) since the last check, or if the
// KContext was cancelled: a packfile that failed to upload cancels it.
func (env *klosetEnv) checkClean(t *testing.T, phase string) {
	t.Helper()
	env.mu.Lock()
	errs := env.errors
	env.errors = nil
	env.mu.Unlock()
	for i, e := range errs {
		if i == 20 {
			t.Errorf("%s: ... and %d more error events", phase, len(errs)-i)
			break
		}
		t.Errorf("%s: error event: %s", phase, e)
	}
	if s := env.log.Take(); s != "" {
		t.Errorf("%s: kloset logged:\n%s", phase, s)
	}
	if err := context.Cause(env.kctx); err != nil {
		t.Fatalf("%s: the KContext was cancelled: %v", phase, err)
	}
}

// cause returns what cancelled kctx when err is the cancellation, as plakar
// does with ctx.ErrorCause.
func cause(kctx *kcontext.KContext, err error) error {
	if err != nil && errors.Is(err, context.Canceled) {
		if c := context.Cause(kctx); c != nil && c != err {
			return fmt.Errorf("%w (cause: %w)", err, c)
		}
	}
	return err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Take returns what was written since the last Take.
func (l *lockedBuffer) Take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// --- plakar create ---

// newWrappedConfig builds the configuration `plakar create` stores: Kloset's
// default configuration (default hashing, compression on), encrypted with a
// key derived from passphrase and checked by a canary, serialized and
// wrapped with a MAC made with that key.
func newWrappedConfig(passphrase []byte) ([]byte, *storage.Configuration, error) {
	config := storage.NewConfiguration()
	hashingConfig, err := hashing.LookupDefaultConfiguration(strings.ToUpper(hashing.DEFAULT_HASHING_ALGORITHM))
	if err != nil {
		return nil, nil, err
	}
	config.Hashing = *hashingConfig
	if len(passphrase) == 0 {
		return nil, nil, errors.New("can't encrypt the repository with an empty passphrase")
	}
	key, err := encryption.DeriveKey(config.Encryption.KDFParams, passphrase)
	if err != nil {
		return nil, nil, err
	}
	canary, err := encryption.DeriveCanary(config.Encryption, key)
	if err != nil {
		return nil, nil, err
	}
	config.Encryption.Canary = canary
	hasher := hashing.GetMACHasher(storage.DEFAULT_HASHING_ALGORITHM, key)

	serialized, err := config.ToBytes()
	if err != nil {
		return nil, nil, err
	}
	rd, err := storage.Serialize(hasher, resources.RT_CONFIG, versioning.GetCurrentVersion(resources.RT_CONFIG), bytes.NewReader(serialized))
	if err != nil {
		return nil, nil, err
	}
	wrapped, err := io.ReadAll(rd)
	if err != nil {
		return nil, nil, err
	}
	return wrapped, config, nil
}

// createRepository is `plakar at LOCATION create` with a passphrase.
func createRepository(kctx *kcontext.KContext, storeConfig map[string]string, passphrase []byte) (*storage.Configuration, error) {
	wrapped, config, err := newWrappedConfig(passphrase)
	if err != nil {
		return nil, err
	}
	store, err := storage.Create(kctx, maps.Clone(storeConfig), wrapped)
	if err != nil {
		return nil, fmt.Errorf("creating a repository at %s: %w", storeConfig["location"], err)
	}
	if err := store.Close(kctx); err != nil {
		return nil, fmt.Errorf("closing the store of %s: %w", storeConfig["location"], err)
	}
	return config, nil
}

// --- opening a repository, as plakar does before any other subcommand ---

var (
	errWrongPassphrase  = errors.New("wrong passphrase")
	errNeedsPassphrase  = errors.New("the repository is encrypted: a passphrase is required")
	errIncompatibleRepo = errors.New("incompatible repository version")
)

// openRepository opens the repository at storeConfig: it reads the stored
// configuration, derives the key from passphrase and checks it against the
// configuration's canary before anything else, then builds the repository
// (which rebuilds its local state from the store's states). wrap, if not
// nil, wraps the store the repository uses.
func openRepository(kctx *kcontext.KContext, storeConfig map[string]string, passphrase []byte, wrap func(storage.Store) storage.Store) (*repository.Repository, error) {
	loc := storeConfig["location"]
	store, wrapped, err := storage.Open(kctx, maps.Clone(storeConfig))
	if err != nil {
		return nil, fmt.Errorf("opening the store at %s: %w", loc, err)
	}
	fail := func(err error) (*repository.Repository, error) {
		store.Close(kctx)
		return nil, err
	}
	config, err := storage.NewConfigurationFromWrappedBytes(wrapped)
	if err != nil {
		return fail(fmt.Errorf("reading the configuration of %s: %w", loc, err))
	}
	if config.Version != versioning.FromString(storage.VERSION) {
		return fail(fmt.Errorf("%w at %s: %s, expected %s", errIncompatibleRepo, loc, config.Version, storage.VERSION))
	}
	var key []byte
	if config.Encryption != nil {
		if len(passphrase) == 0 {
			return fail(fmt.Errorf("%w (%s)", errNeedsPassphrase, loc))
		}
		key, err = encryption.DeriveKey(config.Encryption.KDFParams, passphrase)
		if err != nil {
			return fail(fmt.Errorf("deriving the key of %s: %w", loc, err))
		}
		if !encryption.VerifyCanary(config.Encryption, key) {
			return fail(fmt.Errorf("%w for the repository at %s", errWrongPassphrase, loc))
		}
	}
	if wrap != nil {
		store = wrap(store)
	}
	repo, err := repository.New(kctx, key, store, wrapped)
	if err != nil {
		return fail(fmt.Errorf("opening the repository at %s: %w", loc, err))
	}
	return repo, nil
}

// --- plakar backup ---

// backupOptions are those plakar's importers get from the KContext.
func connectorOptions(kctx *kcontext.KContext) *connectors.Options {
	return &connectors.Options{
		Hostname:        kctx.Hostname,
		OperatingSystem: kctx.OperatingSystem,
		Architecture:    kctx.Architecture,
		CWD:             kctx.CWD,
		MaxConcurrency:  kctx.MaxConcurrency,
		Stdin:           kctx.Stdin,
		Stdout:          kctx.Stdout,
		Stderr:          kctx.Stderr,
	}
}

// backup is `plakar backup ROOT...`: one snapshot of one source made of an
// fs importer per root, with packfiles staged in a temporary directory and
// the latest snapshot of the same source as the VFS cache (plakar's default
// -cache vfs), so that unchanged files are neither read nor re-chunked.
// Once committed, the repository's local state is rebuilt from the store,
// which is how a later plakar command would see the new snapshot.
func backup(kctx *kcontext.KContext, repo *repository.Repository, packfileDir string, roots ...string) (objects.MAC, error) {
	var imps []importer.Importer
	defer func() {
		for _, imp := range imps {
			imp.Close(kctx)
		}
	}()
	opts := connectorOptions(kctx)
	for _, root := range roots {
		imp, err := importer.NewImporter(kctx, opts, map[string]string{"location": "fs://" + root})
		if err != nil {
			return objects.NilMac, fmt.Errorf("importer for %s: %w", root, err)
		}
		imps = append(imps, imp)
	}
	source, err := snapshot.NewSource(kctx, imps...)
	if err != nil {
		return objects.NilMac, err
	}

	snap, err := snapshot.Create(repo, repository.DefaultType, packfileDir, objects.RandomMAC(), &snapshot.BuilderOptions{
		Name: "e2e",
		Tags: []string{"e2e"},
	})
	if err != nil {
		return objects.NilMac, fmt.Errorf("creating the snapshot: %w", cause(kctx, err))
	}
	defer snap.Close()

	parents, _, err := locate.Match(repo, &locate.LocateOptions{Filters: locate.LocateFilters{
		Latest:  true,
		Roots:   []string{source.Root()},
		Types:   []string{source.Type()},
		Origins: []string{source.Origin()},
	}})
	if err != nil {
		return objects.NilMac, fmt.Errorf("locating the parent snapshot: %w", err)
	}
	var parentVFS *vfs.Filesystem
	if len(parents) > 0 {
		parent, err := snapshot.Load(repo, parents[0])
		if err != nil {
			return objects.NilMac, fmt.Errorf("loading the parent snapshot %x: %w", parents[0], err)
		}
		defer parent.Close()
		if parentVFS, err = parent.FilesystemWithCache(); err != nil {
			return objects.NilMac, fmt.Errorf("the VFS of the parent snapshot %x: %w", parents[0], err)
		}
	}
	snap.WithVFSCache(parentVFS)

	if err := snap.Backup(source); err != nil {
		return objects.NilMac, fmt.Errorf("backing up %s: %w", strings.Join(roots, ", "), cause(kctx, err))
	}
	if err := snap.Commit(); err != nil {
		return objects.NilMac, fmt.Errorf("committing the snapshot: %w", cause(kctx, err))
	}
	var nerrors uint64
	for _, s := range snap.Header.Sources {
		nerrors += s.Summary.Directory.Errors + s.Summary.Below.Errors
	}
	if nerrors > 0 {
		return objects.NilMac, fmt.Errorf("the snapshot %x records %d errors", snap.Header.Identifier, nerrors)
	}
	if err := repo.RebuildState(); err != nil {
		return objects.NilMac, fmt.Errorf("rebuilding the state after the backup: %w", err)
	}
	return snap.Header.Identifier, nil
}

// --- plakar ls ---

// listSnapshots is `plakar ls`: the snapshots of the repository, sorted by
// identifier.
func listSnapshots(repo *repository.Repository) ([]objects.MAC, error) {
	var ids []objects.MAC
	for id, err := range repo.ListSnapshots() {
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b objects.MAC) int { return bytes.Compare(a[:], b[:]) })
	return ids, nil
}

// fileEntry is what the test compares of a path, on disk and in a snapshot.
type fileEntry struct {
	Type    fs.FileMode // fs.ModeDir, fs.ModeSymlink or 0 for a regular file
	Perm    fs.FileMode
	Size    int64  // regular files only
	Target  string // symlinks only
	ModTime int64  // regular files only, in ns
}

func entryOf(fi fs.FileInfo, target string) fileEntry {
	e := fileEntry{Type: fi.Mode().Type(), Perm: fi.Mode().Perm(), Target: target}
	if fi.Mode().IsRegular() {
		e.Size = fi.Size()
		e.ModTime = fi.ModTime().UnixNano()
	}
	return e
}

func (e fileEntry) String() string {
	switch {
	case e.Type == fs.ModeDir:
		return fmt.Sprintf("dir %v", e.Perm)
	case e.Type == fs.ModeSymlink:
		return fmt.Sprintf("symlink -> %q", e.Target)
	case e.Type == 0:
		return fmt.Sprintf("file %v, %d bytes", e.Perm, e.Size)
	}
	return fmt.Sprintf("%v", e.Type|e.Perm)
}

// listFiles is `plakar ls -recursive SNAPSHOT:/`: every path of the
// snapshot.
func listFiles(repo *repository.Repository, id objects.MAC) (map[string]fileEntry, error) {
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return nil, fmt.Errorf("loading the snapshot %x: %w", id, err)
	}
	defer snap.Close()
	fsc, err := snap.Filesystem()
	if err != nil {
		return nil, err
	}
	files := make(map[string]fileEntry)
	err = fsc.WalkDir("/", func(p string, e *vfs.Entry, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		files[p] = entryOf(e.Stat(), e.SymlinkTarget)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for e, err := range fsc.Errors("/") {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("the snapshot records an error for %s: %s", e.Name, e.Error)
	}
	return files, nil
}

// readFile reads one file of a snapshot through its VFS.
func readFile(repo *repository.Repository, id objects.MAC, p string) ([]byte, error) {
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	fsc, err := snap.Filesystem()
	if err != nil {
		return nil, err
	}
	f, err := fsc.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// --- plakar restore ---

// restore is `plakar restore -to DEST SNAPSHOT:/`: the whole snapshot,
// absolute paths and all, under dest.
func restore(kctx *kcontext.KContext, repo *repository.Repository, id objects.MAC, dest string) error {
	exp, err := exporter.NewExporter(kctx, connectorOptions(kctx), map[string]string{"location": "fs://" + dest})
	if err != nil {
		return err
	}
	defer exp.Close(kctx)
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return fmt.Errorf("loading the snapshot %x: %w", id, err)
	}
	defer snap.Close()
	if err := snap.Export(exp, "/", &snapshot.ExportOptions{}); err != nil {
		return fmt.Errorf("restoring the snapshot %x: %w", id, cause(kctx, err))
	}
	return nil
}

// --- a store that counts what goes through it ---

// opKey names a store call: the method and the resource.
type opKey struct {
	Method   string
	Resource storage.StorageResource
}

func (k opKey) String() string {
	if k.Resource == storage.StorageResourceUndefined {
		return k.Method
	}
	return k.Method + " " + k.Resource.String()
}

// storeStats are the calls a store received and the bytes it was sent
// (Put) and sent back (Get).
type storeStats struct {
	Calls    map[opKey]int
	Errors   map[opKey]int
	PutBytes map[storage.StorageResource]int64
	GetBytes map[storage.StorageResource]int64
	Ranged   int // ranged Gets
}

func newStoreStats() storeStats {
	return storeStats{
		Calls:    map[opKey]int{},
		Errors:   map[opKey]int{},
		PutBytes: map[storage.StorageResource]int64{},
		GetBytes: map[storage.StorageResource]int64{},
	}
}

func (s storeStats) clone() storeStats {
	return storeStats{
		Calls:    maps.Clone(s.Calls),
		Errors:   maps.Clone(s.Errors),
		PutBytes: maps.Clone(s.PutBytes),
		GetBytes: maps.Clone(s.GetBytes),
		Ranged:   s.Ranged,
	}
}

// since returns the difference s - before.
func (s storeStats) since(before storeStats) storeStats {
	d := newStoreStats()
	for k, v := range s.Calls {
		if n := v - before.Calls[k]; n != 0 {
			d.Calls[k] = n
		}
	}
	for k, v := range s.Errors {
		if n := v - before.Errors[k]; n != 0 {
			d.Errors[k] = n
		}
	}
	for k, v := range s.PutBytes {
		if n := v - before.PutBytes[k]; n != 0 {
			d.PutBytes[k] = n
		}
	}
	for k, v := range s.GetBytes {
		if n := v - before.GetBytes[k]; n != 0 {
			d.GetBytes[k] = n
		}
	}
	d.Ranged = s.Ranged - before.Ranged
	return d
}

func (s storeStats) String() string {
	keys := slices.SortedFunc(maps.Keys(s.Calls), func(a, b opKey) int {
		return strings.Compare(a.String(), b.String())
	})
	var parts []string
	for _, k := range keys {
		p := fmt.Sprintf("%s×%d", k, s.Calls[k])
		if n := s.Errors[k]; n > 0 {
			p += fmt.Sprintf(" (%d failed)", n)
		}
		switch k.Method {
		case "Put":
			p += fmt.Sprintf(" %d B", s.PutBytes[k.Resource])
		case "Get":
			p += fmt.Sprintf(" %d B", s.GetBytes[k.Resource])
		}
		parts = append(parts, p)
	}
	if s.Ranged > 0 {
		parts = append(parts, fmt.Sprintf("(%d ranged Gets)", s.Ranged))
	}
	return strings.Join(parts, ", ")
}

// countingStore wraps a storage.Store and counts its calls and bytes. The
// bytes of a Put are those the store read from Kloset's reader.
type countingStore struct {
	storage.Store

	mu    sync.Mutex
	stats storeStats
}

func newCountingStore(inner storage.Store) *countingStore {
	return &countingStore{Store: inner, stats: newStoreStats()}
}

func (c *countingStore) Stats() storeStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats.clone()
}

func (c *countingStore) count(method string, res storage.StorageResource, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := opKey{method, res}
	c.stats.Calls[k]++
	if err != nil {
		c.stats.Errors[k]++
	}
}

func (c *countingStore) addBytes(m map[storage.StorageResource]int64, res storage.StorageResource, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m[res] += n
}

func (c *countingStore) Create(ctx context.Context, config []byte) error {
	err := c.Store.Create(ctx, config)
	c.count("Create", storage.StorageResourceUndefined, err)
	return err
}

func (c *countingStore) Open(ctx context.Context) ([]byte, error) {
	b, err := c.Store.Open(ctx)
	c.count("Open", storage.StorageResourceUndefined, err)
	return b, err
}

func (c *countingStore) Ping(ctx context.Context) error {
	err := c.Store.Ping(ctx)
	c.count("Ping", storage.StorageResourceUndefined, err)
	return err
}

func (c *countingStore) Mode(ctx context.Context) (storage.Mode, error) {
	m, err := c.Store.Mode(ctx)
	c.count("Mode", storage.StorageResourceUndefined, err)
	return m, err
}

func (c *countingStore) Size(ctx context.Context) (int64, error) {
	n, err := c.Store.Size(ctx)
	c.count("Size", storage.StorageResourceUndefined, err)
	return n, err
}

func (c *countingStore) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	macs, err := c.Store.List(ctx, res)
	c.count("List", res, err)
	return macs, err
}

func (c *countingStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	cr := &countingReader{r: rd}
	n, err := c.Store.Put(ctx, res, mac, cr)
	c.count("Put", res, err)
	c.addBytes(c.stats.PutBytes, res, cr.n)
	if err == nil && n != cr.n {
		err = fmt.Errorf("countingStore: Put %s %x returned %d bytes but read %d", res, mac, n, cr.n)
	}
	return n, err
}

func (c *countingStore) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	rd, err := c.Store.Get(ctx, res, mac, rng)
	c.count("Get", res, err)
	if rng != nil {
		c.mu.Lock()
		c.stats.Ranged++
		c.mu.Unlock()
	}
	if err != nil {
		return rd, err
	}
	return &countingReadCloser{ReadCloser: rd, add: func(n int64) { c.addBytes(c.stats.GetBytes, res, n) }}, nil
}

func (c *countingStore) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	err := c.Store.Delete(ctx, res, mac)
	c.count("Delete", res, err)
	return err
}

func (c *countingStore) Close(ctx context.Context) error {
	err := c.Store.Close(ctx)
	c.count("Close", storage.StorageResourceUndefined, err)
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type countingReadCloser struct {
	io.ReadCloser
	add func(int64)
}

func (c *countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.add(int64(n))
	return n, err
}

// --- the source tree ---

// sourceTree is what the test backs up: the roots, and every path the
// snapshot must hold (the roots' trees and their ancestors, which the fs
// importer records too).
type sourceTree struct {
	roots     []string
	entries   map[string]fileEntry
	randBytes int64 // bytes of generated (incompressible, unique) content
}

// generateFiles writes n files of random sizes up to maxSize, spread over
// a few directories, plus one file of bigSize, all of random content from a
// fixed seed. It returns the bytes written.
func generateFiles(dir string, seed uint64, n int, maxSize int, bigSize int) (int64, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	var key [32]byte
	for i := range key {
		key[i] = byte(r.Uint32())
	}
	content := rand.NewChaCha8(key)
	var total int64
	write := func(name string, size int) error {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return err
		}
		f, err := os.Create(name)
		if err != nil {
			return err
		}
		if _, err := io.CopyN(f, content, int64(size)); err != nil {
			f.Close()
			return err
		}
		total += int64(size)
		return f.Close()
	}
	for i := range n {
		size := r.IntN(maxSize + 1)
		switch i {
		case 0:
			size = maxSize
		case 1:
			size = 1
		}
		name := filepath.Join(dir, fmt.Sprintf("d%02d", i%8), fmt.Sprintf("sub%d", i%3), fmt.Sprintf("f%03d.bin", i))
		if err := write(name, size); err != nil {
			return total, err
		}
	}
	if err := write(filepath.Join(dir, "big", "big.bin"), bigSize); err != nil {
		return total, err
	}
	return total, nil
}

// scanTree describes roots as the snapshot must hold them.
func scanTree(roots ...string) (map[string]fileEntry, error) {
	entries := make(map[string]fileEntry)
	for _, root := range roots {
		for dir := filepath.Dir(root); ; dir = filepath.Dir(dir) {
			fi, err := os.Lstat(dir)
			if err != nil {
				return nil, err
			}
			entries[filepath.ToSlash(dir)] = entryOf(fi, "")
			if filepath.Dir(dir) == dir {
				break
			}
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			var target string
			if fi.Mode().Type() == fs.ModeSymlink {
				if target, err = os.Readlink(p); err != nil {
					return err
				}
			}
			entries[filepath.ToSlash(p)] = entryOf(fi, target)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// compareEntries reports the differences between the paths a snapshot
// holds and the source. Directories' times are not compared: those of the
// roots' ancestors move as the test works.
func compareEntries(want, got map[string]fileEntry) []string {
	var diffs []string
	for _, p := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("missing %s (%s)", p, want[p]))
			continue
		}
		if w := want[p]; w != g {
			diffs = append(diffs, fmt.Sprintf("%s: got %s mtime %d, want %s mtime %d", p, g, g.ModTime, w, w.ModTime))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("unexpected %s (%s)", p, got[p]))
		}
	}
	return diffs
}

// compareRestored checks the restored tree under dest against the source:
// the same paths (and no other), every regular file byte for byte with its
// permissions and time, every symlink with its target.
func compareRestored(src *sourceTree, dest string) ([]string, error) {
	restored := make(map[string]fileEntry)
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dest, p)
		if err != nil {
			return err
		}
		var target string
		if fi.Mode().Type() == fs.ModeSymlink {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		restored[path.Join("/", filepath.ToSlash(rel))] = entryOf(fi, target)
		return nil
	})
	if err != nil {
		return nil, err
	}
	diffs := compareEntries(src.entries, restored)
	for _, p := range slices.Sorted(maps.Keys(src.entries)) {
		if src.entries[p].Type != 0 {
			continue
		}
		if _, ok := restored[p]; !ok {
			continue // already reported
		}
		same, err := sameContent(filepath.FromSlash(p), filepath.Join(dest, filepath.FromSlash(p)))
		if err != nil {
			return nil, err
		}
		if !same {
			diffs = append(diffs, fmt.Sprintf("%s: restored content differs", p))
		}
	}
	return diffs, nil
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, errA := io.ReadFull(fa, ba)
		nb, errB := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		endA := errA == io.EOF || errA == io.ErrUnexpectedEOF
		endB := errB == io.EOF || errB == io.ErrUnexpectedEOF
		if errA != nil && !endA {
			return false, errA
		}
		if errB != nil && !endB {
			return false, errB
		}
		if endA || endB {
			return endA && endB, nil
		}
	}
}
