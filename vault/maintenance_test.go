package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// holdState holds the first state a backup puts until release is closed,
// once every packfile of the backup is uploaded: the backup is then
// exactly "running, packfiles written, nothing committed".
type holdState struct {
	storage.Store
	reached chan struct{}
	release chan struct{}
	held    bool
}

func (h *holdState) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	if res == storage.StorageResourceState && !h.held {
		h.held = true
		close(h.reached)
		<-h.release
	}
	return h.Store.Put(ctx, res, mac, rd)
}

func randomFiles(t *testing.T, root string, n, size int) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for i := range n {
		b := make([]byte, size)
		rand.Read(b)
		name := filepath.Join(root, "f"+string(rune('a'+i)))
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(name)] = b
	}
	return files
}

func restoresSame(t *testing.T, v *vault.Vault, ref string, files map[string][]byte) {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "out")
	if _, err := v.Restore(ref, "", dest, false); err != nil {
		t.Fatalf("restore %s: %v", ref, err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("restored %s differs (%v)", name, err)
		}
	}
}

// testStore is an encrypted store created for a test on a registry.
type testStore struct {
	t    *testing.T
	cfg  map[string]string
	pass []byte
}

func newTestStore(t *testing.T, host, repo string) *testStore {
	t.Helper()
	s := &testStore{t: t, cfg: map[string]string{"location": "oci://" + host + "/" + repo}, pass: []byte("maintenance " + repo)}
	if _, err := vault.Create(context.Background(), s.cfg, s.pass, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// open opens the store (closed at the end of the test), through wrap if
// not nil.
func (s *testStore) open(ctx context.Context, wrap func(storage.Store) storage.Store) *vault.Vault {
	s.t.Helper()
	v, err := vault.Open(ctx, s.cfg, s.pass, &vault.Options{WrapStore: wrap})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { v.Close() })
	return v
}

// backupTwoRemoveFirst backs up two trees of random files that share
// nothing, removes the first snapshot, and returns the second's files.
func backupTwoRemoveFirst(t *testing.T, v *vault.Vault) map[string][]byte {
	t.Helper()
	var files map[string][]byte
	var first string
	for i := range 2 {
		src := filepath.Join(t.TempDir(), "src")
		files = randomFiles(t, src, 2, 256<<10)
		r, err := v.Backup(src, nil)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.ShortID()
		}
	}
	if _, err := v.Remove(first); err != nil {
		t.Fatal(err)
	}
	return files
}

