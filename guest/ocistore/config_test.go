package ocistore

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// dieAfter lets the first n requests reach the registry, and answers
// every later one 503 until n is raised: a create killed after its n-th
// request leaves what those did, and nothing more.
func dieAfter(n *atomic.Int64) middleware {
	var seen atomic.Int64
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if seen.Add(1) > n.Load() {
				writeError(w, 503, "UNAVAILABLE", "the client was killed")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// TestCreateInterrupted kills a create after each of its requests in
// turn. Whatever it left, a store opens with its configuration or no
// store is there; a second create then either makes its store (nothing
// was left), or is refused naming what was: never may a configuration
// that was opened change.
func TestCreateInterrupted(t *testing.T) {
	first, second := []byte("the first configuration"), []byte("the second configuration")
	for n := int64(0); ; n++ {
		var limit atomic.Int64
		limit.Store(n)
		x := newHarness(t, dieAfter(&limit))
		x.host.CacheRemove(x.store.layoutKey())
		errFirst := x.do(func() error { return x.store.Create(first) })
		limit.Store(1 << 40)

		open := func() []byte {
			s, err := New(x.host, map[string]string{OptionLocation: x.loc})
			x.must("New", err)
			var config []byte
			err = x.do(func() (err error) { config, err = s.Open(); return err })
			if codeOf(err) == abi.ErrNotFound {
				return nil
			}
			x.must("Open", err)
			return config
		}
		opened := open()
		if opened != nil && !bytes.Equal(opened, first) {
			t.Fatalf("killed after %d requests: Open = %q", n, opened)
		}
		if errFirst == nil && opened == nil {
			t.Fatalf("killed after %d requests: the create succeeded, yet no store opens", n)
		}
		s, err := New(x.host, map[string]string{OptionLocation: x.loc})
		x.must("New", err)
		errSecond := x.do(func() error { return s.Create(second) })
		switch {
		case opened != nil:
			wantCode(t, "a create over a store", errSecond, abi.ErrAlreadyExists, "a store already exists")
		case errSecond != nil:
			wantCode(t, "a create after an interrupted one", errSecond, abi.ErrOther, "is running or was interrupted", "tag "+candidatePrefix, "delete that tag")
			if again := open(); again != nil {
				t.Fatalf("killed after %d requests: the refused create left a store: %q", n, again)
			}
		default:
			if again := open(); !bytes.Equal(again, second) {
				t.Fatalf("killed after %d requests: after the second create, Open = %q", n, again)
			}
		}
		t.Logf("killed after %d requests: first create %v; opened %q; second create %v", n, errFirst, opened, errSecond)
		if errFirst == nil {
			return
		}
		if n > 50 {
			t.Fatal("the create never finished")
		}
	}
}

// TestCreateRefusesOthers: a create writes nothing into a repository
// that holds another tool's tags or a store of Plakar's upstream oci
// plugin, and says which.
func TestCreateRefusesOthers(t *testing.T) {
	x := newHarness(t)
	x.must("put", x.put(abi.KindPackfile, testMAC(1), []byte("not ours")))
	err := x.do(func() error { return x.store.Create([]byte("config")) })
	wantCode(t, "create over foreign tags", err, abi.ErrOther, "already holds tags that no create of a store wrote", `"packfile-0102`, "pick another path")

	y := newHarness(t)
	y.store.lay = upstreamLayout
	y.must("put", y.do(func() error {
		_, err := y.store.Put(abi.KindState, testMAC(2), y.host.AddReader(strings.NewReader("state")))
		return err
	}))
	y.must("CONFIG", y.do(func() error {
		c := y.store.newCall("test ", "", "")
		blob, err := c.uploadBytes([]byte("config"))
		if err != nil {
			return err
		}
		return c.putManifest("CONFIG", y.store.lay.appendManifest(nil, abi.KindState, testMAC(0), blob))
	}))
	s, err := New(y.host, map[string]string{OptionLocation: y.loc})
	y.must("New", err)
	err = y.do(func() error { return s.Create([]byte("config")) })
	wantCode(t, "create over an upstream store", err, abi.ErrAlreadyExists, "upstream oci plugin is already at", "no create is needed")
	var config []byte
	y.must("Open", y.do(func() (err error) { config, err = s.Open(); return err }))
	if string(config) != "config" || s.lay != upstreamLayout {
		t.Errorf("Open of an upstream store = %q, layout %v", config, s.lay.name)
	}
}
