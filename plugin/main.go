// Command ocistore-storage is the OCI store as a Plakar storage plugin: the
// executable that Plakar spawns for oci:// stores and talks to over gRPC on
// its standard input and output (go-kloset-sdk). It embeds the host shim
// and the guest module; the store key "plugin" may name another module (a
// file, or an OCI reference pinned by digest). See docs/plugin.md.
package main

import (
	"errors"
	"fmt"
	"io"
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
	if len(os.Args) != 1 {
		fmt.Fprintf(os.Stderr, "Usage: %s\n", os.Args[0])
		os.Exit(1)
	}
	// sdk.EntrypointStorage, but for the server's Get and the calls under
	// way when Plakar goes away, which serve lets finish (server.go).
	conn, listener, err := sdk.InitConn()
	if err == nil {
		err = serve(host.PlakarPlugin(), listener)
		conn.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(os.Stderr, "storage plugin process exited with unexpected error: %s", err)
		os.Exit(1)
	}
	os.Exit(0)
}
