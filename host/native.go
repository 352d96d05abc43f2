package host

import (
	"context"
	"fmt"
	"io"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/location"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/ocistore"
	"github.com/plakar-oci/ocistore/host/session"
)

// NativeStore is the store logic of the guest (package guest/ocistore)
// compiled into the host and called directly, over the same host services
// as the sandbox (package session: HTTP, streams, cache, log). It behaves
// as Store does, call for call and request for request, without wasm: it
// is the baseline the sandbox is measured against, and the store for
// programs that trust the store's code and want no wasm runtime.
//
// Like Store, it runs each call on one of at most Concurrency store
// instances, each with its own ocistore.Store, and gives each call a fresh
// session whose streams are closed when the call returns.
type NativeStore struct {
	config *Config
	env    *session.Env
	opts   storeOptions

	pool *pool[*nativeInstance]
}

var _ storage.Store = (*NativeStore)(nil)

// nativeInstance is an ocistore.Store and the host it calls, which is the
// session of the call in progress.
type nativeInstance struct {
	store  *ocistore.Store
	host   *callHost
	broken bool
}

// callHost is the abi.Host of a native instance: the session of the call
// in progress, set for the call's duration.
type callHost struct{ *session.Session }

// NewNativeStore makes a native store; like NewStore, it performs no
// request.
func NewNativeStore(ctx context.Context, config map[string]string, opts ...StoreOption) (*NativeStore, error) {
	o := newStoreOptions(nil, opts)
	c, env, err := newStoreEnv(config, o)
	if err != nil {
		return nil, err
	}
	s := &NativeStore{config: c, env: env, opts: o}
	s.pool = newPool(c.Concurrency, func(context.Context) (*nativeInstance, error) { return s.newInstance() })
	return s, nil
}

func (inst *nativeInstance) isBroken() bool        { return inst.broken }
func (inst *nativeInstance) close(context.Context) {}

func (s *NativeStore) newInstance() (*nativeInstance, error) {
	options := make(map[string]string, len(s.config.guestOptions))
	for _, kv := range s.config.guestOptions {
		options[kv[0]] = kv[1]
	}
	h := &callHost{}
	st, err := ocistore.New(h, options)
	if err != nil {
		return nil, storeError(storage.StorageResourceUndefined, err)
	}
	return &nativeInstance{store: st, host: h}, nil
}

// do runs one call on a pooled instance with a fresh session, as Store.do
// runs an export. A panic of the store logic fails the call and drops the
// instance, as a trap does in the sandbox.
func (s *NativeStore) do(ctx context.Context, res storage.StorageResource, f func(*ocistore.Store, *session.Session) error) (err error) {
	inst, err := s.pool.get(ctx)
	if err != nil {
		return err
	}
	sess := s.env.NewSession(ctx)
	inst.host.Session = sess
	defer func() {
		if r := recover(); r != nil {
			inst.broken = true
			err = fmt.Errorf("oci store: the store logic panicked (the instance is replaced): %v", r)
		}
		inst.host.Session = nil
		sess.CloseAll()
		s.pool.put(inst)
		if ctxErr := ctx.Err(); err != nil && ctxErr != nil {
			err = ctxErr
		}
		err = storeError(res, err)
	}()
	return f(inst.store, sess)
}

func (s *NativeStore) Origin() string        { return s.config.Location.Registry }
func (s *NativeStore) Type() string          { return "oci" }
func (s *NativeStore) Root() string          { return s.config.Location.Repository }
func (s *NativeStore) Flags() location.Flags { return 0 }

func (s *NativeStore) Create(ctx context.Context, config []byte) error {
	return s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) error {
		return st.Create(config)
	})
}

func (s *NativeStore) Open(ctx context.Context) ([]byte, error) {
	var config []byte
	err := s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) (err error) {
		config, err = st.Open()
		return err
	})
	return config, err
}

func (s *NativeStore) Ping(ctx context.Context) error {
	return s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) error {
		return st.Ping()
	})
}

func (s *NativeStore) Mode(ctx context.Context) (storage.Mode, error) {
	var mode storage.Mode
	err := s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) error {
		access, err := st.Mode()
		if access&abi.AccessRead != 0 {
			mode |= storage.ModeRead
		}
		if access&abi.AccessWrite != 0 {
			mode |= storage.ModeWrite
		}
		return err
	})
	return mode, err
}

func (s *NativeStore) Size(ctx context.Context) (int64, error) {
	var size int64
	err := s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) (err error) {
		size, err = st.Size()
		return err
	})
	return size, err
}

func (s *NativeStore) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	var macs []objects.MAC
	err = s.do(ctx, res, func(st *ocistore.Store, _ *session.Session) error {
		list, err := st.List(kind)
		if err != nil {
			return err
		}
		macs = make([]objects.MAC, len(list))
		for i, mac := range list {
			macs[i] = objects.MAC(mac)
		}
		return nil
	})
	return macs, err
}

func (s *NativeStore) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
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
	err = s.do(ctx, res, func(st *ocistore.Store, sess *session.Session) (err error) {
		n, err = st.Put(kind, abi.MAC(mac), sess.AddBody(body))
		return err
	})
	if err != nil {
		return -1, err
	}
	return int64(n), nil
}

func (s *NativeStore) Get(ctx context.Context, res storage.StorageResource, mac objects.MAC, rng *storage.Range) (io.ReadCloser, error) {
	kind, err := kindOf(res)
	if err != nil {
		return nil, err
	}
	var r *abi.Range
	if rng != nil {
		r = &abi.Range{Offset: rng.Offset, Length: rng.Length}
	}
	var rd io.ReadCloser
	err = s.do(ctx, res, func(st *ocistore.Store, sess *session.Session) error {
		h, err := st.Get(kind, abi.MAC(mac), r)
		if err != nil {
			return err
		}
		rd, err = sess.Take(h)
		return err
	})
	return rd, err
}

func (s *NativeStore) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	kind, err := kindOf(res)
	if err != nil {
		return err
	}
	return s.do(ctx, res, func(st *ocistore.Store, _ *session.Session) error {
		return st.Delete(kind, abi.MAC(mac))
	})
}

// Close drops the idle instances; calls in flight finish on theirs.
func (s *NativeStore) Close(ctx context.Context) error {
	err := s.do(ctx, storage.StorageResourceUndefined, func(st *ocistore.Store, _ *session.Session) error {
		return st.Close()
	})
	s.pool.close(ctx)
	return err
}
