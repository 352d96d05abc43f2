// Package vault drives Kloset v1.1.4 the way the plakar CLI does, for one
// store: create it, open it with its passphrase, back a directory up, list
// snapshots and files, read a file, restore, check, remove a snapshot,
// give back the space of what was removed (maintenance), and describe the
// store. The oci store (package host, imported here) and the
// fs importer and exporter are registered, so an oci:// store configuration
// works as is; any other Kloset store a program registers works too.
//
// A Vault is one open store. Every operation runs under the context given
// to Open: cancelling it interrupts the operation in progress, and Kloset
// cleans up after itself (a backup's lock is removed even then; a packfile
// cut short is never tagged by the oci store, so a later backup or check
// does not see it).
//
// Kloset reports what goes wrong with a single path (a file that cannot be
// read, a chunk that fails its MAC) as events, and the operation itself
// "succeeds"; the vault listens to them and returns them in each result,
// so that callers cannot miss them.
package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/PlakarKorp/kloset/caching"
	"github.com/PlakarKorp/kloset/caching/pebble"
	"github.com/PlakarKorp/kloset/compression"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/encryption"
	"github.com/PlakarKorp/kloset/hashing"
	"github.com/PlakarKorp/kloset/kcontext"
	"github.com/PlakarKorp/kloset/logging"
	"github.com/PlakarKorp/kloset/repository"
	kresources "github.com/PlakarKorp/kloset/resources"
	"github.com/PlakarKorp/kloset/versioning"

	// The fs importer and exporter: Backup reads directories, Restore
	// writes them.
	_ "github.com/PlakarKorp/integrations/fs/exporter"
	_ "github.com/PlakarKorp/integrations/fs/importer"

	// The oci store.
	_ "github.com/plakar-oci/ocistore/host"
)

// Errors callers can test with errors.Is.
var (
	// ErrWrongPassphrase: the passphrase does not open the store.
	ErrWrongPassphrase = errors.New("wrong passphrase")
	// ErrNeedPassphrase: the store is encrypted and no passphrase was given.
	ErrNeedPassphrase = errors.New("the store is encrypted: a passphrase is required")
	// ErrIncompatible: the store was made by another version of Kloset.
	ErrIncompatible = errors.New("incompatible store version")
	// ErrNoStore: there is no store at the location.
	ErrNoStore = errors.New("no store at this location")
	// ErrStoreExists: Create found a store at the location.
	ErrStoreExists = errors.New("a store already exists at this location")
	// ErrSnapshotNotFound: no snapshot matches the given identifier.
	ErrSnapshotNotFound = errors.New("no such snapshot")
	// ErrAmbiguousSnapshot: several snapshots match the given prefix.
	ErrAmbiguousSnapshot = errors.New("ambiguous snapshot identifier")
	// ErrPathNotFound: the snapshot has no such path.
	ErrPathNotFound = errors.New("no such path in the snapshot")
	// ErrTargetNotEmpty: Restore's destination exists and is not empty.
	ErrTargetNotEmpty = errors.New("the restore target exists and is not empty")
	// ErrCacheInUse: another process uses the local cache of this store.
	ErrCacheInUse = errors.New("the local cache is in use by another process")
)

// Options tune how a store is opened.
type Options struct {
	// CacheDir holds Kloset's local cache (the state of the store, so that
	// it is not downloaded again by every command). Empty means a temporary
	// directory removed by Close.
	CacheDir string
	// Concurrency is Kloset's parallelism (importer, chunker, exporter and
	// checker workers); 0 means max(2×CPUs, 8). Restores and checks of
	// many small files wait on the registry (a ranged GET or two per
	// file) more than on the CPU: they gain from more than the CPUs.
	Concurrency int
	// Client names the program in the snapshots it makes.
	Client string
	// CommandLine is what the snapshots record as the command that made
	// them; empty records the program's name alone. It is stored in
	// every snapshot header, in clear in a store without encryption and
	// in the local cache: it must hold no secret, so a program records
	// its command's name, never its whole argument list (where a
	// password may be).
	CommandLine string
	// Log receives Kloset's warnings and errors; nil discards them (they are
	// reported in results too).
	Log io.Writer
	// Events, if not nil, is called for every Kloset event, in order, from
	// one goroutine. It must return quickly.
	Events func(Event)
	// WrapStore, if not nil, wraps the store Kloset uses (under the
	// vault's CountingStore), to observe its calls or to fail or hold
	// some of them: tests do.
	WrapStore func(storage.Store) storage.Store
}

