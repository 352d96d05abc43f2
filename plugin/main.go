// Command ocistore-storage is the OCI store as a Plakar storage plugin: the
// executable that Plakar spawns for oci:// stores and talks to over gRPC on
// its standard input and output (go-kloset-sdk). It embeds the host shim
// and the guest module; the store key "plugin" may name another module (a
// file, or an OCI reference pinned by digest). See docs/plugin.md.
package main

import (
	"os"
	"os/signal"
	"syscall"

	sdk "github.com/PlakarKorp/go-kloset-sdk"

	"github.com/plakar-oci/ocistore/host"
)

func main() {
	// Plakar closes both pipes when it is done with a store; a frame the
	// gRPC server writes after that must fail (and end the server), not
	// kill the process with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	sdk.EntrypointStorage(os.Args, host.PlakarPlugin())
}
