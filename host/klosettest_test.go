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
	"time"

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
	kresources "github.com/PlakarKorp/kloset/resources"
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
	log  *klosetLogBuffer

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

	env := &klosetEnv{kctx: kctx, log: &klosetLogBuffer{}}
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
				env.errors = append(env.errors, klosetFormatEvent(ev))
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

func klosetFormatEvent(ev *events.Event) string {
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

// klosetCause returns what cancelled kctx when err is the cancellation, as plakar
// does with ctx.ErrorCause.
func klosetCause(kctx *kcontext.KContext, err error) error {
	if err != nil && errors.Is(err, context.Canceled) {
		if c := context.Cause(kctx); c != nil && c != err {
			return fmt.Errorf("%w (cause: %w)", err, c)
		}
	}
	return err
}

type klosetLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *klosetLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *klosetLogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Take returns what was written since the last Take.
func (l *klosetLogBuffer) Take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// --- plakar create ---

// klosetWrappedConfig builds the configuration `plakar create` stores: Kloset's
// default configuration (default hashing, compression on), encrypted with a
// key derived from passphrase and checked by a canary, serialized and
// wrapped with a MAC made with that key.
func klosetWrappedConfig(passphrase []byte) ([]byte, *storage.Configuration, error) {
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
	rd, err := storage.Serialize(hasher, kresources.RT_CONFIG, versioning.GetCurrentVersion(kresources.RT_CONFIG), bytes.NewReader(serialized))
	if err != nil {
		return nil, nil, err
	}
	wrapped, err := io.ReadAll(rd)
	if err != nil {
		return nil, nil, err
	}
	return wrapped, config, nil
}

// klosetCreate is `plakar at LOCATION create` with a passphrase.
func klosetCreate(kctx *kcontext.KContext, storeConfig map[string]string, passphrase []byte) (*storage.Configuration, error) {
	wrapped, config, err := klosetWrappedConfig(passphrase)
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
	errKlosetWrongPassphrase = errors.New("wrong passphrase")
	errKlosetNeedsPassphrase = errors.New("the repository is encrypted: a passphrase is required")
	errKlosetIncompatible    = errors.New("incompatible repository version")
)

// klosetOpen opens the repository at storeConfig: it reads the stored
// configuration, derives the key from passphrase and checks it against the
// configuration's canary before anything else, then builds the repository
// (which rebuilds its local state from the store's states). wrap, if not
// nil, wraps the store the repository uses.
func klosetOpen(kctx *kcontext.KContext, storeConfig map[string]string, passphrase []byte, wrap func(storage.Store) storage.Store) (*repository.Repository, error) {
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
		return fail(fmt.Errorf("%w at %s: %s, expected %s", errKlosetIncompatible, loc, config.Version, storage.VERSION))
	}
	var key []byte
	if config.Encryption != nil {
		if len(passphrase) == 0 {
			return fail(fmt.Errorf("%w (%s)", errKlosetNeedsPassphrase, loc))
		}
		key, err = encryption.DeriveKey(config.Encryption.KDFParams, passphrase)
		if err != nil {
			return fail(fmt.Errorf("deriving the key of %s: %w", loc, err))
		}
		if !encryption.VerifyCanary(config.Encryption, key) {
			return fail(fmt.Errorf("%w for the repository at %s", errKlosetWrongPassphrase, loc))
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

// klosetConnectorOptions are the options plakar's importers get from the KContext.
func klosetConnectorOptions(kctx *kcontext.KContext) *connectors.Options {
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

// klosetBackup is `plakar backup ROOT...`: one snapshot of one source made of an
// fs importer per root, with packfiles staged in a temporary directory and
// the latest snapshot of the same source as the VFS cache (plakar's default
// -cache vfs), so that unchanged files are neither read nor re-chunked.
// Once committed, the repository's local state is rebuilt from the store,
// which is how a later plakar command would see the new snapshot.
func klosetBackup(kctx *kcontext.KContext, repo *repository.Repository, packfileDir string, roots ...string) (objects.MAC, error) {
	var imps []importer.Importer
	defer func() {
		for _, imp := range imps {
			imp.Close(kctx)
		}
	}()
	opts := klosetConnectorOptions(kctx)
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
		return objects.NilMac, fmt.Errorf("creating the snapshot: %w", klosetCause(kctx, err))
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
		return objects.NilMac, fmt.Errorf("backing up %s: %w", strings.Join(roots, ", "), klosetCause(kctx, err))
	}
	if err := snap.Commit(); err != nil {
		return objects.NilMac, fmt.Errorf("committing the snapshot: %w", klosetCause(kctx, err))
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

// klosetListSnapshots is `plakar ls`: the snapshots of the repository, sorted by
// identifier.
func klosetListSnapshots(repo *repository.Repository) ([]objects.MAC, error) {
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

// klosetEntry is what the test compares of a path, on disk and in a snapshot.
type klosetEntry struct {
	Type    fs.FileMode // fs.ModeDir, fs.ModeSymlink or 0 for a regular file
	Perm    fs.FileMode
	Size    int64  // regular files only
	Target  string // symlinks only
	ModTime int64  // regular files only, in ns
}

func klosetEntryOf(fi fs.FileInfo, target string) klosetEntry {
	e := klosetEntry{Type: fi.Mode().Type(), Perm: fi.Mode().Perm(), Target: target}
	if fi.Mode().IsRegular() {
		e.Size = fi.Size()
		e.ModTime = fi.ModTime().UnixNano()
	}
	return e
}

// same tells whether e and o describe the same entry. Times may differ by
// less than a microsecond: the fs exporter sets them with utimes.
func (e klosetEntry) same(o klosetEntry) bool {
	dt := e.ModTime - o.ModTime
	return e.Type == o.Type && e.Perm == o.Perm && e.Size == o.Size && e.Target == o.Target &&
		dt > -int64(time.Microsecond) && dt < int64(time.Microsecond)
}

func (e klosetEntry) String() string {
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

// klosetListFiles is `plakar ls -recursive SNAPSHOT:/`: every path of the
// snapshot.
func klosetListFiles(repo *repository.Repository, id objects.MAC) (map[string]klosetEntry, error) {
	snap, err := snapshot.Load(repo, id)
	if err != nil {
		return nil, fmt.Errorf("loading the snapshot %x: %w", id, err)
	}
	defer snap.Close()
	fsc, err := snap.Filesystem()
	if err != nil {
		return nil, err
	}
	files := make(map[string]klosetEntry)
	err = fsc.WalkDir("/", func(p string, e *vfs.Entry, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		files[p] = klosetEntryOf(e.Stat(), e.SymlinkTarget)
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

// klosetReadFile reads one file of a snapshot through its VFS.
func klosetReadFile(repo *repository.Repository, id objects.MAC, p string) ([]byte, error) {
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

// klosetRestore is `plakar restore -to DEST SNAPSHOT:/`: the whole snapshot,
// absolute paths and all, under dest.
func klosetRestore(kctx *kcontext.KContext, repo *repository.Repository, id objects.MAC, dest string) error {
	exp, err := exporter.NewExporter(kctx, klosetConnectorOptions(kctx), map[string]string{"location": "fs://" + dest})
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
		return fmt.Errorf("restoring the snapshot %x: %w", id, klosetCause(kctx, err))
	}
	return nil
}

// klosetPadding reads packfiles back whole through Kloset (which checks
// their MACs) and returns the bytes of the random padding Kloset puts at
// both ends of every packfile (RT_RANDOM blobs of up to the chunker's
// minimum size, 512 KiB by default, each): noise by design, which a
// deduplication measure must leave out.
func klosetPadding(repo *repository.Repository, macs []objects.MAC) (int64, error) {
	var padding int64
	for _, mac := range macs {
		p, err := repo.GetPackfile(mac)
		if err != nil {
			return 0, fmt.Errorf("reading back the packfile %x: %w", mac, err)
		}
		for _, blob := range p.Entries() {
			if blob.Type == kresources.RT_RANDOM {
				padding += int64(blob.Length)
			}
		}
	}
	return padding, nil
}

// --- a store that counts what goes through it ---

// klosetStoreOp names a store call: the method and the resource.
type klosetStoreOp struct {
	Method   string
	Resource storage.StorageResource
}

func (k klosetStoreOp) String() string {
	if k.Resource == storage.StorageResourceUndefined {
		return k.Method
	}
	return k.Method + " " + k.Resource.String()
}

// klosetStoreStats are the calls a store received and the bytes it was sent
// (Put) and sent back (Get).
type klosetStoreStats struct {
	Calls    map[klosetStoreOp]int
	Errors   map[klosetStoreOp]int
	PutBytes map[storage.StorageResource]int64
	GetBytes map[storage.StorageResource]int64
	Ranged   int // ranged Gets
}

func newKlosetStoreStats() klosetStoreStats {
	return klosetStoreStats{
		Calls:    map[klosetStoreOp]int{},
		Errors:   map[klosetStoreOp]int{},
		PutBytes: map[storage.StorageResource]int64{},
		GetBytes: map[storage.StorageResource]int64{},
	}
}

func (s klosetStoreStats) clone() klosetStoreStats {
	return klosetStoreStats{
		Calls:    maps.Clone(s.Calls),
		Errors:   maps.Clone(s.Errors),
		PutBytes: maps.Clone(s.PutBytes),
		GetBytes: maps.Clone(s.GetBytes),
		Ranged:   s.Ranged,
	}
}

// since returns the difference s - before.
func (s klosetStoreStats) since(before klosetStoreStats) klosetStoreStats {
	d := newKlosetStoreStats()
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

func (s klosetStoreStats) String() string {
	keys := slices.SortedFunc(maps.Keys(s.Calls), func(a, b klosetStoreOp) int {
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

// klosetCountingStore wraps a storage.Store and counts its calls and bytes. The
// bytes of a Put are those the store read from Kloset's reader.
type klosetCountingStore struct {
	storage.Store

	mu      sync.Mutex
	stats   klosetStoreStats
	putMACs []objects.MAC // of the packfiles put, in order
	changed chan struct{} // closed and replaced at every call
}

func newKlosetCountingStore(inner storage.Store) *klosetCountingStore {
	return &klosetCountingStore{Store: inner, stats: newKlosetStoreStats(), changed: make(chan struct{})}
}

// WaitCalls waits until the store has received n calls op, for at most
// timeout, and tells whether it has. Kloset makes some calls on its own
// time: a snapshot's lock is deleted by a goroutine once it is closed.
func (c *klosetCountingStore) WaitCalls(op klosetStoreOp, n int, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		got, changed := c.stats.Calls[op], c.changed
		c.mu.Unlock()
		if got >= n {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

func (c *klosetCountingStore) Stats() klosetStoreStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats.clone()
}

func (c *klosetCountingStore) count(method string, res storage.StorageResource, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := klosetStoreOp{method, res}
	c.stats.Calls[k]++
	if err != nil {
		c.stats.Errors[k]++
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *klosetCountingStore) addBytes(m map[storage.StorageResource]int64, res storage.StorageResource, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m[res] += n
}

func (c *klosetCountingStore) Create(ctx context.Context, config []byte) error {
	err := c.Store.Create(ctx, config)
	c.count("Create", storage.StorageResourceUndefined, err)
	return err
}

func (c *klosetCountingStore) Open(ctx context.Context) ([]byte, error) {
	b, err := c.Store.Open(ctx)
	c.count("Open", storage.StorageResourceUndefined, err)
	return b, err
}

func (c *klosetCountingStore) Ping(ctx context.Context) error {
	err := c.Store.Ping(ctx)
	c.count("Ping", storage.StorageResourceUndefined, err)
	return err
}

func (c *klosetCountingStore) Mode(ctx context.Context) (storage.Mode, error) {
	m, err := c.Store.Mode(ctx)
	c.count("Mode", storage.StorageResourceUndefined, err)
	return m, err
}

func (c *klosetCountingStore) Size(ctx context.Context) (int64, error) {
	n, err := c.Store.Size(ctx)
	c.count("Size", storage.StorageResourceUndefined, err)
	return n, err
}

func (c *klosetCountingStore) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	macs, err := c.Store.List(ctx, res)
	c.count("List", res, err)
	return macs, err
}

func (c *klosetCountingStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	cr := &klosetCountingReader{r: rd}
	n, err := c.Store.Put(ctx, res, mac, cr)
	c.count("Put", res, err)
	c.addBytes(c.stats.PutBytes, res, cr.n)
	if err == nil && n != cr.n {
		err = fmt.Errorf("klosetCountingStore: Put %s %x returned %d bytes but read %d", res, mac, n, cr.n)
	}
	if err == nil && res == storage.StorageResourcePackfile {
		c.mu.Lock()
		c.putMACs = append(c.putMACs, mac)
		c.mu.Unlock()
	}
	return n, err
}

// PackfilesPut returns the MACs of the packfiles put so far.
func (c *klosetCountingStore) PackfilesPut() []objects.MAC {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.putMACs)
}

func (c *klosetCountingStore) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
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
	return &klosetCountingReadCloser{ReadCloser: rd, add: func(n int64) { c.addBytes(c.stats.GetBytes, res, n) }}, nil
}

func (c *klosetCountingStore) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	err := c.Store.Delete(ctx, res, mac)
	c.count("Delete", res, err)
	return err
}

func (c *klosetCountingStore) Close(ctx context.Context) error {
	err := c.Store.Close(ctx)
	c.count("Close", storage.StorageResourceUndefined, err)
	return err
}

type klosetCountingReader struct {
	r io.Reader
	n int64
}

func (c *klosetCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type klosetCountingReadCloser struct {
	io.ReadCloser
	add func(int64)
}

func (c *klosetCountingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.add(int64(n))
	return n, err
}

// --- the source tree ---

// klosetSource is what the test backs up: the roots, and every path the
// snapshot must hold (the roots' trees and their ancestors, which the fs
// importer records too).
type klosetSource struct {
	roots     []string
	entries   map[string]klosetEntry
	randBytes int64 // bytes of generated (incompressible, unique) content
}

// klosetGenerateFiles writes n files of random sizes up to maxSize, spread over
// a few directories, plus one file of bigSize, all of random content from a
// fixed seed. It returns the bytes written.
func klosetGenerateFiles(dir string, seed uint64, n int, maxSize int, bigSize int) (int64, error) {
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

// klosetScanTree describes roots as the snapshot must hold them.
func klosetScanTree(roots ...string) (map[string]klosetEntry, error) {
	entries := make(map[string]klosetEntry)
	for _, root := range roots {
		for dir := filepath.Dir(root); ; dir = filepath.Dir(dir) {
			fi, err := os.Lstat(dir)
			if err != nil {
				return nil, err
			}
			entries[filepath.ToSlash(dir)] = klosetEntryOf(fi, "")
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
			entries[filepath.ToSlash(p)] = klosetEntryOf(fi, target)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// klosetCompareEntries reports the differences between the paths a snapshot
// holds and the source. Directories' times are not compared: those of the
// roots' ancestors move as the test works.
func klosetCompareEntries(want, got map[string]klosetEntry) []string {
	var diffs []string
	for _, p := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("missing %s (%s)", p, want[p]))
			continue
		}
		if w := want[p]; !w.same(g) {
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

// klosetDiffReport joins diffs, the first 40 of them.
func klosetDiffReport(diffs []string) string {
	const shown = 40
	if len(diffs) <= shown {
		return strings.Join(diffs, "\n")
	}
	return strings.Join(diffs[:shown], "\n") + fmt.Sprintf("\n... and %d more", len(diffs)-shown)
}

// klosetCompareRestored checks the restored tree under dest against the source:
// the same paths (and no other), every regular file byte for byte with its
// permissions and time, every symlink with its target.
func klosetCompareRestored(src *klosetSource, dest string) ([]string, error) {
	restored := make(map[string]klosetEntry)
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
		restored[path.Join("/", filepath.ToSlash(rel))] = klosetEntryOf(fi, target)
		return nil
	})
	if err != nil {
		return nil, err
	}
	diffs := klosetCompareEntries(src.entries, restored)
	for _, p := range slices.Sorted(maps.Keys(src.entries)) {
		if src.entries[p].Type != 0 {
			continue
		}
		if _, ok := restored[p]; !ok {
			continue // already reported
		}
		same, err := klosetSameContent(filepath.FromSlash(p), filepath.Join(dest, filepath.FromSlash(p)))
		if err != nil {
			return nil, err
		}
		if !same {
			diffs = append(diffs, fmt.Sprintf("%s: restored content differs", p))
		}
	}
	return diffs, nil
}

func klosetSameContent(a, b string) (bool, error) {
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