// Event is a Kloset event, reduced to what a program may show.
type Event struct {
	Workflow string // backup, export, check
	Type     string // file.ok, path.error, ...
	Level    string // info, warn, error
	Path     string // if the event is about a path
	Error    string // if it is an error
	Data     map[string]any
}

// CreateOptions choose how a new store stores its data.
type CreateOptions struct {
	// Plaintext turns encryption off. The default encrypts everything
	// with a key derived from the passphrase.
	Plaintext bool
	// NoCompression turns compression off.
	NoCompression bool
}

// Create creates a store at storeConfig with Kloset's default
// configuration (compression on), encrypted with a key derived from
// passphrase (checked by a canary on every open) unless opts.Plaintext.
// It returns the configuration it stored.
func Create(ctx context.Context, storeConfig map[string]string, passphrase []byte, opts *CreateOptions) (*storage.Configuration, error) {
	if opts == nil {
		opts = &CreateOptions{}
	}
	loc := storeConfig["location"]
	config := storage.NewConfiguration()
	hashingConfig, err := hashing.LookupDefaultConfiguration(strings.ToUpper(hashing.DEFAULT_HASHING_ALGORITHM))
	if err != nil {
		return nil, err
	}
	config.Hashing = *hashingConfig
	if opts.NoCompression {
		config.Compression = nil
	} else {
		config.Compression = compression.NewDefaultConfiguration()
	}
	if opts.Plaintext && len(passphrase) > 0 {
		return nil, errors.New("a plaintext store takes no passphrase")
	}
	if !opts.Plaintext && len(passphrase) == 0 {
		return nil, errors.New("a passphrase is required to encrypt the store")
	}

	// The registry, and no store there yet, before the key is derived
	// (which takes a second): store.Create makes sure of the latter.
	kctx := newKContext(ctx, &Options{})
	defer kctx.Close()
	store, err := newStore(kctx, storeConfig)
	if err != nil {
		return nil, err
	}
	defer store.Close(context.WithoutCancel(kctx))
	if err := store.Ping(kctx); err != nil {
		return nil, withLocation(loc, cause(kctx, err))
	}
	if _, err := store.Open(kctx); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrStoreExists, loc)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("looking for a store at %s: %w", loc, cause(kctx, err))
	}

	var hasher = hashing.GetHasher(storage.DEFAULT_HASHING_ALGORITHM)
	if opts.Plaintext {
		config.Encryption = nil
	} else {
		key, err := deriveKey(config.Encryption.KDFParams, passphrase)
		if err != nil {
			return nil, err
		}
		canary, err := encryption.DeriveCanary(config.Encryption, key)
		if err != nil {
			return nil, err
		}
		config.Encryption.Canary = canary
		hasher = hashing.GetMACHasher(storage.DEFAULT_HASHING_ALGORITHM, key)
	}

	serialized, err := config.ToBytes()
	if err != nil {
		return nil, err
	}
	rd, err := storage.Serialize(hasher, kresources.RT_CONFIG, versioning.GetCurrentVersion(kresources.RT_CONFIG), bytes.NewReader(serialized))
	if err != nil {
		return nil, err
	}
	wrapped, err := io.ReadAll(rd)
	if err != nil {
		return nil, err
	}

	if err := store.Create(kctx, wrapped); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// The store says what it found there, and when: a store
			// made meanwhile by another create, one of another plugin.
			return nil, storeExists{err}
		}
		return nil, fmt.Errorf("creating a store at %s: %w", loc, cause(kctx, err))
	}
	return config, nil
}

// deriveKey derives the key of a passphrase, and then collects the memory
// the derivation took: Argon2id's 256 MiB are garbage once it returns, yet
// they set the heap's next goal at twice that, which the command's own
// garbage then fills before the next collection. A restore or cat of a
// file that compresses well peaked at 630 MB of RSS that way, against
// 350 MB for the derivation alone.
func deriveKey(params encryption.KDFParams, passphrase []byte) ([]byte, error) {
	key, err := encryption.DeriveKey(params, passphrase)
	runtime.GC()
	return key, err
}

// storeExists is ErrStoreExists in the store's own words.
type storeExists struct{ error }

func (e storeExists) Is(target error) bool { return target == ErrStoreExists }
func (e storeExists) Unwrap() error        { return e.error }

// newStore makes the store of storeConfig, without Kloset's storage.Open,
// which prints its errors on stderr besides returning them.
func newStore(kctx *kcontext.KContext, storeConfig map[string]string) (storage.Store, error) {
	store, err := storage.New(kctx, maps.Clone(storeConfig))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", storeConfig["location"], err)
	}
	return store, nil
}