// TestMaintenanceGraceRace: a backup has uploaded its packfiles and not
// committed yet while maintenance runs; its lock looks stale to
// maintenance (its clock is past Kloset's lock TTL, as after a machine
// slept). The grace period keeps the packfiles: the backup commits, and
// its snapshot checks and restores. With no grace, the same packfiles are
// orphans to delete: the grace period alone saves them.
func TestMaintenanceGraceRace(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	st := newTestStore(t, reg.Host, "maint/race")
	ctx := context.Background()
	hold := &holdState{reached: make(chan struct{}), release: make(chan struct{})}
	b := st.open(ctx, func(s storage.Store) storage.Store { hold.Store = s; return hold })
	src := filepath.Join(t.TempDir(), "src")
	files := randomFiles(t, src, 3, 300<<10)
	backupDone := make(chan error, 1)
	go func() {
		_, err := b.Backup(src, nil)
		backupDone <- err
	}()
	<-hold.reached

	m := st.open(ctx, nil)
	if _, err := m.Maintenance(vault.MaintenanceOptions{Grace: time.Hour}); !errors.Is(err, vault.ErrStoreLocked) {
		t.Fatalf("maintenance beside a live backup: %v, want ErrStoreLocked", err)
	}
	later := func() time.Time { return time.Now().Add(repository.LOCK_TTL + time.Minute) }
	dry, err := m.Maintenance(vault.MaintenanceOptions{DryRun: true, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Orphans) == 0 || len(dry.StaleLocks) != 1 {
		t.Fatalf("without a grace period, the running backup's packfiles should be orphans to delete: %+v", dry)
	}
	r, err := m.Maintenance(vault.MaintenanceOptions{Grace: time.Hour, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Orphans) != 0 || len(r.Recent) != len(dry.Orphans) || len(r.StaleLocks) != 1 {
		t.Fatalf("maintenance with a grace period: %d orphans deleted, %d recent kept, %d stale locks; want 0, %d, 1", len(r.Orphans), len(r.Recent), len(r.StaleLocks), len(dry.Orphans))
	}
	close(hold.release)
	if err := <-backupDone; err != nil {
		t.Fatal(err)
	}
	c := st.open(ctx, nil)
	if _, err := c.Check("latest"); err != nil {
		t.Fatal(err)
	}
	restoresSame(t, c, "latest", files)
}

// TestMaintenanceStaleLock: a lock left by a backup that was killed (its
// timestamp past Kloset's TTL) is reported by a dry run, removed by
// maintenance, and counted; a fresh lock stops maintenance.
func TestMaintenanceStaleLock(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	v := newTestStore(t, reg.Host, "maint/locks").open(context.Background(), nil)
	putLock := func(age time.Duration) objects.MAC {
		l := repository.NewSharedLock("killed-host")
		l.Timestamp = time.Now().Add(-age)
		var buf bytes.Buffer
		if err := l.SerializeToStream(&buf); err != nil {
			t.Fatal(err)
		}
		id := objects.RandomMAC()
		if _, err := v.Repository().PutLock(id, &buf); err != nil {
			t.Fatal(err)
		}
		return id
	}
	fresh := putLock(0)
	if _, err := v.Maintenance(vault.MaintenanceOptions{}); !errors.Is(err, vault.ErrStoreLocked) {
		t.Fatalf("maintenance beside a live lock: %v, want ErrStoreLocked", err)
	}
	if err := v.Repository().DeleteLock(fresh); err != nil {
		t.Fatal(err)
	}
	stale := putLock(repository.LOCK_TTL + time.Minute)
	dry, err := v.Maintenance(vault.MaintenanceOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.StaleLocks) != 1 || dry.StaleLocks[0].ID != stale || dry.StaleLocks[0].Hostname != "killed-host" {
		t.Fatalf("dry run: stale locks %+v, want the one of killed-host", dry.StaleLocks)
	}
	if locks, _ := v.Repository().GetLocks(); len(locks) != 1 {
		t.Fatalf("the dry run changed the locks: %d left, want 1", len(locks))
	}
	r, err := v.Maintenance(vault.MaintenanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.StaleLocks) != 1 || r.LockBytes <= 0 {
		t.Fatalf("maintenance: %d stale locks removed giving back %d bytes; want 1, > 0", len(r.StaleLocks), r.LockBytes)
	}
	if locks, err := v.Repository().GetLocks(); err != nil || len(locks) != 0 {
		t.Fatalf("locks left after maintenance: %d (%v), want 0", len(locks), err)
	}
}

// stopBackupUncommitted backs up n random files of 300 KiB to st from
// another open store, and stops the backup once its packfiles are
// uploaded, before it commits (as kill -9 would): they are orphans.
func stopBackupUncommitted(t *testing.T, st *testStore, n int) {
	t.Helper()
	hold := &holdState{reached: make(chan struct{}), release: make(chan struct{})}
	bctx, cancel := context.WithCancel(context.Background())
	b := st.open(bctx, func(s storage.Store) storage.Store { hold.Store = s; return hold })
	src := filepath.Join(t.TempDir(), "src")
	randomFiles(t, src, n, 300<<10)
	backupDone := make(chan error, 1)
	go func() {
		_, err := b.Backup(src, nil)
		backupDone <- err
	}()
	<-hold.reached
	cancel()
	close(hold.release)
	if err := <-backupDone; err == nil {
		t.Fatal("the stopped backup succeeded")
	}
	b.Close()
}

// TestMaintenanceOrphans: a backup stopped after uploading its packfiles
// (as by kill -9: nothing committed) leaves orphans; maintenance keeps
// them within the grace period and deletes them past it, and the snapshot
// that was committed before still checks and restores.
func TestMaintenanceOrphans(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	st := newTestStore(t, reg.Host, "maint/orphans")
	ctx := context.Background()
	m := st.open(ctx, nil)
	keptDir := filepath.Join(t.TempDir(), "kept")
	kept := randomFiles(t, keptDir, 2, 200<<10)
	if _, err := m.Backup(keptDir, nil); err != nil {
		t.Fatal(err)
	}

	stopBackupUncommitted(t, st, 3)

	r, err := m.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Recent) == 0 || len(r.Orphans) != 0 || r.RecentBytes < 900<<10 {
		t.Fatalf("within the grace period: %d orphans deleted, %d kept (%d bytes); want 0, some (the 900 KiB backed up)", len(r.Orphans), len(r.Recent), r.RecentBytes)
	}
	later := func() time.Time { return time.Now().Add(vault.DefaultGrace + time.Hour) }
	r2, err := m.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Orphans) != len(r.Recent) || len(r2.Recent) != 0 || r2.PackfileBytes <= 0 {
		t.Fatalf("past the grace period: %d orphans deleted (%d bytes), %d kept; want %d, > 0, 0", len(r2.Orphans), r2.PackfileBytes, len(r2.Recent), len(r.Recent))
	}
	left, err := m.Repository().GetPackfiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r2.Orphans {
		if slices.Contains(left, mac) {
			t.Errorf("orphan %x is still in the store", mac[:4])
		}
	}
	if _, err := m.Check("latest"); err != nil {
		t.Fatal(err)
	}
	restoresSame(t, m, "latest", kept)
}

