// Package artifacttest builds small WebAssembly core modules for tests:
// modules that look like plugins of another ABI version, or that lack some
// of the contract's exports.
package artifacttest

import (
	"encoding/binary"
	"slices"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// StubModule returns a valid core module whose functions do nothing, which
// exports cabi_realloc, _initialize and the store's functions with the
// contract's names at version (abi.Version for the real contract), less
// those named in omit (by their names at abi.Version).
func StubModule(version string, omit ...string) []byte {
	names := []string{abi.Realloc, "_initialize"}
	for _, e := range abi.Exports {
		if !slices.Contains(omit, e) {
			names = append(names, strings.Replace(e, "@"+abi.Version+"#", "@"+version+"#", 1))
		}
	}
	return Module(names...)
}

// Module returns a valid core module with one function of type [] -> []
// per name, exported under that name.
func Module(exports ...string) []byte {
	n := uint64(len(exports))
	out := []byte("\x00asm\x01\x00\x00\x00")
	section := func(id byte, body []byte) {
		out = append(out, id)
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	section(1, []byte{1, 0x60, 0, 0}) // one type: [] -> []
	funcs := binary.AppendUvarint(nil, n)
	for range exports {
		funcs = append(funcs, 0)
	}
	section(3, funcs)
	exps := binary.AppendUvarint(nil, n)
	for i, name := range exports {
		exps = binary.AppendUvarint(exps, uint64(len(name)))
		exps = append(exps, name...)
		exps = append(exps, 0) // a function
		exps = binary.AppendUvarint(exps, uint64(i))
	}
	section(7, exps)
	code := binary.AppendUvarint(nil, n)
	for range exports {
		code = append(code, 2, 0, 0x0b) // no locals, end
	}
	section(10, code)
	return out
}
