package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/encryption"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"

	// Kloset's fs store, the reference of TestKlosetEndToEndFSReference.
	_ "github.com/PlakarKorp/integrations/fs/storage"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// The generated part of the source: e2eFiles files of random sizes up to
// e2eMaxSize and one file of e2eBigSize, from a fixed seed.
const (
	e2eSeed    = 20240611
	e2eFiles   = 200
	e2eMaxSize = 1 << 20
	e2eBigSize = 20 << 20
)

// TestKlosetEndToEnd drives Kloset itself over the oci store, on a real
// registry (distribution v3 with deletes enabled), through package vault
// (as ocibackup does, the way the plakar CLI would): create an encrypted
// repository, back up, list, restore, back up again and see
// deduplication, reopen from scratch, and refuse a wrong passphrase.
func TestKlosetEndToEnd(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	testKlosetEndToEnd(t, map[string]string{"location": "oci://" + reg.Host + "/e2e/repo"})
}

// TestKlosetEndToEndDoubles runs the same on the test doubles of other
// registries (registrytest), whose quirks change what the store does.
func TestKlosetEndToEndDoubles(t *testing.T) {
	for name, start := range map[string]func(testing.TB) *registrytest.Registry{
		registrytest.NameZot:    registrytest.Zot,
		registrytest.NameQuay:   registrytest.Quay,
		registrytest.NameHarbor: registrytest.Harbor,
		registrytest.NameGHCR:   registrytest.GHCR,
	} {
		t.Run(name, func(t *testing.T) {
			reg := start(t)
			testKlosetEndToEnd(t, map[string]string{"location": "oci://" + reg.Host + "/e2e/repo"})
		})
	}
}

