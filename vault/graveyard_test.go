package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// repoTags returns every tag of repository repo at host.
func repoTags(t *testing.T, host, repo string) []string {
	t.Helper()
	var list struct{ Tags []string }
	body := httpDo(t, "GET", "http://"+host+"/v2/"+repo+"/tags/list?n=1000", nil, "")
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("tag list of %s: %v", repo, err)
	}
	return list.Tags
}

func httpDo(t *testing.T, method, url string, body []byte, contentType string) []byte {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s %s %v", method, url, resp.Status, b, err)
	}
	return b
}

// keepFirstGraveyard keeps the graveyard's manifest as the first delete
// of a packfile left it.
type keepFirstGraveyard struct {
	storage.Store
	url   string
	t     *testing.T
	once  sync.Once
	first []byte
}

func (k *keepFirstGraveyard) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	err := k.Store.Delete(ctx, res, mac)
	if res == storage.StorageResourcePackfile && err == nil {
		k.once.Do(func() { k.first = httpDo(k.t, "GET", k.url, nil, "") })
	}
	return err
}

// TestMaintenanceGraveyard: on a registry that refuses DELETE, the
// packfiles maintenance removes are named in the one graveyard tag: the
// tag list grows by the graveyard and the record of how the registry
// deletes, not by a tag per packfile. A graveyard update lost (pushed
// over by one that does not name some of them, as two deletes at once
// would) lists them again, and the next maintenance names them again.
func TestMaintenanceGraveyard(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	repo := "maint/graveyard"
	graveyardURL := "http://" + reg.Host + "/v2/" + repo + "/manifests/graveyard"
	keep := &keepFirstGraveyard{url: graveyardURL, t: t}
	v := newTestStore(t, reg.Host, repo).open(context.Background(), func(s storage.Store) storage.Store {
		keep.Store = s
		return keep
	})
	files := backupTwoRemoveFirst(t, v)
	before := repoTags(t, reg.Host, repo)
	r, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Unused) < 2 {
		t.Fatalf("%d packfiles removed, want 2 or more for a lost update to lose one", len(r.Unused))
	}
	if r.Deletion != vault.DeletedByTombstone {
		t.Errorf("Deletion = %v, want DeletedByTombstone", r.Deletion)
	}
	var added []string
	for _, tag := range repoTags(t, reg.Host, repo) {
		if strings.HasPrefix(tag, "deleted-") {
			t.Errorf("tag %s: deleted objects are marked by a tag each", tag)
		}
		// Maintenance's own lock, and the state recording the removals,
		// are objects of the store.
		if !slices.Contains(before, tag) && !strings.HasPrefix(tag, "lock-") && !strings.HasPrefix(tag, "state-") {
			added = append(added, tag)
		}
	}
	// The record of how the registry deletes may be there already: the
	// backups released their locks.
	slices.Sort(added)
	if !slices.Equal(added, []string{"graveyard"}) && !slices.Equal(added, []string{"deletion-mode", "graveyard"}) {
		t.Errorf("maintenance removed %d packfiles and added tags %q, want the graveyard (and the record of how the registry deletes)", len(r.Unused), added)
	}

	// Lose every name but the first's.
	httpDo(t, "PUT", graveyardURL, keep.first, "application/vnd.oci.image.manifest.v1+json")
	listed, err := v.Store().List(context.Background(), storage.StorageResourcePackfile)
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, mac := range r.Unused {
		if slices.Contains(listed, mac) {
			lost++
		}
	}
	if lost != len(r.Unused)-1 {
		t.Fatalf("%d of the %d packfiles removed are listed after the graveyard lost them, want %d", lost, len(r.Unused), len(r.Unused)-1)
	}
	if _, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace}); err != nil {
		t.Fatalf("the maintenance after a lost graveyard update: %v", err)
	}
	left, err := v.Store().List(context.Background(), storage.StorageResourcePackfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r.Unused {
		if slices.Contains(left, mac) {
			t.Errorf("packfile %x is still listed after the next maintenance", mac[:4])
		}
	}
	nothingLeftToRemove(t, v, files)
}

// TestMaintenanceDeletionReported: on a registry that deletes, the
// result says the registry deleted the objects.
func TestMaintenanceDeletionReported(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	v := newTestStore(t, reg.Host, "maint/deleted").open(context.Background(), nil)
	backupTwoRemoveFirst(t, v)
	r, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if r.Deletion != vault.DeletedByRegistry {
		t.Errorf("Deletion = %v, want DeletedByRegistry", r.Deletion)
	}
}

// TestMaintenanceOrphanGraveyardHeals: the packfiles of a backup that
// never committed (no state knows of them) are deleted as orphans on a
// registry that refuses DELETE; a graveyard update lost lists them again,
// unreadable, and the next maintenance deletes them again (which names
// them), rather than failing on packfiles whose date it cannot read.
func TestMaintenanceOrphanGraveyardHeals(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	repo := "maint/orphan-heals"
	st := newTestStore(t, reg.Host, repo)
	ctx := context.Background()
	m := st.open(ctx, nil)
	keptDir := t.TempDir()
	kept := randomFiles(t, keptDir, 1, 100<<10)
	if _, err := m.Backup(keptDir, nil); err != nil {
		t.Fatal(err)
	}
	stopBackupUncommitted(t, st, 2)

	r, err := m.Maintenance(vault.MaintenanceOptions{Grace: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Orphans) == 0 {
		t.Fatal("no orphan deleted")
	}
	// The graveyard lists nothing, as a lost update that named none of
	// the objects deleted so far would.
	registrytest.PushArtifact(t, reg.URL, repo, "graveyard", "application/vnd.plakar.graveyard.v1", nil)
	listed, err := m.Store().List(ctx, storage.StorageResourcePackfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r.Orphans {
		if !slices.Contains(listed, mac) {
			t.Fatalf("orphan %x is not listed after the graveyard lost it", mac[:4])
		}
	}
	r2, err := m.Maintenance(vault.MaintenanceOptions{Grace: 0})
	if err != nil {
		t.Fatalf("the maintenance after a lost graveyard update: %v", err)
	}
	if len(r2.Orphans) != len(r.Orphans) {
		t.Errorf("the next maintenance deleted %d orphans again, want %d", len(r2.Orphans), len(r.Orphans))
	}
	left, err := m.Store().List(ctx, storage.StorageResourcePackfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r.Orphans {
		if slices.Contains(left, mac) {
			t.Errorf("orphan %x is still listed after the next maintenance", mac[:4])
		}
	}
	if _, err := m.Check("latest"); err != nil {
		t.Fatal(err)
	}
	restoresSame(t, m, "latest", kept)
}
