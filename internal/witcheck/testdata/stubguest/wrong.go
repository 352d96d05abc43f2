//go:build wrong

package main

import "unsafe"

// hostLog takes the message as a pointer only: its length is missing.
//
//go:wasmimport plakar:storage/log@0.3.0 log
func logPtr(level uint32, msg unsafe.Pointer)

func hostLog(level uint32, msg unsafe.Pointer, _ uint32) { logPtr(level, msg) }

// put takes the body stream as an i64 where the WIT says u32 (an i32).
//
//go:wasmexport plakar:storage/store@0.3.0#put
func put(kind uint32, mac unsafe.Pointer, macLen uint32, body uint64) unsafe.Pointer {
	return area()
}
