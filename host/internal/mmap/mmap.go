//go:build unix

// Package mmap backs guest linear memory with an anonymous mapping reserved
// at its maximum size up front, so that memory.grow never copies: wazero's
// default allocator grows a []byte, which copies the whole memory each time
// and briefly holds two of them. The kernel commits pages only when they are
// touched, so the reservation costs address space, not RAM.
package mmap

import (
	"syscall"

	"github.com/tetratelabs/wazero/experimental"
)

// Allocator implements experimental.MemoryAllocator.
type Allocator struct{}

// Allocate reserves max bytes; it returns nil (wazero then fails the
// instantiation) if the reservation is refused.
func (Allocator) Allocate(_, max uint64) experimental.LinearMemory {
	if max == 0 || max > 1<<32 {
		return nil
	}
	buf, err := syscall.Mmap(-1, 0, int(max), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	return &memory{buf: buf}
}

type memory struct {
	buf []byte
}

// Reallocate returns the first size bytes of the reservation: the address
// never changes.
func (m *memory) Reallocate(size uint64) []byte {
	if size > uint64(len(m.buf)) {
		return nil
	}
	return m.buf[:size]
}

func (m *memory) Free() {
	if m.buf != nil {
		_ = syscall.Munmap(m.buf)
		m.buf = nil
	}
}
