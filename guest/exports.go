//go:build wasip1

package main

import (
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/internal/scratch"
	"github.com/plakar-oci/ocistore/guest/ocistore"
)

// The exports of interface plakar:storage/store: each lifts its parameters,
// calls the store and lowers the result into a return area laid out as
// package abi documents. Every result here is result<T, error>, whose
// discriminant is 0 for ok and 1 for error.

var store *ocistore.Store

//go:wasmexport plakar:storage/store@0.3.0#configure
func configure(ptr, n uint32) uint32 {
	options := map[string]string{}
	// The store keeps its options: their strings come from memory that
	// is never reused.
	for _, o := range takePairs(ptr, n, nil, new(scratch.Bytes)) {
		options[o[0]] = o[1]
	}
	err := guard(func() (err error) {
		store, err = ocistore.New(host{}, options)
		return err
	})
	return resultUnit(err)
}

//go:wasmexport plakar:storage/store@0.3.0#create
func create(ptr, n uint32) uint32 {
	config := take(ptr, n)
	return resultUnit(call(func(s *ocistore.Store) error { return s.Create(config) }))
}

//go:wasmexport plakar:storage/store@0.3.0#open
func open() uint32 {
	var config []byte
	err := call(func(s *ocistore.Store) (err error) {
		config, err = s.Open()
		return err
	})
	if err != nil {
		return resultUnit(err)
	}
	area := newArea(12)
	ptr, n := lowerBytes(config)
	le.PutUint32(area.b[4:], ptr)
	le.PutUint32(area.b[8:], n)
	return area.ptr
}

//go:wasmexport plakar:storage/store@0.3.0#ping
func ping() uint32 {
	return resultUnit(call(func(s *ocistore.Store) error { return s.Ping() }))
}

//go:wasmexport plakar:storage/store@0.3.0#mode
func mode() uint32 {
	var access abi.Access
	err := call(func(s *ocistore.Store) (err error) {
		access, err = s.Mode()
		return err
	})
	if err != nil {
		return resultUnit(err)
	}
	area := newArea(20)
	area.b[4] = byte(access)
	return area.ptr
}

//go:wasmexport plakar:storage/store@0.3.0#size
func size() uint32 {
	var n int64
	err := call(func(s *ocistore.Store) (err error) {
		n, err = s.Size()
		return err
	})
	return resultU64(uint64(n), err)
}

//go:wasmexport plakar:storage/store@0.3.0#list
func list(kind uint32) uint32 {
	var macs []abi.MAC
	err := call(func(s *ocistore.Store) (err error) {
		k, err := liftKind(kind)
		if err == nil {
			macs, err = s.List(k)
		}
		return err
	})
	if err != nil {
		return resultUnit(err)
	}
	// The list of (ptr, len) descriptors points at the MACs where List
	// left them, in the store's memory until the next call, and pinned
	// until the release when the store did not keep them (too many).
	listed = macs
	n := uint32(len(macs))
	ptr, block := alloc(n * 8)
	if n > 0 {
		at := addr(unsafe.Slice(&macs[0][0], n*abi.MACSize))
		for i := range n {
			le.PutUint32(block[i*8:], at+i*abi.MACSize)
			le.PutUint32(block[i*8+4:], abi.MACSize)
		}
	}
	area := newArea(12)
	le.PutUint32(area.b[4:], ptr)
	le.PutUint32(area.b[8:], n)
	return area.ptr
}

//go:wasmexport plakar:storage/store@0.3.0#put
func put(kind, macPtr, macLen, body uint32) uint32 {
	mac, macErr := liftMAC(macPtr, macLen)
	fault(mac)
	var n uint64
	err := call(func(s *ocistore.Store) (err error) {
		k, err := liftKind(kind)
		if err == nil && macErr == nil {
			n, err = s.Put(k, mac, abi.Stream(body))
		}
		return firstError(macErr, err)
	})
	return resultU64(n, err)
}

