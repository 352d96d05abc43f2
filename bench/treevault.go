package main

import (
	"fmt"
	"os"

	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/vault"
)

// treeOcibackup is restore-tree the way ocibackup runs it: vault, its own
// exporter (restorefs.go), and Kloset's cache kept between the commands,
// as ocibackup keeps it on one machine (the other variants start each
// phase with a new one, as on another machine); each phase still starts
// with an empty read-ahead cache.
const treeOcibackup = "ocibackup"

// ocibackupTarget is a vault of a phase, its requests counted by a proxy
// in front of the registry (vaultTarget counts the store's calls).
type ocibackupTarget struct {
	vaultTarget
	proxy   *faultproxy.Proxy
	cnt     *counter
	windows string
}

func (t *ocibackupTarget) requests() counts   { return proxyCounts(t.proxy, t.cnt) }
func (t *ocibackupTarget) windowsDir() string { return t.windows }

// treeVault backs src up, then restores and checks it, through vault.
// Vault backs up one directory: at a scale below 1, where the tree is a
// few of src's directories, the variant is left out.
func (b *bench) treeVault(roots []string, want int64) error {
	if len(roots) != 1 {
		fmt.Println("  tree ocibackup: left out below scale 1 (vault backs up one directory)")
		return nil
	}
	proxy, err := faultproxy.New(b.reg.URL)
	if err != nil {
		return err
	}
	defer proxy.Close()
	b.repos++
	location := fmt.Sprintf("oci://%s/bench/tree-%d", proxy.Host, b.repos)
	pass := []byte("ocistore benchmark")
	cache := b.path("tree-ocibackup-cache")
	cnt := &counter{}
	if _, err := vault.Create(b.ctx, map[string]string{"location": location}, pass, nil); err != nil {
		return err
	}
	proxy.Requests() // the create's
	// phase is the target of a phase; open opens its vault, as a new
	// ocibackup command does.
	phase := func(name string) *ocibackupTarget {
		return &ocibackupTarget{proxy: proxy, cnt: cnt, windows: b.path("readahead-ocibackup-" + name)}
	}
	open := func(t *ocibackupTarget) (err error) {
		t.v, err = vault.Open(b.ctx, map[string]string{"location": location, "readahead_cache_dir": t.windows}, pass, &vault.Options{CacheDir: cache})
		return err
	}
	closeVault := func(t *ocibackupTarget) {
		if t.v != nil {
			t.v.Close()
		}
	}

	t := phase("backup")
	if err := open(t); err != nil {
		return err
	}
	var id string
	err = b.treeSlice("backup", treeOcibackup, t, func() error {
		r, err := t.v.Backup(roots[0], nil)
		if err == nil {
			id = r.ShortID()
		}
		return err
	})
	closeVault(t)
	if err != nil {
		return err
	}

	dest, err := b.restoreRoot("tree-restore-ocibackup")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dest)
	t = phase("restore")
	err = b.treeSlice("restore", treeOcibackup, t, func() error {
		if err := open(t); err != nil {
			return err
		}
		r, err := t.v.Restore(id, "", dest, false)
		if err == nil && (r.NumErrors > 0 || r.Bytes != want) {
			err = fmt.Errorf("restored %d bytes with %d errors, want %d bytes", r.Bytes, r.NumErrors, want)
		}
		return err
	})
	closeVault(t)
	if err != nil {
		return err
	}
	t = phase("check")
	err = b.treeSlice("check", treeOcibackup, t, func() error {
		if err := open(t); err != nil {
			return err
		}
		r, err := t.v.Check(id)
		if err == nil && r.NumErrors > 0 {
			err = fmt.Errorf("check found %d errors: %v", r.NumErrors, r.Errors)
		}
		return err
	})
	closeVault(t)
	return err
}
