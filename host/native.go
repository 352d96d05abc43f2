package host

import (
	"context"
	"fmt"

	"github.com/PlakarKorp/kloset/connectors/storage"
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
type NativeStore struct{ *front[*nativeInstance] }

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
	f, err := newFront(config, newStoreOptions(nil, opts), func(_ context.Context, f *front[*nativeInstance]) (*nativeInstance, error) {
		return newNativeInstance(f.config)
	})
	if err != nil {
		return nil, err
	}
	return &NativeStore{f}, nil
}

func newNativeInstance(c *Config) (*nativeInstance, error) {
	options := make(map[string]string, len(c.guestOptions))
	for _, kv := range c.guestOptions {
		options[kv[0]] = kv[1]
	}
	h := &callHost{}
	st, err := ocistore.New(h, options)
	if err != nil {
		return nil, err
	}
	return &nativeInstance{store: st, host: h}, nil
}

func (inst *nativeInstance) isBroken() bool        { return inst.broken }
func (inst *nativeInstance) close(context.Context) {}

// run calls the store logic with sess as its host. A panic fails the call
// and breaks the instance, as a trap does in the sandbox.
func (inst *nativeInstance) run(sess *session.Session, f func(*ocistore.Store) error) (err error) {
	inst.host.Session = sess
	defer func() {
		if r := recover(); r != nil {
			inst.broken = true
			err = fmt.Errorf("oci store: the store logic panicked (the instance is replaced): %v", r)
		}
		inst.host.Session = nil
	}()
	// A new call: the last one's memory is the store's again, as the
	// guest's exports do (ocistore.Store.Reset; the session copies what it
	// keeps of a call).
	inst.store.Reset()
	return f(inst.store)
}

// The backend of a native store: each call made directly.

func (inst *nativeInstance) create(_ context.Context, sess *session.Session, config []byte) error {
	return inst.run(sess, func(st *ocistore.Store) error { return st.Create(config) })
}

func (inst *nativeInstance) open(_ context.Context, sess *session.Session) (config []byte, err error) {
	err = inst.run(sess, func(st *ocistore.Store) (err error) {
		config, err = st.Open()
		return err
	})
	return config, err
}

func (inst *nativeInstance) ping(_ context.Context, sess *session.Session) error {
	return inst.run(sess, func(st *ocistore.Store) error { return st.Ping() })
}

func (inst *nativeInstance) mode(_ context.Context, sess *session.Session) (access abi.Access, err error) {
	err = inst.run(sess, func(st *ocistore.Store) (err error) {
		access, err = st.Mode()
		return err
	})
	return access, err
}

func (inst *nativeInstance) size(_ context.Context, sess *session.Session) (size int64, err error) {
	err = inst.run(sess, func(st *ocistore.Store) (err error) {
		size, err = st.Size()
		return err
	})
	return size, err
}

func (inst *nativeInstance) list(_ context.Context, sess *session.Session, k abi.Kind) (macs []objects.MAC, err error) {
	err = inst.run(sess, func(st *ocistore.Store) error {
		list, err := st.List(k)
		macs = make([]objects.MAC, len(list))
		for i, mac := range list {
			macs[i] = objects.MAC(mac)
		}
		return err
	})
	return macs, err
}

func (inst *nativeInstance) put(_ context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, body abi.Stream) (n uint64, err error) {
	err = inst.run(sess, func(st *ocistore.Store) (err error) {
		n, err = st.Put(k, abi.MAC(mac), body)
		return err
	})
	return n, err
}

func (inst *nativeInstance) get(_ context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, rng *abi.Range) (h abi.Stream, err error) {
	err = inst.run(sess, func(st *ocistore.Store) (err error) {
		h, err = st.Get(k, abi.MAC(mac), rng)
		return err
	})
	return h, err
}

func (inst *nativeInstance) delete(_ context.Context, sess *session.Session, k abi.Kind, mac objects.MAC) error {
	return inst.run(sess, func(st *ocistore.Store) error { return st.Delete(k, abi.MAC(mac)) })
}

func (inst *nativeInstance) closeStore(_ context.Context, sess *session.Session) error {
	return inst.run(sess, func(st *ocistore.Store) error { return st.Close() })
}
