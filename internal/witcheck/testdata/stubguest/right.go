//go:build !wrong

package main

import "unsafe"

//go:wasmimport plakar:storage/log@0.3.0 log
func hostLog(level uint32, msg unsafe.Pointer, msgLen uint32)

//go:wasmexport plakar:storage/store@0.3.0#put
func put(kind uint32, mac unsafe.Pointer, macLen uint32, body uint32) unsafe.Pointer {
	return area()
}
