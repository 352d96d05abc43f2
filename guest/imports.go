//go:build wasip1

package main

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/internal/scratch"
)

// The imports of interfaces http, streams, cache and log, and host, the
// abi.Host they make up for the store logic.

//go:wasmimport plakar:storage/http@0.3.0 round-trip
func importRoundTrip(methodPtr, methodLen, urlPtr, urlLen, headersPtr, headersLen, bodyCase, body1, body2, ret uint32)

//go:wasmimport plakar:storage/http@0.3.0 start
func importStart(methodPtr, methodLen, urlPtr, urlLen, headersPtr, headersLen, bodyCase, body1, body2 uint32) uint32

//go:wasmimport plakar:storage/http@0.3.0 finish
func importFinish(p, ret uint32)

//go:wasmimport plakar:storage/streams@0.3.0 read
func importRead(s, max, ret uint32)

//go:wasmimport plakar:storage/streams@0.3.0 digest
func importDigest(s, ret uint32)

//go:wasmimport plakar:storage/streams@0.3.0 slice
func importSlice(s uint32, skip, length uint64) uint32

//go:wasmimport plakar:storage/streams@0.3.0 verify
func importVerify(s, digestPtr, digestLen uint32, size uint64)

//go:wasmimport plakar:storage/streams@0.3.0 close
func importClose(s uint32)

//go:wasmimport plakar:storage/cache@0.3.0 get
func importCacheGet(keyPtr, keyLen, ret uint32)

//go:wasmimport plakar:storage/cache@0.3.0 set
func importCacheSet(keyPtr, keyLen, valuePtr, valueLen uint32)

//go:wasmimport plakar:storage/cache@0.3.0 remove
func importCacheRemove(keyPtr, keyLen uint32)

//go:wasmimport plakar:storage/windows@0.3.0 plan
func importPlan(digestPtr, digestLen uint32, size, offset uint64, length, ret uint32)

//go:wasmimport plakar:storage/windows@0.3.0 keep
func importKeep(body, digestPtr, digestLen uint32, size, windowOffset uint64, windowLength uint32, offset uint64, length, ret uint32)

//go:wasmimport plakar:storage/log@0.3.0 log
func importLog(level, msgPtr, msgLen uint32)

type host struct{}

var _ abi.Host = host{}

// retArea is the return area of every import: 8-aligned, as tuple<string,
// u64> needs. It is a global, not a local, because a goroutine stack may
// move while the host calls back into cabi_realloc, and the host writes the
// area after that. Calls into the host are never concurrent, and every
// caller reads the area before making the next one.
type retArea [3]uint64

var ret retArea

func (r *retArea) ptr() uint32 { return uint32(uintptr(unsafe.Pointer(r))) }

func (r *retArea) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(r)), 24) }

func (host) RoundTrip(req *abi.Request) (*abi.Response, error) {
	lowerRequest(req, func(method, url, headers, body [2]uint32, bodyCase uint32) {
		importRoundTrip(method[0], method[1], url[0], url[1], headers[0], headers[1], bodyCase, body[0], body[1], ret.ptr())
	})
	return liftResponse()
}

func (host) Start(req *abi.Request) (p abi.Pending) {
	lowerRequest(req, func(method, url, headers, body [2]uint32, bodyCase uint32) {
		p = abi.Pending(importStart(method[0], method[1], url[0], url[1], headers[0], headers[1], bodyCase, body[0], body[1]))
	})
	return p
}

func (host) Finish(p abi.Pending) (*abi.Response, error) {
	importFinish(uint32(p), ret.ptr())
	return liftResponse()
}

// lowerRequest hands the flat parameters of req to call, which calls the
// import, and keeps what they point at alive meanwhile.
func lowerRequest(req *abi.Request, call func(method, url, headers, body [2]uint32, bodyCase uint32)) {
	// Header tuples are (name ptr, name len, value ptr, value len); most
	// requests have a header or two, which need no allocation.
	var few [16]uint32
	headers := few[:0]
	for _, h := range req.Header {
		headers = append(headers, stringAddr(h[0]), uint32(len(h[0])), stringAddr(h[1]), uint32(len(h[1])))
	}
	var body [2]uint32
	switch req.BodyKind {
	case abi.BodyBytes:
		body = [2]uint32{addr(req.Bytes), uint32(len(req.Bytes))}
	case abi.BodyStreamed:
		body[0] = uint32(req.Stream)
	}
	var headersPtr uint32
	if len(headers) > 0 {
		headersPtr = uint32(uintptr(unsafe.Pointer(unsafe.SliceData(headers))))
	}
	call([2]uint32{stringAddr(req.Method), uint32(len(req.Method))},
		[2]uint32{stringAddr(req.URL), uint32(len(req.URL))},
		[2]uint32{headersPtr, uint32(len(req.Header))}, body, uint32(req.BodyKind))
	runtime.KeepAlive(req)
	runtime.KeepAlive(headers)
}

// lifted is the memory of what the guest lifts from the host in an export
// call (answers, their headers, digests, cache values), reused by the next
// export call: abi.Host lends it for the call, and lifting then makes no
// Go allocation (package scratch says why that matters).
var lifted struct {
	bytes     scratch.Bytes
	responses scratch.Slots[abi.Response]
}

// resetLifted starts an export call.
func resetLifted() {
	lifted.bytes.Reset()
	lifted.responses.Reset()
}

