package host

import (
	"context"
	"maps"
	"sync"

	"github.com/PlakarKorp/kloset/connectors/storage"
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
type Store struct{ *front[*instance] }

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
	f, err := newFront(config, newStoreOptions(p.logger, opts), func(ctx context.Context, f *front[*instance]) (*instance, error) {
		sess := f.env.NewSession(ctx)
		defer sess.CloseAll()
		return p.newInstance(ctx, sess, f.config.guestOptions)
	})
	if err != nil {
		return nil, err
	}
	return &Store{f}, nil
}

// The backend of a sandboxed store: each call lowered to an export of the
// guest, its result lifted.

func (inst *instance) create(ctx context.Context, sess *session.Session, config []byte) error {
	ptr, err := inst.lower(ctx, config, 1)
	if err != nil {
		return err
	}
	return inst.call(ctx, sess, abi.ExportCreate, unitResult, uint64(ptr), uint64(len(config)))
}

func (inst *instance) open(ctx context.Context, sess *session.Session) (config []byte, err error) {
	err = inst.call(ctx, sess, abi.ExportOpen, func(area, mem []byte) (err error) {
		config, err = bytesResult(area, mem)
		return err
	})
	return config, err
}

func (inst *instance) ping(ctx context.Context, sess *session.Session) error {
	return inst.call(ctx, sess, abi.ExportPing, unitResult)
}

func (inst *instance) mode(ctx context.Context, sess *session.Session) (access abi.Access, err error) {
	err = inst.call(ctx, sess, abi.ExportMode, func(area, mem []byte) (err error) {
		access, err = accessResult(area, mem)
		return err
	})
	return access, err
}

func (inst *instance) size(ctx context.Context, sess *session.Session) (size int64, err error) {
	err = inst.call(ctx, sess, abi.ExportSize, func(area, mem []byte) error {
		n, err := u64Result(area, mem)
		size = int64(n)
		return err
	})
	return size, err
}

func (inst *instance) list(ctx context.Context, sess *session.Session, k abi.Kind) (macs []objects.MAC, err error) {
	err = inst.call(ctx, sess, abi.ExportList, func(area, mem []byte) (err error) {
		macs, err = macsResult(area, mem)
		return err
	}, uint64(k))
	return macs, err
}

func (inst *instance) put(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, body abi.Stream) (n uint64, err error) {
	ptr, err := inst.lower(ctx, mac[:], 1)
	if err != nil {
		return 0, err
	}
	err = inst.call(ctx, sess, abi.ExportPut, func(area, mem []byte) (err error) {
		n, err = u64Result(area, mem)
		return err
	}, uint64(k), uint64(ptr), uint64(len(mac)), uint64(body))
	return n, err
}

func (inst *instance) get(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC, rng *abi.Range) (st abi.Stream, err error) {
	ptr, err := inst.lower(ctx, mac[:], 1)
	if err != nil {
		return 0, err
	}
	var hasRange, offset, length uint64
	if rng != nil {
		hasRange, offset, length = 1, rng.Offset, uint64(rng.Length)
	}
	err = inst.call(ctx, sess, abi.ExportGet, func(area, mem []byte) (err error) {
		st, err = streamResult(area, mem)
		return err
	}, uint64(k), uint64(ptr), uint64(len(mac)), hasRange, offset, length)
	return st, err
}

func (inst *instance) delete(ctx context.Context, sess *session.Session, k abi.Kind, mac objects.MAC) error {
	ptr, err := inst.lower(ctx, mac[:], 1)
	if err != nil {
		return err
	}
	return inst.call(ctx, sess, abi.ExportDelete, unitResult, uint64(k), uint64(ptr), uint64(len(mac)))
}

func (inst *instance) closeStore(ctx context.Context, sess *session.Session) error {
	return inst.call(ctx, sess, abi.ExportClose, unitResult)
}
