package host_test

import (
	"context"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestContractNative runs the store contract against the native store
// (the guest's logic compiled into the host). Its registry-facing code is
// the guest's, which TestContract runs against every registry; what is
// native is the glue (a session per call, the instance pool, errors), so
// distribution with and without deletes, which take the two ways of
// deleting, are enough.
func TestContractNative(t *testing.T) {
	for _, opts := range []registrytest.Options{{Delete: true}, {Delete: false}} {
		r := registrytest.Distribution(t, opts)
		t.Run(r.Name, func(t *testing.T) {
			testContract(t, func(t *testing.T, repo string) storage.Store {
				return openNativeStore(t, map[string]string{"location": "oci://" + r.Host + "/" + repo})
			})
		})
	}
}

func openNativeStore(t *testing.T, config map[string]string) *host.NativeStore {
	t.Helper()
	s, err := host.NewNativeStore(context.Background(), config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}
