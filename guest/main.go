// Command guest is the OCI store as a WebAssembly reactor: the world
// plakar:storage/plugin of wit/storage.wit, for GOOS=wasip1 GOARCH=wasm
// -buildmode=c-shared. The store logic is package ocistore; this package is
// only the canonical-ABI glue between it and the host, written by hand
// because wit-bindgen-go targets TinyGo, and checked against the WIT by
// internal/witcheck.
package main

import "runtime/debug"

func init() {
	// The store keeps little in memory (payloads stay in the host); a low
	// limit keeps each pooled instance's linear memory small.
	debug.SetMemoryLimit(16 << 20)
}

func main() {}