func testKlosetEndToEnd(t *testing.T, storeConfig map[string]string) {
	start := time.Now()
	step := func(format string, args ...any) {
		t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	ctx := context.Background()
	passphrase := []byte("correct horse battery staple, for the e2e test")

	// The source, as one snapshot: generated files, and a copy of the
	// fixture tree in testdata/e2e (a text file, an empty file, a binary
	// file, an executable, nested directories, symlinks to a file and to a
	// directory).
	gen := t.TempDir()
	randBytes, err := generateFiles(gen, e2eSeed, e2eFiles, e2eMaxSize, e2eBigSize)
	if err != nil {
		t.Fatalf("generating the source files: %v", err)
	}
	if err := copyFixture(filepath.Join("testdata", "e2e"), filepath.Join(gen, "fixture")); err != nil {
		t.Fatalf("copying the fixture: %v", err)
	}
	src, err := newSourceTree(gen, randBytes)
	if err != nil {
		t.Fatalf("scanning the source: %v", err)
	}
	step("source: %d paths, %d bytes generated in %s", len(src.entries), randBytes, gen)

	// Create the repository, as `plakar create` does.
	created, err := vault.Create(ctx, storeConfig, passphrase, nil)
	if err != nil {
		t.Fatalf("plakar create: %v", err)
	}
	if created.Encryption == nil {
		t.Fatal("the created configuration is not encrypted")
	}
	step("created the repository %s at %s", created.RepositoryID, storeConfig["location"])

	// A second create at the same location must fail, and leave the first
	// repository as it was (checked when it is opened below).
	if _, err := vault.Create(ctx, storeConfig, []byte("another passphrase"), nil); !errors.Is(err, vault.ErrStoreExists) {
		t.Errorf("creating a repository again at %s: %v, want %v", storeConfig["location"], err, vault.ErrStoreExists)
	} else {
		step("creating again fails as it must: %v", err)
	}

	// Open it: the vault's store counts what it receives.
	v := openVault(t, storeConfig, passphrase, nil)
	counter := v.Store()
	if got := v.Configuration().RepositoryID; got != created.RepositoryID {
		t.Fatalf("the opened repository is %s, want %s", got, created.RepositoryID)
	}
	if v.Configuration().Encryption == nil {
		t.Fatal("the opened repository is not encrypted")
	}
	v.checkClean(t, "open")

	// First backup.
	before, packfiles := counter.Stats(), len(counter.PackfilesPut())
	id1, err := v.backup(src)
	if err != nil {
		t.Fatalf("first backup: %v", err)
	}
	first, firstPackfiles := counter.Stats().Since(before), counter.PackfilesPut()[packfiles:]
	v.checkClean(t, "first backup")
	step("first backup %x: %s", id1[:4], first)
	if first.Calls[vault.StoreOp{Method: "Put", Resource: storage.StorageResourcePackfile}] == 0 || first.Calls[vault.StoreOp{Method: "Put", Resource: storage.StorageResourceState}] == 0 {
		t.Fatalf("the first backup put no packfile or no state: %s", first)
	}
	if n := first.PutBytes[storage.StorageResourcePackfile]; n < src.randBytes {
		t.Errorf("the first backup uploaded %d bytes of packfiles, less than the %d bytes of random content", n, src.randBytes)
	}

	// plakar ls: one snapshot, holding every path of the source. The
	// listing has every path below /; the restore below checks / too.
	want := maps.Clone(src.entries)
	delete(want, "/")
	if ids := v.snapshotIDs(t); !slices.Equal(ids, []objects.MAC{id1}) {
		t.Fatalf("snapshots after the first backup: %x, want [%x]", ids, id1)
	}
	files, err := v.listFiles(id1)
	if err != nil {
		t.Fatalf("listing the files of %x: %v", id1, err)
	}
	if diffs := compareEntries(want, files); len(diffs) > 0 {
		t.Fatalf("the snapshot differs from the source:\n%s", diffReport(diffs))
	}
	v.checkClean(t, "ls")
	step("ls: 1 snapshot, %d paths as in the source", len(files))

	// plakar restore into a new directory: the same tree, byte for byte.
	before = counter.Stats()
	v.restoreSame(t, id1, src)
	step("restore: identical; %s", counter.Stats().Since(before))

	// Second backup of the unchanged source: (almost) nothing to upload.
	before, packfiles = counter.Stats(), len(counter.PackfilesPut())
	id2, err := v.backup(src)
	if err != nil {
		t.Fatalf("second backup: %v", err)
	}
	second, secondPackfiles := counter.Stats().Since(before), counter.PackfilesPut()[packfiles:]
	v.checkClean(t, "second backup")
	step("second backup %x: %s", id2[:4], second)

	// Each backup took a lock, which Kloset deletes in the background once
	// the snapshot is closed.
	deleteLock := vault.StoreOp{Method: "Delete", Resource: storage.StorageResourceLock}
	if !counter.WaitCalls(deleteLock, 2, 10*time.Second) {
		t.Errorf("Kloset did not delete the locks of the two backups: %s", counter.Stats())
	}
	if n := counter.Stats().Errors[deleteLock]; n > 0 {
		t.Errorf("%d lock deletions failed", n)
	}

	// Deduplication, measured on the bytes the store received for
	// packfiles. Kloset pads every packfile with up to 2×512 KiB of random
	// bytes, and the second backup still writes a packfile or two (the
	// snapshot's header, and the directory entries of the root's
	// ancestors, whose times move): padding is left out, or it alone could
	// reach 1%.
	pad1, err := packfilePadding(v.Repository(), firstPackfiles)
	if err != nil {
		t.Fatal(err)
	}
	pad2, err := packfilePadding(v.Repository(), secondPackfiles)
	if err != nil {
		t.Fatal(err)
	}
	v.checkClean(t, "reading the packfiles back")
	p1, p2 := first.PutBytes[storage.StorageResourcePackfile], second.PutBytes[storage.StorageResourcePackfile]
	net1, net2 := p1-pad1, p2-pad2
	step("deduplication: packfiles of the first backup %d bytes (%d of padding), of the second %d bytes (%d of padding)", p1, pad1, p2, pad2)
	if net2*100 >= net1 {
		t.Errorf("the second backup uploaded %d bytes of packfiles besides padding, not less than 1%% of the first's %d", net2, net1)
	} else {
		step("deduplication: the second backup uploaded %.3f%% of what the first did, padding aside (%.3f%% with it)",
			100*float64(net2)/float64(net1), 100*float64(p2)/float64(p1))
	}
	both := sortedMACs(id1, id2)
	if ids := v.snapshotIDs(t); !slices.Equal(ids, both) {
		t.Fatalf("snapshots after the second backup: %x, want %x", ids, both)
	}
	files2, err := v.listFiles(id2)
	if err != nil {
		t.Fatalf("listing the files of %x: %v", id2, err)
	}
	if diffs := compareEntries(want, files2); len(diffs) > 0 {
		t.Fatalf("the second snapshot differs from the source:\n%s", diffReport(diffs))
	}
	v.checkClean(t, "ls after the second backup")

	// Reopen from scratch: a new vault with an empty cache, a new store
	// instance, the passphrase. The configuration and both snapshots come
	// back from the store alone.
	v2 := openVault(t, storeConfig, passphrase, nil)
	if got := v2.Configuration().RepositoryID; got != created.RepositoryID {
		t.Fatalf("the reopened repository is %s, want %s", got, created.RepositoryID)
	}
	ids := v2.snapshotIDs(t)
	if !slices.Equal(ids, both) {
		t.Fatalf("snapshots of the reopened repository: %x, want %x", ids, both)
	}
	locks, err := v2.Repository().GetLocks()
	if err != nil {
		t.Fatalf("listing the locks: %v", err)
	}
	if len(locks) != 0 {
		t.Errorf("locks left after both backups: %x", locks)
	}
	files2, err = v2.listFiles(id2)
	if err != nil {
		t.Fatalf("listing the files of %x in the reopened repository: %v", id2, err)
	}
	if diffs := compareEntries(want, files2); len(diffs) > 0 {
		t.Fatalf("the second snapshot, reopened, differs from the source:\n%s", diffReport(diffs))
	}
	big := filepath.Join(gen, "big", "big.bin")
	var got bytes.Buffer
	if _, err := v2.Cat(ref(id2), filepath.ToSlash(big), &got); err != nil {
		t.Fatalf("reading %s from the reopened repository: %v", big, err)
	}
	wantBig, err := os.ReadFile(big)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), wantBig) {
		t.Fatalf("%s read from the reopened repository differs from the source (%d bytes, want %d)", big, got.Len(), len(wantBig))
	}
	v2.checkClean(t, "reopen")
	step("reopened from scratch: %d snapshots, %s read back identical", len(ids), big)

	// A wrong passphrase is refused when the repository is opened, with an
	// error that says so.
	_, err = vault.Open(ctx, storeConfig, []byte("not the passphrase"), nil)
	if !errors.Is(err, vault.ErrWrongPassphrase) {
		t.Fatalf("opening with a wrong passphrase: %v, want %v", err, vault.ErrWrongPassphrase)
	}
	if !strings.Contains(err.Error(), "wrong passphrase") || !strings.Contains(err.Error(), storeConfig["location"]) {
		t.Errorf("the error for a wrong passphrase does not say what is wrong where: %q", err)
	}
	step("wrong passphrase: %v", err)
	if _, err := vault.Open(ctx, storeConfig, nil, nil); !errors.Is(err, vault.ErrNeedPassphrase) {
		t.Errorf("opening without a passphrase: %v, want %v", err, vault.ErrNeedPassphrase)
	}
	// Past the canary, Kloset itself refuses a wrong key: the stored
	// configuration is authenticated with the key.
	wrapped, err := v2.Store().Open(ctx)
	if err != nil {
		t.Fatalf("reading the configuration: %v", err)
	}
	config, err := storage.NewConfigurationFromWrappedBytes(wrapped)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, err := encryption.DeriveKey(config.Encryption.KDFParams, []byte("not the passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repository.New(v2.Repository().AppContext(), wrongKey, v2.Store(), wrapped); err == nil {
		t.Error("repository.New accepted a key derived from a wrong passphrase")
	} else {
		step("repository.New with a wrong key: %v", err)
	}
	v2.checkClean(t, "wrong passphrase")
}

// TestKlosetEndToEndFSReference runs the same scenario on Kloset's own fs
// store. It is the reference: when it passes and TestKlosetEndToEnd fails,
// the oci store is at fault, not the way the test drives Kloset.
func TestKlosetEndToEndFSReference(t *testing.T) {
	testKlosetEndToEnd(t, map[string]string{"location": "fs://" + filepath.Join(t.TempDir(), "repo")})
}
