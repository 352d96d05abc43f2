//go:build wasip1 && !faults

package main

import "github.com/plakar-oci/ocistore/abi"

// fault is where a guest built with the tag "faults" misbehaves on demand
// (see faults.go); the real guest does nothing.
func fault(abi.MAC) {}