// Vault is an open store.
type Vault struct {
	kctx  *kcontext.KContext
	repo  *repository.Repository
	store *CountingStore
	// deleter is the store as opened, before any wrapping: it tells how
	// its registry deletes (MaintenanceResult.Deletion).
	deleter  storage.Store
	cache    *caching.Manager
	location string
	tmpCache string // removed by Close

	events    *eventHub
	stopDrain chan struct{}
	drained   chan struct{}
	closeErr  error
	once      sync.Once
}

// Open opens the store at storeConfig: it reads the stored configuration,
// derives the key from passphrase and checks it against the
// configuration's canary before anything else, then builds Kloset's
// repository, which brings the local cache up to date with the store.
// An unencrypted store ignores the passphrase.
func Open(ctx context.Context, storeConfig map[string]string, passphrase []byte, opts *Options) (*Vault, error) {
	if opts == nil {
		opts = &Options{}
	}
	loc := storeConfig["location"]
	v := &Vault{location: loc, events: &eventHub{listener: opts.Events}, stopDrain: make(chan struct{}), drained: make(chan struct{})}

	cacheDir := opts.CacheDir
	if cacheDir == "" {
		dir, err := os.MkdirTemp("", "vault-cache-")
		if err != nil {
			return nil, err
		}
		cacheDir, v.tmpCache = dir, dir
	} else if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("the cache directory: %w", err)
	}
	o := *opts
	o.CacheDir = cacheDir
	v.kctx = newKContext(ctx, &o)
	v.cache = caching.NewManager(pebble.Constructor(cacheDir))
	v.kctx.SetCache(v.cache)

	// An event bus nobody listens to drops its events: listen before
	// anything can emit.
	bus := v.kctx.Events().Listen()
	go func() {
		defer close(v.drained)
		for {
			select {
			case ev := <-bus:
				v.events.last.Store(time.Now().UnixNano())
				v.events.dispatch(ev)
			case <-v.stopDrain:
				return
			}
		}
	}()

	fail := func(err error) (*Vault, error) {
		v.Close()
		return nil, err
	}
	inner, err := newStore(v.kctx, storeConfig)
	if err != nil {
		return fail(err)
	}
	v.deleter = inner
	if opts.WrapStore != nil {
		inner = opts.WrapStore(inner)
	}
	v.store = NewCountingStore(inner)
	// A registry that is not there, or not a registry, is told apart
	// here, before Open reads a configuration it would report missing.
	if err := v.store.Ping(v.kctx); err != nil {
		return fail(withLocation(loc, cause(v.kctx, err)))
	}
	wrapped, err := v.store.Open(v.kctx)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("%w: %s: create it first", ErrNoStore, loc))
		}
		err = cause(v.kctx, err)
		if strings.Contains(err.Error(), loc) {
			return fail(err) // the store's message says what it opened
		}
		return fail(fmt.Errorf("opening the store at %s: %w", loc, err))
	}
	config, err := storage.NewConfigurationFromWrappedBytes(wrapped)
	if err != nil {
		return fail(fmt.Errorf("reading the configuration of %s: %w", loc, err))
	}
	if config.Version != versioning.FromString(storage.VERSION) {
		return fail(fmt.Errorf("%w at %s: %s, this program reads %s", ErrIncompatible, loc, config.Version, storage.VERSION))
	}
	var key []byte
	if config.Encryption != nil {
		if len(passphrase) == 0 {
			return fail(fmt.Errorf("%w (%s)", ErrNeedPassphrase, loc))
		}
		key, err = deriveKey(config.Encryption.KDFParams, passphrase)
		if err != nil {
			return fail(fmt.Errorf("deriving the key of %s: %w", loc, err))
		}
		if !encryption.VerifyCanary(config.Encryption, key) {
			return fail(fmt.Errorf("%w for the store at %s", ErrWrongPassphrase, loc))
		}
	}
	v.repo, err = repository.New(v.kctx, key, v.store, wrapped)
	if err != nil {
		if errors.Is(err, pebble.ErrInUse) {
			return fail(fmt.Errorf("%w (%s): wait for the other command to finish", ErrCacheInUse, cacheDir))
		}
		return fail(fmt.Errorf("opening the repository at %s: %w", loc, cause(v.kctx, err)))
	}
	return v, nil
}

