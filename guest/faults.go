//go:build wasip1 && faults

// With the build tag "faults", the guest misbehaves on demand, for the
// host's reliability tests (host/reliability_test.go builds it so): put,
// get and delete of a MAC that starts with "fault:" followed by a mode trap,
// panic, exit, run out of memory, hand the host a bad pointer, or spin
// forever. Every other call works as the real guest's.

package main

import (
	"os"
	"strings"
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
)

// Modes, after "fault:" at the start of a MAC.
const (
	modeTrap   = "trap"   // a store out of linear memory: a wasm trap
	modePanic  = "panic"  // a Go panic that nothing recovers: the runtime exits with 2
	modeExit   = "exit"   // os.Exit(3): proc_exit
	modeOOM    = "oom"    // allocate until memory.grow fails
	modeBadPtr = "badptr" // pass the host a string outside memory: the host function panics
	modeHang   = "hang"   // spin without calling anything: only cancellation stops it
)

// sink keeps modeOOM's allocations alive.
var sink [][]byte

//go:wasmimport plakar:storage/log@0.3.0 log
func importLogRaw(level, msgPtr, msgLen uint32)

// fault misbehaves as mac says, or returns.
func fault(mac abi.MAC) {
	rest, ok := strings.CutPrefix(string(mac[:]), "fault:")
	if !ok {
		return
	}
	switch mode := strings.TrimRight(rest, "\x00"); mode {
	case modeTrap:
		*(*byte)(unsafe.Add(unsafe.Pointer(nil), 0xfffffff0)) = 1
	case modePanic:
		panic("faultyguest: deliberate panic")
	case modeExit:
		os.Exit(3)
	case modeOOM:
		for {
			sink = append(sink, make([]byte, 1<<20))
			for i := 0; i < len(sink[len(sink)-1]); i += 4096 {
				sink[len(sink)-1][i] = 1 // touch every page
			}
		}
	case modeBadPtr:
		importLogRaw(uint32(abi.LevelError), 0xfffffff0, 0x100)
	case modeHang:
		for n := 0; ; n++ {
			spin = n
		}
	}
}

var spin int
