package host_test

import (
	"context"
	"sync"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestDeleteConcurrentGraveyard: on a registry that refuses DELETE, deletes
// of packfiles made at once through one store each name their object in
// the graveyard: none is lost to another's rewrite, and none is listed
// after.
func TestDeleteConcurrentGraveyard(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/graveyard/concurrent"}
	s := newStoreWith(t, cfg)
	ctx := context.Background()
	if err := s.Create(ctx, []byte("config")); err != nil {
		t.Fatal(err)
	}
	macs := make([]objects.MAC, 12)
	for i := range macs {
		macs[i] = randomMAC()
		put(t, s, storage.StorageResourcePackfile, macs[i], randomBytes(100))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(macs))
	for i, mac := range macs {
		wg.Go(func() { errs[i] = s.Delete(ctx, storage.StorageResourcePackfile, mac) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("delete %d: %v", i, err)
		}
	}
	if left := list(t, newStoreWith(t, cfg), storage.StorageResourcePackfile); len(left) != 0 {
		t.Errorf("%d of the %d packfiles deleted at once are still listed", len(left), len(macs))
	}
}