func newKContext(ctx context.Context, opts *Options) *kcontext.KContext {
	kctx := kcontext.NewKContext()
	kctx.Context, kctx.Cancel = context.WithCancelCause(ctx)
	kctx.CacheDir = opts.CacheDir
	kctx.MaxConcurrency = opts.Concurrency
	if kctx.MaxConcurrency <= 0 {
		// 0 would start no importer or packer workers at all.
		kctx.MaxConcurrency = max(2*runtime.NumCPU(), 8)
	}
	kctx.Client = opts.Client
	if kctx.Client == "" {
		kctx.Client = "ocistore-vault"
	}
	kctx.Hostname, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		kctx.Username = u.Username
	}
	kctx.OperatingSystem = runtime.GOOS
	kctx.Architecture = runtime.GOARCH
	kctx.ProcessID = os.Getpid()
	kctx.CWD, _ = os.Getwd()
	kctx.CommandLine = opts.CommandLine
	if kctx.CommandLine == "" {
		kctx.CommandLine = filepath.Base(os.Args[0])
	}
	kctx.Stdin = strings.NewReader("")
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	kctx.Stdout, kctx.Stderr = log, log
	kctx.SetLogger(logging.NewLogger(log, log))
	return kctx
}

// withLocation prefixes err with the location, unless it names it.
func withLocation(loc string, err error) error {
	if strings.Contains(err.Error(), loc) {
		return err
	}
	return fmt.Errorf("%s: %w", loc, err)
}

// cause returns what cancelled kctx when err is the cancellation: Kloset
// cancels its context when a worker fails (a packfile that could not be
// put), and the operation then ends on "context canceled", a consequence.
// The message is the cause's; both stay in the chain.
func cause(kctx *kcontext.KContext, err error) error {
	if err != nil && errors.Is(err, context.Canceled) {
		if c := context.Cause(kctx); c != nil && c != err && !errors.Is(err, c) {
			return stoppedError{cause: c, err: err}
		}
	}
	return err
}

type stoppedError struct{ cause, err error }

func (e stoppedError) Error() string   { return e.cause.Error() }
func (e stoppedError) Unwrap() []error { return []error{e.cause, e.err} }

// Location is the store's location, as given to Open.
func (v *Vault) Location() string { return v.location }

// Configuration is the store's configuration.
func (v *Vault) Configuration() storage.Configuration { return v.repo.Configuration() }

// Repository is Kloset's repository, for what this package does not do.
func (v *Vault) Repository() *repository.Repository { return v.repo }

// Stats are the calls the store received and the bytes it was sent and
// sent back since Open.
func (v *Vault) Stats() StoreStats { return v.store.Stats() }

// Store is the counting store between Kloset and the store.
func (v *Vault) Store() *CountingStore { return v.store }

// Close waits for the event bus to be quiet for quietSpan, at most
// quietWait.
const (
	quietSpan = 100 * time.Millisecond
	quietWait = 2 * time.Second
)

// lockWait bounds how long Close waits for Kloset to remove the locks it
// took.
const lockWait = 15 * time.Second

// Close waits for Kloset to release the locks it took (it does so in the
// background once a backup is over, interrupted or not), then closes the
// store and the local cache. It is safe to call more than once.
func (v *Vault) Close() error {
	v.once.Do(func() {
		var errs []error
		if v.store != nil {
			if left := v.store.WaitLocksReleased(lockWait); len(left) > 0 {
				errs = append(errs, fmt.Errorf("%d lock(s) still in the store after %v: a later backup ignores them once stale", len(left), lockWait))
			}
			if err := v.store.Close(context.WithoutCancel(v.kctx)); err != nil {
				errs = append(errs, fmt.Errorf("closing the store: %w", err))
			}
		}
		if v.repo != nil {
			v.repo.Close()
		}
		if v.cache != nil {
			if err := v.cache.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing the cache: %w", err))
			}
		}
		// The event bus is not closed (KContext.Close would): Kloset may
		// return from an interrupted operation before all its workers are
		// done, and one that emits on a closed bus panics. The vault stops
		// listening once the bus has been quiet for a while; an event sent
		// later blocks its goroutine, which the cancellation has ended
		// anyway.
		v.events.waitQuiet(quietSpan, quietWait)
		close(v.stopDrain)
		<-v.drained
		v.kctx.Cancel(nil)
		if v.tmpCache != "" {
			os.RemoveAll(v.tmpCache)
		}
		v.closeErr = errors.Join(errs...)
	})
	return v.closeErr
}

// Interrupted tells whether the vault's context was cancelled.
func (v *Vault) Interrupted() bool { return v.kctx.Err() != nil }
