package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

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
	pool   *pool
}

var _ storage.Store = (*Store)(nil)

// New is the storage.StoreFn registered as "oci": it runs the embedded
// guest.
func New(ctx context.Context, proto string, config map[string]string) (storage.Store, error) {
	p, err := defaultPlugin()
	if err != nil {
		return nil, err
	}
	return NewStore(ctx, p, config)
}

// NewStore makes a store served by plugin p.
func NewStore(ctx context.Context, p *Plugin, config map[string]string) (*Store, error) {
	c, err := ParseConfig(config)
	if err != nil {
		return nil, err
	}
	client, err := newClient(c)
	if err != nil {
		return nil, err
	}
	scheme := "https://"
	if !c.UseTLS {
		scheme = "http://"
	}
	env, err := session.NewEnv(session.Config{Registry: scheme + c.Location.Registry, Client: client, Logger: p.logger})
	if err != nil {
		return nil, err
	}
	s := &Store{config: c, env: env}
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
		return inst.call(ctx, sess, abi.ExportCreate, inst.unitResult, uint64(ptr), uint64(len(config)))
	})
}

func (s *Store) Open(ctx context.Context) ([]byte, error) {
	var config []byte
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportOpen, func(area []byte) error {
			if err := inst.liftError(area, 4); err != nil {
				return err
			}
			var ok bool
			if config, ok = inst.liftBytes(area[4:]); !ok {
				return errors.New("oci plugin: open returned bytes outside its memory")
			}
			return nil
		})
	})
	return config, err
}

func (s *Store) Ping(ctx context.Context) error {
	return s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportPing, inst.unitResult)
	})
}

func (s *Store) Mode(ctx context.Context) (storage.Mode, error) {
	var mode storage.Mode
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportMode, func(area []byte) error {
			if err := inst.liftError(area, 4); err != nil {
				return err
			}
			access := abi.Access(area[4])
			if access&abi.AccessRead != 0 {
				mode |= storage.ModeRead
			}
			if access&abi.AccessWrite != 0 {
				mode |= storage.ModeWrite
			}
			return nil
		})
	})
	return mode, err
}

func (s *Store) Size(ctx context.Context) (int64, error) {
	var size int64
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportSize, func(area []byte) error {
			size = int64(le.Uint64(area[8:]))
			return inst.liftError(area, 8)
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
		return inst.call(ctx, sess, abi.ExportList, func(area []byte) error {
			if err := inst.liftError(area, 4); err != nil {
				return err
			}
			n := le.Uint32(area[8:])
			list, ok := inst.mod.Memory().Read(le.Uint32(area[4:]), 8*n)
			if !ok {
				return errors.New("oci plugin: list returned a list outside its memory")
			}
			macs = make([]objects.MAC, n)
			for i := range macs {
				mac, ok := inst.mod.Memory().Read(le.Uint32(list[8*i:]), le.Uint32(list[8*i+4:]))
				if !ok || len(mac) != len(macs[i]) {
					return errors.New("oci plugin: list returned a malformed MAC")
				}
				copy(macs[i][:], mac)
			}
			return nil
		}, uint64(kind))
	})
	return macs, err
}

func (s *Store) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	kind, err := kindOf(res)
	if err != nil {
		return -1, err
	}
	var n uint64
	err = s.do(ctx, res, func(inst *instance, sess *session.Session) error {
		ptr, err := inst.lower(ctx, mac[:])
		if err != nil {
			return err
		}
		body := sess.AddReader(rd)
		return inst.call(ctx, sess, abi.ExportPut, func(area []byte) error {
			n = le.Uint64(area[8:])
			return inst.liftError(area, 8)
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
		return inst.call(ctx, sess, abi.ExportGet, func(area []byte) error {
			if err := inst.liftError(area, 4); err != nil {
				return err
			}
			rd, err = sess.Take(abi.Stream(le.Uint32(area[4:])))
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
		return inst.call(ctx, sess, abi.ExportDelete, inst.unitResult, uint64(kind), uint64(ptr), uint64(len(mac)))
	})
}

// Close closes the idle instances; calls in flight finish on theirs, which
// are closed as they come back.
func (s *Store) Close(ctx context.Context) error {
	err := s.do(ctx, storage.StorageResourceUndefined, func(inst *instance, sess *session.Session) error {
		return inst.call(ctx, sess, abi.ExportClose, inst.unitResult)
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