//go:wasmexport plakar:storage/store@0.3.0#get
func get(kind, macPtr, macLen, hasRange uint32, offset uint64, length uint32) uint32 {
	mac, macErr := liftMAC(macPtr, macLen)
	fault(mac)
	var rng *abi.Range
	if hasRange != 0 {
		rng = &abi.Range{Offset: offset, Length: length}
	}
	var stream abi.Stream
	err := call(func(s *ocistore.Store) (err error) {
		k, err := liftKind(kind)
		if err == nil && macErr == nil {
			stream, err = s.Get(k, mac, rng)
		}
		return firstError(macErr, err)
	})
	if err != nil {
		return resultUnit(err)
	}
	area := newArea(20)
	le.PutUint32(area.b[4:], uint32(stream))
	return area.ptr
}

//go:wasmexport plakar:storage/store@0.3.0#delete
func deleteObject(kind, macPtr, macLen uint32) uint32 {
	mac, macErr := liftMAC(macPtr, macLen)
	fault(mac)
	return resultUnit(call(func(s *ocistore.Store) error {
		k, err := liftKind(kind)
		if err == nil && macErr == nil {
			err = s.Delete(k, mac)
		}
		return firstError(macErr, err)
	}))
}

//go:wasmexport plakar:storage/store@0.3.0#close
func closeStore() uint32 {
	return resultUnit(call(func(s *ocistore.Store) error { return s.Close() }))
}

// Post-return functions: the host has read the results.

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#configure
func postConfigure(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#create
func postCreate(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#open
func postOpen(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#ping
func postPing(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#mode
func postMode(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#size
func postSize(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#list
func postList(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#put
func postPut(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#get
func postGet(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#delete
func postDelete(uint32) { releaseAll() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#close
func postClose(uint32) { releaseAll() }

// call runs f on the configured store, turning a panic into an error so that
// a bug in one call does not take the instance down with it.
func call(f func(*ocistore.Store) error) error {
	if store == nil {
		return abi.Errorf(abi.ErrInvalidConfig, "the plugin was called before configure")
	}
	// A new export call: the memory the last one lent the host, and what
	// it lifted, are free again (abi.Host).
	resetLifted()
	store.Reset()
	return guard(func() error { return f(store) })
}

func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = abi.Errorf(abi.ErrOther, "OCI store plugin bug: %v", r)
		}
	}()
	return f()
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func liftKind(kind uint32) (abi.Kind, error) {
	k := abi.Kind(kind)
	if !k.Valid() {
		return 0, abi.Errorf(abi.ErrInvalidConfig, "unknown resource kind %d", kind)
	}
	return k, nil
}

func liftMAC(ptr, n uint32) (abi.MAC, error) {
	var mac abi.MAC
	if n != abi.MACSize {
		return mac, abi.Errorf(abi.ErrOther, "a MAC is %d bytes, got %d", abi.MACSize, n)
	}
	copy(mac[:], view(ptr, n))
	return mac, nil
}

// area is a return area in pinned memory.
type area struct {
	ptr uint32
	b   []byte
}

func newArea(n uint32) area {
	ptr, b := alloc(n)
	return area{ptr, b}
}

// resultUnit lowers result<_, error>, and the error case of any result whose
// payload is 4-aligned.
func resultUnit(err error) uint32 {
	a := newArea(20)
	if err != nil {
		a.b[0] = 1
		lowerError(a.b[4:], err)
	}
	return a.ptr
}

// resultU64 lowers result<u64, error> and result<s64, error>, whose payload
// is 8-aligned.
func resultU64(v uint64, err error) uint32 {
	a := newArea(24)
	if err != nil {
		a.b[0] = 1
		lowerError(a.b[8:], err)
	} else {
		le.PutUint64(a.b[8:], v)
	}
	return a.ptr
}

// lowerError writes the variant error at the start of b.
func lowerError(b []byte, err error) {
	e, ok := err.(*abi.Error)
	if !ok || !e.Code.Valid() {
		e = &abi.Error{Code: abi.ErrOther, Message: err.Error()}
	}
	b[0] = byte(e.Code)
	msg := b[4:]
	if e.Code == abi.ErrTransient {
		le.PutUint16(b[4:], e.Status)
		msg = b[8:]
	}
	ptr, n := lowerString(e.Message)
	le.PutUint32(msg[0:], ptr)
	le.PutUint32(msg[4:], n)
}
