package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/vault"
)

// wantZerosRSS bounds the peak RSS of a restore or cat of a zero-filled
// file, whatever its size.
const wantZerosRSS = 700e6

// zerosRounds: each round restores and cats the whole file once.
const zerosRounds = 2

// zeros restores and cats a zero-filled file of 1 GiB through vault, as
// ocibackup does: the content that compresses best, where Kloset's own
// reader decoded the whole file at once (2.7 GB of RSS for 1 GiB). Its
// peak RSS is the point; the file's bytes count for the rate.
func (b *bench) zeros() error {
	size := int64(b.scaled(1<<30, 16<<20))
	src := b.path("zeros-src")
	file := filepath.Join(src, "zero")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(file, size); err != nil {
		return err
	}
	cfg := map[string]string{"location": "oci://" + b.reg.Host + "/bench/zeros"}
	pass := []byte("ocistore benchmark")
	if _, err := vault.Create(b.ctx, cfg, pass, nil); err != nil {
		return err
	}
	v, err := vault.Open(b.ctx, cfg, pass, &vault.Options{CacheDir: b.path("zeros-cache")})
	if err != nil {
		return err
	}
	defer v.Close()
	r, err := v.Backup(src, nil)
	if err != nil {
		return err
	}
	fmt.Printf("  a file of %s zeros\n", mib(size))
	t := vaultTarget{v}
	for round := range zerosRounds {
		dest, err := b.restoreRoot(fmt.Sprintf("zeros-restore-%d", round))
		if err != nil {
			return err
		}
		err = b.slice("zeros restore", wasm, t, 1, func() (int64, error) {
			rr, err := v.Restore(r.ShortID(), "", dest, true)
			if err == nil && rr.Bytes != size {
				err = fmt.Errorf("restored %d bytes, want %d", rr.Bytes, size)
			}
			return size, err
		})
		os.RemoveAll(dest)
		if err != nil {
			return err
		}
		err = b.slice("zeros cat", wasm, t, 1, func() (int64, error) {
			n, err := v.Cat(r.ShortID(), "zero", io.Discard)
			if err == nil && n != size {
				err = fmt.Errorf("cat gave %d bytes, want %d", n, size)
			}
			return size, err
		})
		if err != nil {
			return err
		}
	}
	b.summary("zeros restore", []string{wasm})
	b.summary("zeros cat", []string{wasm})
	return nil
}

// vaultTarget is a vault, measured whole: the requests are the store's
// calls (Kloset's Gets), not HTTP requests.
type vaultTarget struct{ v *vault.Vault }

func (t vaultTarget) put(context.Context, objects.MAC, []byte) error { return errors.ErrUnsupported }
func (t vaultTarget) get(context.Context, objects.MAC, uint64, uint32, []byte) (int64, error) {
	return 0, errors.ErrUnsupported
}
func (t vaultTarget) list(context.Context) (int, error) { return 0, errors.ErrUnsupported }
func (t vaultTarget) guestMemory() (uint64, int)        { return 0, 0 }
func (t vaultTarget) close(context.Context) error       { return nil }

func (t vaultTarget) requests() counts {
	c := counts{Method: map[string]int64{}}
	for op, n := range t.v.Stats().Calls {
		c.Method[op.Method] += int64(n)
		c.Total += int64(n)
	}
	return c
}
