package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/session"
)

func init() {
	if err := storage.Register("oci", 0, New); err != nil {
		panic(err)
	}
}

// defaultPlugin is the embedded guest, compiled once per process.
var defaultPlugin = sync.OnceValues(func() (*Plugin, error) {
	return Load(context.Background(), embeddedGuest, Options{})
})

// Store is Kloset's storage.Store for oci:// locations, served by the
// sandboxed guest.
type Store struct {
	config *Config
	env    *session.Env
	pool   *pool[*instance]
	opts   storeOptions
	// mode is the answer of the guest's mode, once it gave one: Kloset asks
	// for every file it opens, and the answer does not change.
	mode atomic.Uint32
}

var _ storage.Store = (*Store)(nil)

// New is the storage.StoreFn registered as "oci". It makes a store served
// by the module the optional key PluginKey names (the embedded guest by
// default), compiled once per process and source. A module pulled from a
// registry is reached with the store's TLS settings (ca_file,
// tls_insecure_no_verify; plain HTTP for a loopback registry), and with its
// credentials when it is on the store's registry; its reference must be
// pinned by digest.
func New(ctx context.Context, proto string, config map[string]string) (storage.Store, error) {
	rest := maps.Clone(config)
	delete(rest, PluginKey)
	// A configuration error is reported before anything is compiled.
	c, err := ParseConfig(rest)
	if err != nil {
		return nil, err
	}
	p, err := configuredPlugin(ctx, config[PluginKey], c)
	if err != nil {
		return nil, err
	}
	s, err := NewStore(ctx, p, rest)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// NewStore makes a store served by plugin p.
func NewStore(ctx context.Context, p *Plugin, config map[string]string, opts ...StoreOption) (*Store, error) {
	o := newStoreOptions(p.logger, opts)
	c, env, err := newStoreEnv(config, o)
	if err != nil {
		return nil, err
	}
	s := &Store{config: c, env: env, opts: o}
	s.pool = newPool(c.Concurrency, func(ctx context.Context) (*instance, error) {
		sess := env.NewSession(ctx)
		defer sess.CloseAll()
		inst, err := p.newInstance(ctx, sess, c.guestOptions)
		return inst, storeError(storage.StorageResourceUndefined, err)
	})
	return s, nil
}

// do runs one export call on a pooled instance; the session's streams are
// closed when it returns, but for those the call took with Take.
func (s *Store) do(ctx context.Context, res storage.StorageResource, f func(*instance, *session.Session) error) error {
	inst, err := s.pool.get(ctx)
	if err != nil {
		return err
	}
	sess := s.env.NewSession(ctx)
	err = f(inst, sess)
	sess.CloseAll()
	s.pool.put(inst)
	return storeError(res, err)
}

func (s *Store) Origin() string        { return s.config.Location.Registry }
func (s *Store) Type() string          { return "oci" }
func (s *Store) Root() string          { return s.config.Location.Repository }
func (s *Store) Flags() location.Flags { return 0 }

func (s *Store) Create(ctx context.Context, config []byte) error {
	return s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		ptr, err := inst.lower(ctx, config)
		if err != nil {
			return err
		}
		return inst.call(ctx, sess, abi.ExportCreate, unitResult, uint64(ptr), uint64(len(config)))
	})
}

func (s *Store) Open(ctx context.Context) ([]byte, error) {
	var config []byte
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportOpen, func(area, mem []byte) (err error) {
			config, err = bytesResult(area, mem)
			return err
		})
	})
	return config, err
}

func (s *Store) Ping(ctx context.Context) error {
	return s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportPing, unitResult)
	})
}

func (s *Store) Mode(ctx context.Context) (storage.Mode, error) {
	if m := s.mode.Load(); m != 0 {
		return storage.Mode(m), nil
	}
	var mode storage.Mode
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportMode, func(area, mem []byte) error {
			access, err := accessResult(area, mem)
			if err != nil {
				return err
			}
			if access&abi.AccessRead != 0 {
				mode |= storage.ModeRead
			}
			if access&abi.AccessWrite != 0 {
				mode |= storage.ModeWrite
			}
			return nil
		})
	})
	if err == nil {
		s.mode.Store(uint32(mode))
	}
	return mode, err
}

func (s *Store) Size(ctx context.Context) (int64, error) {
	var size int64
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportSize, func(area, mem []byte) error {
			n, err := u64Result(area, mem)
			size = int64(n)
			return err
		})
	})
	return size, err
}

func (s *Store) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	var macs []objects.MAC
	err = s.do(ctx, res, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportList, func(area, mem []byte) (err error) {
			macs, err = macsResult(area, mem)
			return err
		}, uint64(kind))
	})
	return macs, err
}

func (s *Store) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	kind, err := kindOf(res)
	if err != nil {
		return -1, err
	}
	body, err := readAhead(ctx, res, rd, s.opts)
	if err != nil {
		return -1, err
	}
	defer body.Release()
	var n uint64
	err = s.do(ctx, res, func(inst *instance, sess *session.Session) error {
		ptr, err := inst.lower(ctx, mac[:])
		if err != nil {
			return err
		}
		body := sess.AddBody(body)
		return inst.call(ctx, sess, abi.ExportPut, func(area, mem []byte) (err error) {
			n, err = u64Result(area, mem)
			return err
		}, uint64(kind), uint64(ptr), uint64(len(mac)), uint64(body))
	})
	if err != nil {
		return -1, err
	}
	return int64(n), nil
}

func (s *Store) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	var hasRange, offset, length uint64
	if rng != nil {
		hasRange, offset, length = 1, rng.Offset, uint64(rng.Length)
	}
	var rd io.ReadCloser
	err = s.do(ctx, res, func(inst *instance, sess *session.Session) error {
		ptr, err := inst.lower(ctx, mac[:])
		if err != nil {
			return err
		}
		return inst.call(ctx, sess, abi.ExportGet, func(area, mem []byte) error {
			st, err := streamResult(area, mem)
			if err != nil {
				return err
			}
			rd, err = sess.Take(st)
			return err
		}, uint64(kind), uint64(ptr), uint64(len(mac)), hasRange, offset, length)
	})
	return rd, err
}

func (s *Store) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	kind, err := kindOf(res)
	if err != nil {
		return err
	}
	return s.do(ctx, res, func(inst *instance, sess *session.Session) error {
		ptr, err := inst.lower(ctx, mac[:])
		if err != nil {
			return err
		}
		return inst.call(ctx, sess, abi.ExportDelete, unitResult, uint64(kind), uint64(ptr), uint64(len(mac)))
	})
}

// Close closes the idle instances; calls in flight finish on theirs, which
// are closed as they come back.
func (s *Store) Close(ctx context.Context) error {
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportClose, unitResult)
	})
	s.pool.close(ctx)
	return err
}

func kindOf(res storage.StorageResource) (abi.Kind, error) {
	switch res {
	case storage.StorageResourcePackfile:
		return abi.KindPackfile, nil
	case storage.StorageResourceState:
		return abi.KindState, nil
	case storage.StorageResourceLock:
		return abi.KindLock, nil
	case storage.StorageResourceECCPackfile:
		return abi.KindECCPackfile, nil
	case storage.StorageResourceECCState:
		return abi.KindECCState, nil
	}
	return 0, fmt.Errorf("oci store: resource %s: %w", res, errors.ErrUnsupported)
}
