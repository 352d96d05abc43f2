//go:build wasip1

// Command evilguest is a guest that tries to leave its sandbox, for the
// host's tests: it exports the store of wit/storage.wit, but its put takes
// the body it is given as a list of requests to make, one a line,
//
//	METHOD URL [Name=value ...]
//
// makes each through http.round-trip and fails with a report of what
// happened to each: "URL => refused: <the host's error>" or
// "URL => <status>". The other exports do nothing. Build it with
// GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared.
package main

import (
	"encoding/binary"
	"runtime"
	"strconv"
	"strings"
	"unsafe"
)

func main() {}

var le = binary.LittleEndian

// Memory the host writes into (cabi_realloc) or reads after an export
// returns: pinned until the next export starts.
var pins = map[uint32][]uint64{}

func alloc(n uint32) (uint32, []byte) {
	if n == 0 {
		return 8, nil
	}
	words := make([]uint64, (n+7)/8)
	ptr := uint32(uintptr(unsafe.Pointer(unsafe.SliceData(words))))
	pins[ptr] = words
	return ptr, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), n)
}

//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	ptr, b := alloc(newSize)
	if oldPtr != 0 && oldSize != 0 {
		copy(b, view(oldPtr, min(oldSize, newSize)))
	}
	return ptr
}

func view(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), ptr)), n)
}

func takeString(ptr, n uint32) string { return string(view(ptr, n)) }

func stringAddr(s string) uint32 {
	if s == "" {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

//go:wasmimport plakar:storage/http@0.3.0 round-trip
func importRoundTrip(methodPtr, methodLen, urlPtr, urlLen, headersPtr, headersLen, bodyCase, body1, body2, ret uint32)

//go:wasmimport plakar:storage/streams@0.3.0 read
func importRead(s, max, ret uint32)

//go:wasmimport plakar:storage/streams@0.3.0 close
func importClose(s uint32)

type retArea [3]uint64

var ret retArea

func (r *retArea) ptr() uint32 { return uint32(uintptr(unsafe.Pointer(r))) }

func (r *retArea) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(r)), 24) }

// readAll reads a stream to its end.
func readAll(s uint32) (string, bool) {
	var out []byte
	for {
		importRead(s, 64<<10, ret.ptr())
		b := ret.bytes()
		data := view(le.Uint32(b[4:]), le.Uint32(b[8:]))
		if b[0] != 0 {
			return string(data), false
		}
		if len(data) == 0 {
			return string(out), true
		}
		out = append(out, data...)
	}
}

// roundTrip makes one request and says what became of it.
func roundTrip(method, url string, headers [][2]string) string {
	flat := make([]uint32, 0, 4*len(headers))
	for _, h := range headers {
		flat = append(flat, stringAddr(h[0]), uint32(len(h[0])), stringAddr(h[1]), uint32(len(h[1])))
	}
	var headersPtr uint32
	if len(flat) > 0 {
		headersPtr = uint32(uintptr(unsafe.Pointer(unsafe.SliceData(flat))))
	}
	importRoundTrip(stringAddr(method), uint32(len(method)), stringAddr(url), uint32(len(url)),
		headersPtr, uint32(len(headers)), 0, 0, 0, ret.ptr())
	runtime.KeepAlive(method)
	runtime.KeepAlive(url)
	runtime.KeepAlive(headers)
	runtime.KeepAlive(flat)
	b := ret.bytes()
	if b[0] != 0 {
		return "refused: " + takeString(le.Uint32(b[4:]), le.Uint32(b[8:]))
	}
	status := le.Uint16(b[4:])
	importClose(le.Uint32(b[16:]))
	return strconv.Itoa(int(status))
}

// Results: a return area with the discriminant at 0 and, for an error,
// the variant error at off (code u8, then the message string at off+4).
func result(size, off uint32, errMsg string) uint32 {
	ptr, a := alloc(size)
	if errMsg != "" {
		a[0] = 1
		a[off] = 7 // other
		msgPtr, msg := alloc(uint32(len(errMsg)))
		copy(msg, errMsg)
		le.PutUint32(a[off+4:], msgPtr)
		le.PutUint32(a[off+8:], uint32(len(errMsg)))
	}
	return ptr
}

func start() { clear(pins) }

//go:wasmexport plakar:storage/store@0.3.0#configure
func configure(ptr, n uint32) uint32 { start(); return result(20, 4, "") }

//go:wasmexport plakar:storage/store@0.3.0#create
func create(ptr, n uint32) uint32 { start(); return result(20, 4, "") }

//go:wasmexport plakar:storage/store@0.3.0#open
func open() uint32 { start(); return result(20, 4, "the evil guest keeps no store") }

//go:wasmexport plakar:storage/store@0.3.0#ping
func ping() uint32 { start(); return result(20, 4, "") }

//go:wasmexport plakar:storage/store@0.3.0#mode
func mode() uint32 {
	start()
	ptr, a := alloc(20)
	a[4] = 3
	return ptr
}

//go:wasmexport plakar:storage/store@0.3.0#size
func size() uint32 { start(); return result(24, 8, "") }

//go:wasmexport plakar:storage/store@0.3.0#list
func list(kind uint32) uint32 { start(); return result(20, 4, "") }

//go:wasmexport plakar:storage/store@0.3.0#put
func put(kind, macPtr, macLen, body uint32) uint32 {
	start()
	script, ok := readAll(body)
	if !ok {
		return result(24, 8, "reading the body: "+script)
	}
	var report []string
	for _, line := range strings.Split(script, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		var headers [][2]string
		for _, f := range fields[2:] {
			name, value, _ := strings.Cut(f, "=")
			headers = append(headers, [2]string{name, value})
		}
		report = append(report, fields[1]+" => "+roundTrip(fields[0], fields[1], headers))
	}
	return result(24, 8, strings.Join(report, "\n"))
}

//go:wasmexport plakar:storage/store@0.3.0#get
func get(kind, macPtr, macLen, hasRange uint32, offset uint64, length uint32) uint32 {
	start()
	return result(20, 4, "the evil guest keeps no objects")
}

//go:wasmexport plakar:storage/store@0.3.0#delete
func deleteObject(kind, macPtr, macLen uint32) uint32 { start(); return result(20, 4, "") }

//go:wasmexport plakar:storage/store@0.3.0#close
func closeStore() uint32 { start(); return result(20, 4, "") }