// TestMaintenanceEveryRegistry: on every registry of the suites (delete by
// tag, by digest, or tombstones where DELETE is refused), maintenance
// removes the packfiles only a removed snapshot used, a second pass finds
// nothing more, and the remaining snapshot checks and restores.
func TestMaintenanceEveryRegistry(t *testing.T) {
	for _, f := range registrytest.All(t) {
		t.Run(f.Name, func(t *testing.T) {
			v := newTestStore(t, f.Start(t).Host, "maint/every").open(context.Background(), nil)
			files := backupTwoRemoveFirst(t, v)
			r, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
			if err != nil {
				t.Fatal(err)
			}
			left, err := v.Repository().GetPackfiles()
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Unused) == 0 {
				t.Fatal("nothing removed")
			}
			for _, mac := range r.Unused {
				if slices.Contains(left, mac) {
					t.Errorf("packfile %x is still listed", mac[:4])
				}
			}
			nothingLeftToRemove(t, v, files)
		})
	}
}

// nothingLeftToRemove checks that one more maintenance finds nothing to
// remove, and that the latest snapshot checks and restores files.
func nothingLeftToRemove(t *testing.T, v *vault.Vault, files map[string][]byte) {
	t.Helper()
	again, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Unused)+len(again.Orphans) != 0 {
		t.Errorf("one more pass found %d unused and %d orphan packfiles", len(again.Unused), len(again.Orphans))
	}
	if _, err := v.Check("latest"); err != nil {
		t.Fatal(err)
	}
	restoresSame(t, v, "latest", files)
}

// TestMaintenanceThenBackupAgain: after maintenance deleted a removed
// snapshot's packfiles, backing the same tree up again stores its data
// anew (nothing deduplicates against a deleted packfile), from the same
// open store and from one opened before maintenance ran.
func TestMaintenanceThenBackupAgain(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	st := newTestStore(t, reg.Host, "maint/again")
	v := st.open(context.Background(), nil)
	src := filepath.Join(t.TempDir(), "src")
	files := randomFiles(t, src, 2, 256<<10)
	r, err := v.Backup(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Remove(r.ShortID()); err != nil {
		t.Fatal(err)
	}
	// Opened before maintenance, as by a program that keeps a store open.
	other := st.open(context.Background(), nil)
	if m, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace}); err != nil || len(m.Unused) == 0 {
		t.Fatalf("maintenance: %v, %+v", err, m)
	}
	for name, w := range map[string]*vault.Vault{"the same store": v, "another store": other} {
		again, err := w.Backup(src, nil)
		if err != nil {
			t.Fatal(err)
		}
		if again.BytesStored < 512<<10 {
			t.Errorf("%s: backing the tree up again stored %d bytes: it deduplicated against deleted packfiles", name, again.BytesStored)
		}
		if _, err := w.Check(again.ShortID()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		restoresSame(t, w, again.ShortID(), files)
	}
}

// failDeletes fails every packfile deletion while on is set.
type failDeletes struct {
	storage.Store
	on bool
}

func (f *failDeletes) Delete(ctx context.Context, res storage.StorageResource, mac objects.MAC) error {
	if f.on && res == storage.StorageResourcePackfile {
		return errors.New("injected: the registry went away")
	}
	return f.Store.Delete(ctx, res, mac)
}

// TestMaintenanceInterrupted: a maintenance whose deletions fail (as one
// killed after recording the removals) leaves the packfiles in the store
// and says so; the remaining snapshot is intact, and the next maintenance
// deletes them at once, without waiting for the grace period.
func TestMaintenanceInterrupted(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	fail := &failDeletes{}
	v := newTestStore(t, reg.Host, "maint/interrupted").open(context.Background(), func(s storage.Store) storage.Store { fail.Store = s; return fail })
	files := backupTwoRemoveFirst(t, v)
	fail.on = true
	r, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err == nil || len(r.Failed) != len(r.Unused) || len(r.Unused) == 0 {
		t.Fatalf("maintenance with failing deletions: %v; %d failed of %d", err, len(r.Failed), len(r.Unused))
	}
	fail.on = false
	if _, err := v.Check("latest"); err != nil {
		t.Fatal(err)
	}
	again, err := v.Maintenance(vault.MaintenanceOptions{Grace: vault.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Orphans) != len(r.Unused) || len(again.Recent) != 0 {
		t.Fatalf("the next maintenance deleted %d packfiles and kept %d; want the %d left behind, 0", len(again.Orphans), len(again.Recent), len(r.Unused))
	}
	left, err := v.Repository().GetPackfiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range r.Unused {
		if slices.Contains(left, mac) {
			t.Errorf("packfile %x is still in the store", mac[:4])
		}
	}
	restoresSame(t, v, "latest", files)
}
