package vault_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVault drives the package's API over the oci store on a real
// registry: create, open (and refuse a wrong passphrase), back up, list,
// read, restore, back up again (nothing read), check, describe, remove.
func TestVault(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/vault/test"}
	pass := []byte("vault test passphrase")
	ctx := context.Background()

	config, err := vault.Create(ctx, cfg, pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	if config.Encryption == nil || config.Compression == nil {
		t.Fatalf("the store is not encrypted and compressed: %+v", config)
	}
	if _, err := vault.Create(ctx, cfg, pass, nil); !errors.Is(err, vault.ErrStoreExists) {
		t.Errorf("creating again: %v, want ErrStoreExists", err)
	}
	if _, err := vault.Open(ctx, cfg, []byte("wrong"), nil); !errors.Is(err, vault.ErrWrongPassphrase) {
		t.Errorf("opening with a wrong passphrase: %v, want ErrWrongPassphrase", err)
	}
	if _, err := vault.Open(ctx, cfg, nil, nil); !errors.Is(err, vault.ErrNeedPassphrase) {
		t.Errorf("opening without a passphrase: %v, want ErrNeedPassphrase", err)
	}
	if _, err := vault.Open(ctx, map[string]string{"location": cfg["location"] + "-none"}, pass, nil); !errors.Is(err, vault.ErrNoStore) {
		t.Errorf("opening where there is no store: %v, want ErrNoStore", err)
	}

	var fileEvents atomic.Int64
	v, err := vault.Open(ctx, cfg, pass, &vault.Options{Events: func(e vault.Event) {
		if e.Type == "file.ok" {
			fileEvents.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Configuration().RepositoryID != config.RepositoryID {
		t.Fatalf("opened %s, created %s", v.Configuration().RepositoryID, config.RepositoryID)
	}

	src := filepath.Join(t.TempDir(), "src")
	files := map[string]string{
		"a.txt":            "alpha\n",
		"dir/b.txt":        strings.Repeat("bravo\n", 10000),
		"dir/sub/c.txt":    "charlie\n",
		"dir/sub/empty.md": "",
	}
	writeFiles(t, src, files)
	r, err := v.Backup(src, &vault.BackupOptions{Tags: []string{"test"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Files != 4 || r.Size != 6+60000+8 || r.BytesRead != int64(r.Size) || r.BytesStored == 0 || r.NumErrors != 0 {
		t.Errorf("backup result %+v", r)
	}
	if fileEvents.Load() != 4 {
		t.Errorf("%d file.ok events, want 4", fileEvents.Load())
	}
	if p := v.Progress(); p.Op != "" {
		t.Errorf("progress after the backup: %+v", p)
	}

	list, err := v.Snapshots()
	if err != nil || len(list) != 1 || list[0].ID != r.ID || list[0].Root != src || list[0].Files != 4 {
		t.Fatalf("snapshots: %+v, %v", list, err)
	}
	for _, ref := range []string{r.ShortID(), r.ShortID()[:3], "latest", strings.ToUpper(r.ShortID())} {
		if id, err := v.Resolve(ref); err != nil || id != r.ID {
			t.Errorf("Resolve(%q) = %x, %v", ref, id, err)
		}
	}
	other := "0"
	if strings.HasPrefix(r.ShortID(), "0") {
		other = "1"
	}
	for _, ref := range []string{"zz", "", other} {
		if _, err := v.Resolve(ref); !errors.Is(err, vault.ErrSnapshotNotFound) {
			t.Errorf("Resolve(%q): %v, want ErrSnapshotNotFound", ref, err)
		}
	}

	entries, err := v.Files(r.ShortID(), "", false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, filepath.Base(e.Path))
	}
	if strings.Join(names, " ") != "a.txt dir" {
		t.Errorf("files of the root: %v", names)
	}
	entries, err = v.Files(r.ShortID(), "dir", true)
	if err != nil || len(entries) != 4 {
		t.Errorf("files under dir: %+v, %v", entries, err)
	}
	if _, err := v.Files(r.ShortID(), "nope", false); !errors.Is(err, vault.ErrPathNotFound) {
		t.Errorf("files of a missing path: %v", err)
	}
	var buf bytes.Buffer
	if n, err := v.Cat(r.ShortID(), src+"/dir/b.txt", &buf); err != nil || n != 60000 || buf.String() != files["dir/b.txt"] {
		t.Errorf("cat: %d bytes, %v", n, err)
	}

	dest := filepath.Join(t.TempDir(), "restored")
	rr, err := v.Restore(r.ShortID(), "", dest, false)
	if err != nil || rr.Files != 4 || rr.NumErrors != 0 {
		t.Fatalf("restore: %+v, %v", rr, err)
	}
	for name, content := range files {
		if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(b) != content {
			t.Errorf("restored %s: %d bytes, %v", name, len(b), err)
		}
	}
	if _, err := v.Restore(r.ShortID(), "", dest, false); !errors.Is(err, vault.ErrTargetNotEmpty) {
		t.Errorf("restoring into a non-empty directory: %v", err)
	}
	one := filepath.Join(t.TempDir(), "one")
	if _, err := v.Restore(r.ShortID(), "dir/sub/c.txt", one, false); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(one, "c.txt")); err != nil || string(b) != "charlie\n" {
		t.Errorf("restored one file: %q, %v", b, err)
	}

	// Nothing changed: nothing is read again.
	r2, err := v.Backup(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.BytesRead != 0 || r2.Files != 4 {
		t.Errorf("second backup: %+v", r2)
	}

	cr, err := v.Check(r.ShortID())
	if err != nil || cr.Files != 4 || cr.Bytes != int64(r.Size) {
		t.Errorf("check: %+v, %v", cr, err)
	}

	info, err := v.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Snapshots != 2 || info.Objects[storage.StorageResourcePackfile] == 0 || info.Objects[storage.StorageResourceState] < 2 ||
		info.Objects[storage.StorageResourceLock] != 0 || info.StoreSize == 0 {
		t.Errorf("info: %+v", info)
	}

	if id, err := v.Remove(r.ShortID()); err != nil || id != r.ID {
		t.Fatalf("remove: %x, %v", id, err)
	}
	if list, err := v.Snapshots(); err != nil || len(list) != 1 || list[0].ID != r2.ID {
		t.Errorf("snapshots after remove: %+v, %v", list, err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	st := v.Stats()
	if puts, dels := st.Calls[vault.StoreOp{Method: "Put", Resource: storage.StorageResourceLock}], st.Calls[vault.StoreOp{Method: "Delete", Resource: storage.StorageResourceLock}]; puts == 0 || dels < 2 {
		t.Errorf("locks: %d puts, %d deletes; %s", puts, dels, st)
	}
}

// TestBackupListedBack checks that a backup the store does not list back
// fails, saying so, and that check then reports the disagreement, while
// on a store that holds nothing it finds nothing wrong.
func TestBackupListedBack(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	closeFront, err := registrytest.Front(reg, "hides-states", registrytest.HideTags("state-"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFront)
	v := createTestVault(t, "oci://"+reg.Host+"/vault/hidden")
	if err := v.NoSnapshot(); err != nil {
		t.Errorf("NoSnapshot on a new store: %v, want nil", err)
	}

	src := t.TempDir()
	writeFiles(t, src, map[string]string{"a.txt": "alpha\n"})
	_, err = v.Backup(src, nil)
	if !errors.Is(err, vault.ErrNotListed) {
		t.Fatalf("backup on a registry that hides it: %v, want ErrNotListed", err)
	}
	for _, want := range []string{"the registry accepted snapshot ", " but does not list it back: the store lists no state at all; nothing is lost, but the store cannot read it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("backup error %q lacks %q", err, want)
		}
	}
	err = v.NoSnapshot()
	if !errors.Is(err, vault.ErrListingDisagrees) || !strings.Contains(err.Error(), "the store lists no snapshot, but ") || !strings.Contains(err.Error(), " packfile(s) and 0 state(s)") {
		t.Errorf("NoSnapshot after the hidden backup: %v, want ErrListingDisagrees naming the packfiles and 0 states", err)
	}
}
