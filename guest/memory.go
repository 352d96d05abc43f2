//go:build wasip1

package main

import (
	"encoding/binary"
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
)

// Memory the host reaches into: the return areas and results of exports,
// and what the host lowers through cabi_realloc. The guest copies out what
// it keeps (into lifted, imports.go, which lasts until the next export
// call), so all of it is released wholesale: after an import's results
// are lifted (an export's parameters are lifted before any import is
// called) and when the host calls a post-return function, having read an
// export's results. The host may thus lower a whole result into one
// allocation.
//
// Most of it comes from arena, reset at each release: a ranged get asks
// for such memory five times, and a Go allocation each, with a map entry
// to keep it alive, cost the sandbox more than the rest of the call. What does not
// fit is allocated on the Go heap, which does not move objects: pins keeps
// those alive until the release.
var (
	// readTarget is the buffer of the streams.read in progress, if any.
	readTarget []byte

	arena     [arenaWords]uint64
	arenaUsed uint32 // in words
	pins      = map[uint32][]uint64{}
	listed    []abi.MAC // the MACs of the last list's result
)

// arenaWords is 64 KiB: the largest result of a usual call (a read of a
// document, 32 KiB at a time) fits.
const arenaWords = 8 << 10

// alloc returns n zeroed bytes aligned to 8 (what []uint64 guarantees;
// Go's tiny allocator gives byte slices no alignment at all), valid until
// the next release.
func alloc(n uint32) (uint32, []byte) {
	if n == 0 {
		// The canonical ABI lets an empty list point anywhere aligned.
		return 8, nil
	}
	size := (n + 7) / 8
	var words []uint64
	if size <= arenaWords-arenaUsed {
		words = arena[arenaUsed : arenaUsed+size : arenaUsed+size]
		arenaUsed += size
		clear(words)
	} else {
		words = make([]uint64, size)
		pins[uint32(uintptr(unsafe.Pointer(unsafe.SliceData(words))))] = words
	}
	ptr := uint32(uintptr(unsafe.Pointer(unsafe.SliceData(words))))
	return ptr, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), n)
}

// cabiRealloc is how the host obtains guest memory to lower lists and
// strings into, for export parameters and import results.
//
//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	if t := readTarget; t != nil && oldPtr == 0 && align == 1 && newSize > 0 && newSize <= uint32(len(t)) {
		// The bytes of a streams.read, into the reader's buffer. Only
		// the first allocation: the host lowers them before anything else.
		readTarget = nil
		return addr(t)
	}
	ptr, b := alloc(newSize)
	if oldPtr != 0 && oldSize != 0 {
		copy(b, view(oldPtr, min(oldSize, newSize)))
		delete(pins, oldPtr)
	}
	return ptr
}

// releaseAll releases all memory the host could reach.
func releaseAll() {
	arenaUsed, listed = 0, nil
	if len(pins) > 0 {
		clear(pins)
	}
}

// view is the guest memory at [ptr, ptr+n).
func view(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	// Linear memory addresses are Go pointers on wasm.
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), ptr)), n)
}

// take copies n bytes at ptr out of memory the host lowered into.
func take(ptr, n uint32) []byte {
	b := make([]byte, n)
	copy(b, view(ptr, n))
	return b
}

func takeString(ptr, n uint32) string { return string(view(ptr, n)) }

// addr is the address of the first byte of b, which must stay referenced
// (runtime.KeepAlive) until the host is done with it.
func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

func stringAddr(s string) uint32 {
	if len(s) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

// lowerBytes copies b into pinned memory, for results the host reads after
// the export returns.
func lowerBytes(b []byte) (uint32, uint32) {
	ptr, dst := alloc(uint32(len(b)))
	copy(dst, b)
	return ptr, uint32(len(b))
}

func lowerString(s string) (uint32, uint32) {
	ptr, dst := alloc(uint32(len(s)))
	copy(dst, s)
	return ptr, uint32(len(s))
}

var le = binary.LittleEndian