// liftResponse lifts the result<response, string> in ret.
func liftResponse() (*abi.Response, error) {
	defer releaseAll()
	b := ret.bytes()
	if b[0] != 0 {
		return nil, errors.New(takeString(le.Uint32(b[4:]), le.Uint32(b[8:])))
	}
	resp := lifted.responses.Next()
	*resp = abi.Response{Status: int(le.Uint16(b[4:])), Body: abi.Stream(le.Uint32(b[16:])),
		Header: takePairs(le.Uint32(b[8:]), le.Uint32(b[12:]), resp.Header[:0], &lifted.bytes)}
	return resp, nil
}

// liftString copies a string out of host memory into lifted.
func liftString(ptr, n uint32) string {
	return lifted.bytes.String(func(b []byte) []byte { return append(b, view(ptr, n)...) })
}

// takePairs copies a list<tuple<string, string>> (an answer's headers,
// configure's options) out of host memory, appending to headers. Its
// strings go to mem (a Bytes never reset, for what is kept for good, is
// heap memory never reused), in one copy when they are contiguous, as our
// host lowers them: an answer has a dozen headers, and two allocations
// each were a good part of what lifting it cost.
func takePairs(ptr, n uint32, headers []abi.Header, mem *scratch.Bytes) []abi.Header {
	list := view(ptr, n*16)
	size := 0
	contiguous := true // each string right after the one before, as our host lowers them
	for i := uint32(0); i < 2*n; i++ {
		if i > 0 && le.Uint32(list[i*8:]) != le.Uint32(list[i*8-8:])+le.Uint32(list[i*8-4:]) {
			contiguous = false
		}
		size += int(le.Uint32(list[i*8+4:]))
	}
	all := mem.String(func(buf []byte) []byte {
		if contiguous && n > 0 {
			return append(buf, view(le.Uint32(list), uint32(size))...)
		}
		for i := uint32(0); i < 2*n; i++ {
			buf = append(buf, view(le.Uint32(list[i*8:]), le.Uint32(list[i*8+4:]))...)
		}
		return buf
	})
	headers = slices.Grow(headers, int(n))[:n]
	off := 0
	for i := range headers {
		for j := range 2 {
			l := int(le.Uint32(list[(2*i+j)*8+4:]))
			headers[i][j] = all[off : off+l]
			off += l
		}
	}
	return headers
}

func (host) Read(s abi.Stream, p []byte) (int, error) {
	// The host lowers what it read through cabi_realloc, which hands it
	// p: the bytes land where the caller wants them. p came through
	// abi.Host, an interface, so it is on the heap, which does not move
	// while the host calls back.
	readTarget = p
	importRead(uint32(s), uint32(len(p)), ret.ptr())
	readTarget = nil
	defer releaseAll()
	b := ret.bytes()
	ptr, n := le.Uint32(b[4:]), le.Uint32(b[8:])
	if b[0] != 0 {
		return 0, errors.New(takeString(ptr, n))
	}
	if n == 0 {
		return 0, io.EOF
	}
	if n > uint32(len(p)) {
		return 0, fmt.Errorf("streams.read returned %d bytes for a read of at most %d: the host breaks the contract", n, len(p))
	}
	if ptr != addr(p) {
		copy(p, view(ptr, n))
	}
	return int(n), nil
}

func (host) Digest(s abi.Stream) (string, uint64) {
	importDigest(uint32(s), ret.ptr())
	defer releaseAll()
	b := ret.bytes()
	return liftString(le.Uint32(b[0:]), le.Uint32(b[4:])), le.Uint64(b[8:])
}

func (host) Slice(s abi.Stream, skip, length uint64) abi.Stream {
	return abi.Stream(importSlice(uint32(s), skip, length))
}

func (host) Verify(s abi.Stream, digest string, size uint64) {
	importVerify(uint32(s), stringAddr(digest), uint32(len(digest)), size)
	runtime.KeepAlive(digest)
}

func (host) Close(s abi.Stream) { importClose(uint32(s)) }

func (host) CacheGet(key string) (string, bool) {
	importCacheGet(stringAddr(key), uint32(len(key)), ret.ptr())
	runtime.KeepAlive(key)
	defer releaseAll()
	b := ret.bytes()
	if b[0] == 0 {
		return "", false
	}
	return liftString(le.Uint32(b[4:]), le.Uint32(b[8:])), true
}

func (host) CacheSet(key, value string) {
	importCacheSet(stringAddr(key), uint32(len(key)), stringAddr(value), uint32(len(value)))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
}

func (host) CacheRemove(key string) {
	importCacheRemove(stringAddr(key), uint32(len(key)))
	runtime.KeepAlive(key)
}

func (host) Plan(digest string, size, offset uint64, length uint32) (abi.Stream, abi.Range) {
	importPlan(stringAddr(digest), uint32(len(digest)), size, offset, length, ret.ptr())
	runtime.KeepAlive(digest)
	b := ret.bytes()
	if b[0] == 0 {
		return abi.Stream(le.Uint32(b[8:])), abi.Range{}
	}
	return 0, abi.Range{Offset: le.Uint64(b[8:]), Length: le.Uint32(b[16:])}
}

func (host) Keep(body abi.Stream, digest string, size uint64, window abi.Range, offset uint64, length uint32) (abi.Stream, error) {
	importKeep(uint32(body), stringAddr(digest), uint32(len(digest)), size, window.Offset, window.Length, offset, length, ret.ptr())
	runtime.KeepAlive(digest)
	defer releaseAll()
	b := ret.bytes()
	if b[0] != 0 {
		return 0, errors.New(takeString(le.Uint32(b[4:]), le.Uint32(b[8:])))
	}
	return abi.Stream(le.Uint32(b[4:])), nil
}

func (host) Log(level abi.Level, msg string) {
	importLog(uint32(level), stringAddr(msg), uint32(len(msg)))
	runtime.KeepAlive(msg)
}
