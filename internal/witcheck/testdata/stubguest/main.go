// Command stubguest is a guest that does nothing but has the shape of the
// world plugin: every store export, its post-return, cabi_realloc, and one
// import of each host interface, and WASI's fd_write twice (the runtime's
// and package syscall's). Built with -tags wrong, put and the log
// import have wrong signatures, for witcheck's test to catch.
package main

import (
	"os"
	"unsafe"
)

func main() {}

var heap [][]byte

//go:wasmexport cabi_realloc
func cabiRealloc(old unsafe.Pointer, oldSize, align, size uint32) unsafe.Pointer {
	b := make([]byte, size+align)
	heap = append(heap, b)
	p := unsafe.Pointer(&b[0])
	return unsafe.Add(p, (align-uint32(uintptr(p))%align)%align)
}

// ret is the return area of every export: result<_, error> and friends.
var ret [32]byte

func area() unsafe.Pointer {
	ret = [32]byte{}
	return unsafe.Pointer(&ret)
}

//go:wasmimport plakar:storage/http@0.3.0 round-trip
func roundTrip(method unsafe.Pointer, methodLen uint32, url unsafe.Pointer, urlLen uint32, headers unsafe.Pointer, headersLen uint32, bodyKind uint32, body0 uint32, body1 uint32, result unsafe.Pointer)

//go:wasmimport plakar:storage/streams@0.3.0 slice
func slice(s uint32, skip, length uint64) uint32

//go:wasmimport plakar:storage/cache@0.3.0 get
func cacheGet(key unsafe.Pointer, keyLen uint32, result unsafe.Pointer)

//go:wasmexport plakar:storage/store@0.3.0#configure
func configure(options unsafe.Pointer, n uint32) unsafe.Pointer {
	// Calls each import, so that the linker keeps them.
	if n == 1<<31 {
		roundTrip(nil, 0, nil, 0, nil, 0, 0, 0, 0, area())
		slice(0, 0, 0)
		cacheGet(nil, 0, area())
		hostLog(0, nil, 0)
		// Package syscall imports fd_write again, as any real guest does.
		os.Stdout.WriteString("unreachable\n")
	}
	return area()
}

//go:wasmexport plakar:storage/store@0.3.0#create
func create(config unsafe.Pointer, n uint32) unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#open
func open() unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#ping
func ping() unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#mode
func mode() unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#size
func size() unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#list
func list(kind uint32) unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#get
func get(kind uint32, mac unsafe.Pointer, macLen uint32, hasRange uint32, offset uint64, length uint32) unsafe.Pointer {
	return area()
}

//go:wasmexport plakar:storage/store@0.3.0#delete
func del(kind uint32, mac unsafe.Pointer, macLen uint32) unsafe.Pointer { return area() }

//go:wasmexport plakar:storage/store@0.3.0#close
func closeStore() unsafe.Pointer { return area() }

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#configure
func postConfigure(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#create
func postCreate(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#open
func postOpen(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#ping
func postPing(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#mode
func postMode(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#size
func postSize(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#list
func postList(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#put
func postPut(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#get
func postGet(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#delete
func postDelete(unsafe.Pointer) {}

//go:wasmexport cabi_post_plakar:storage/store@0.3.0#close
func postClose(unsafe.Pointer) {}
