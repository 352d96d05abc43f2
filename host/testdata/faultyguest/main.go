// Command faultyguest is the OCI store guest with faults on demand, for the
// host's reliability tests (host/reliability_test.go, which builds it):
// guest/ocistore behind the same glue as guest/ (imports.go and memory.go
// are links to guest/'s files, exports.go a copy with one hook), except
// that put, get and delete of a MAC that starts with "fault:" followed by
// a mode trap, panic, exit, run out of memory, hand the host a bad
// pointer, or spin forever. Every other call works as the real guest's.
package main

func main() {}
