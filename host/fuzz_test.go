package host

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// Fuzz targets for the host's lifting of what a guest returns: a guest is
// untrusted, and whatever its return area and memory hold, the host must
// answer with a value or an error, never panic or allocate without bound.
// Seed corpora are in testdata/fuzz; `make fuzz` runs each for a few
// seconds.

// fuzzMemory splits the fuzzer's bytes into a return area (the first
// areaSize bytes, zero-padded) and a memory (all of them, so that pointers
// in the area can point into the memory, at the area itself too).
func fuzzMemory(data []byte) (area, mem []byte) {
	area = make([]byte, areaSize)
	copy(area, data)
	return area, data
}

// seedArea builds an area and memory: words are written little-endian at
// their offsets, then extra follows the area.
func seedArea(words map[int]uint32, extra string) []byte {
	b := make([]byte, areaSize, areaSize+len(extra))
	for off, w := range words {
		binary.LittleEndian.PutUint32(b[off:], w)
	}
	return append(b, extra...)
}

func FuzzLiftError(f *testing.F) {
	f.Add(seedArea(nil, ""))                                                                     // ok
	f.Add(seedArea(map[int]uint32{0: 1, 4: uint32(abi.ErrNotFound), 8: 24, 12: 9}, "not found")) // error string at 24
	f.Add(seedArea(map[int]uint32{0: 1, 4: uint32(abi.ErrTransient), 8: 503, 12: 24, 16: 4}, "busy"))
	f.Add(seedArea(map[int]uint32{0: 1, 4: 200, 8: 24, 12: 1 << 31}, "x")) // invalid code, string out of memory
	f.Fuzz(func(t *testing.T, data []byte) {
		area, mem := fuzzMemory(data)
		for _, off := range []int{4, 8} {
			err := liftError(area, mem, off)
			if (err == nil) != (area[0] == 0) {
				t.Fatalf("liftError(disc %d) = %v", area[0], err)
			}
			if err == nil {
				continue
			}
			var e *abi.Error
			if !errors.As(err, &e) || !e.Code.Valid() {
				t.Fatalf("liftError = %#v: not an *abi.Error with a valid code", err)
			}
			if e.Code != abi.ErrTransient && e.Status != 0 {
				t.Fatalf("a %v error with status %d", e.Code, e.Status)
			}
			if len(e.Message) > len(mem)+len("invalid error from the plugin: ") {
				t.Fatalf("a message of %d bytes from a memory of %d", len(e.Message), len(mem))
			}
		}
	})
}

func FuzzLiftResults(f *testing.F) {
	// An ok list of two MACs: descriptors at 24, MACs at 40 and 72.
	macs := seedArea(map[int]uint32{4: 24, 8: 2}, strings.Repeat("\x00", 16)+strings.Repeat("m", 64))
	binary.LittleEndian.PutUint32(macs[24:], 40)
	binary.LittleEndian.PutUint32(macs[28:], 32)
	binary.LittleEndian.PutUint32(macs[32:], 72)
	binary.LittleEndian.PutUint32(macs[36:], 32)
	f.Add(macs)
	f.Add(seedArea(map[int]uint32{4: 0, 8: 0x20000000}, ""))       // 8*n wraps around 2^32
	f.Add(seedArea(map[int]uint32{4: 24, 8: 11}, "configuration")) // bytes
	f.Add(seedArea(map[int]uint32{4: 7, 8: 1234}, ""))             // stream, u64
	f.Fuzz(func(t *testing.T, data []byte) {
		area, mem := fuzzMemory(data)
		ok := area[0] == 0

		macs, err := macsResult(area, mem)
		if err == nil {
			if !ok {
				t.Fatal("macsResult: no error for an error result")
			}
			// Every MAC took 8 bytes of descriptor and 32 of memory.
			if n := len(macs); 8*n > len(mem) || (n > 0 && 32 > len(mem)) {
				t.Fatalf("%d MACs from %d bytes of memory", n, len(mem))
			}
		} else if ok && !strings.HasPrefix(err.Error(), "oci plugin: list returned") {
			t.Fatalf("macsResult: %v", err)
		}

		b, err := bytesResult(area, mem)
		if err == nil && (!ok || len(b) > len(mem)) {
			t.Fatalf("bytesResult = %d bytes, %v (disc %d)", len(b), err, area[0])
		}
		if _, err := streamResult(area, mem); (err == nil) != ok {
			t.Fatalf("streamResult: %v (disc %d)", err, area[0])
		}
		if _, err := accessResult(area, mem); (err == nil) != ok {
			t.Fatalf("accessResult: %v (disc %d)", err, area[0])
		}
		if _, err := u64Result(area, mem); (err == nil) != ok {
			t.Fatalf("u64Result: %v (disc %d)", err, area[0])
		}
		if err := unitResult(area, mem); (err == nil) != ok {
			t.Fatalf("unitResult: %v (disc %d)", err, area[0])
		}
	})
}

func FuzzReturnArea(f *testing.F) {
	f.Add(uint32(0), 24)
	f.Add(uint32(1<<32-1), 100)
	f.Add(uint32(80), 100)
	f.Fuzz(func(t *testing.T, ptr uint32, size int) {
		if size < 0 || size > 1<<16 {
			return
		}
		mem := make([]byte, size)
		area, ok := returnArea(mem, ptr)
		if ok != (uint64(ptr)+areaSize <= uint64(size)) {
			t.Fatalf("returnArea(%d) in %d bytes: ok %v", ptr, size, ok)
		}
		if ok && (len(area) != areaSize || cap(area) != areaSize) {
			t.Fatalf("returnArea = %d bytes (cap %d)", len(area), cap(area))
		}
	})
}
