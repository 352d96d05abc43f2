// Command ocistore-storage is the OCI store as a Plakar storage plugin: the
// executable that Plakar spawns for oci:// stores and talks to over gRPC on
// its standard input and output (go-kloset-sdk). It embeds the host shim
// and the guest module; the store key "plugin" may name another module (a
// file, or an OCI reference pinned by digest). See docs/plugin.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	sdk "github.com/PlakarKorp/go-kloset-sdk"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
)

// deleteTimeout bounds a delete that outlives Plakar's connection.
const deleteTimeout = 10 * time.Second

func main() {
	// Plakar closes both pipes when it is done with a store; a frame the
	// gRPC server writes after that must fail (and end the server), not
	// kill the process with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	if len(os.Args) != 1 {
		fmt.Fprintf(os.Stderr, "Usage: %s\n", os.Args[0])
		os.Exit(1)
	}
	// sdk.EntrypointStorage, but for the server's Get (server.go) and
	// the deletes in flight: Kloset releases a lock from a goroutine as a
	// command ends, and Plakar closes the pipes as it exits, which ends
	// the server. The SDK would then exit at once, and a lock whose
	// release was under way would stay, locking the repository for
	// Kloset's ten minutes.
	conn, listener, err := sdk.InitConn()
	if err == nil {
		var deletes sync.WaitGroup
		open := host.PlakarPlugin()
		err = serve(func(ctx context.Context, proto string, config map[string]string) (storage.Store, error) {
			st, err := open(ctx, proto, config)
			if err != nil {
				return nil, err
			}
			return &finishing{Store: st, deletes: &deletes}, nil
		}, listener)
		deletes.Wait()
		conn.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(os.Stderr, "storage plugin process exited with unexpected error: %s", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// finishing is a store whose deletes run to their end even when Plakar
// goes away meanwhile: gRPC cancels a call's context when the connection
// closes, and main waits for them before it exits.
type finishing struct {
	storage.Store
	deletes *sync.WaitGroup
}

func (f *finishing) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	f.deletes.Add(1)
	defer f.deletes.Done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	return f.Store.Delete(ctx, res, mac)
}
