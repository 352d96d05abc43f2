package ocistore

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestListLastMustBeTag lists on zot's tag lists, where a last that is
// not a tag is a 404 with an empty body: every kind is listed, deleted
// objects (tombstones, where DELETE is refused) are left out, and what the
// store learned at its first list (the create's candidates) serves every
// later one, of any instance of the store, without a request asking for
// a last that is not a tag.
func TestListLastMustBeTag(t *testing.T) {
	for _, tc := range []struct {
		name string
		mws  []middleware
	}{
		{"zot", []middleware{registrytest.ZotTags}},
		{"zot refusing DELETE", []middleware{registrytest.ZotTags, refuseDelete}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newHarness(t, tc.mws...)
			x.store.pageSize = 4
			x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
			want := map[abi.Kind][]abi.MAC{}
			for _, k := range abi.Kinds() {
				for i := range 6 {
					mac := testMAC(byte(i*20 + int(k)))
					x.must("Put", x.put(k, mac, []byte{byte(i)}))
					if i%3 == 1 {
						x.must("Delete", x.del(k, mac))
						continue
					}
					want[k] = append(want[k], mac)
				}
			}
			for _, k := range abi.Kinds() {
				if got := x.list(k); !slices.Equal(got, want[k]) {
					t.Errorf("List(%s) = %x, want %x", k, got, want[k])
				}
			}
			// The create's list of candidates asked for
			// last=config-candidate- once, and learned.
			if n := countNotTagLasts(x.host.takeRequests()); n != 1 {
				t.Errorf("%d requests with a last that is not a tag, want 1 (the create's list of candidates)", n)
			}
			// Another instance of the store, sharing the host's cache.
			other, err := New(x.host, map[string]string{OptionLocation: x.loc})
			if err != nil {
				t.Fatal(err)
			}
			x.store = other
			x.store.pageSize = 4
			for _, k := range abi.Kinds() {
				if got := x.list(k); !slices.Equal(got, want[k]) {
					t.Errorf("another instance: List(%s) = %x, want %x", k, got, want[k])
				}
			}
			if reqs := x.host.takeRequests(); countNotTagLasts(reqs) != 0 {
				t.Errorf("another instance asked for a last that is not a tag: %q", reqs)
			}
		})
	}
}

// countNotTagLasts counts the tag list requests whose last is a kind's
// prefix, which zot answers 404.
func countNotTagLasts(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.Contains(r, "/tags/list?") && (strings.HasSuffix(strings.Fields(r)[1], "-") || strings.HasSuffix(strings.Fields(r)[1], "%2D")) {
			n++
		}
	}
	return n
}

// TestListNotFound checks that a 404 to a tag list is an empty store only
// when the registry says the repository is unknown.
func TestListNotFound(t *testing.T) {
	answer := func(status int, body string) middleware {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !isTagList(r) {
					next.ServeHTTP(w, r)
					return
				}
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(status)
				w.Write([]byte(body))
			})
		}
	}
	for _, tc := range []struct {
		name  string
		mw    middleware
		empty bool
		want  string
	}{
		{"NAME_UNKNOWN", answer(404, `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`), true, ""},
		{"Harbor's NOT_FOUND", answer(404, `{"errors":[{"code":"NOT_FOUND","message":"repository team/backups not found"}]}`), true, ""},
		{"empty 404", answer(404, ``), false, "answered 404 Not Found to the tag list from its start"},
		{"MANIFEST_UNKNOWN", answer(404, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`), false, "404 MANIFEST_UNKNOWN: manifest unknown"},
		{"an HTML page", answer(404, `<html>Not here</html>`), false, "404 Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newHarness(t, tc.mw)
			var macs []abi.MAC
			err := x.do(func() (err error) {
				macs, err = x.store.List(abi.KindState)
				return err
			})
			if tc.empty {
				if err != nil || len(macs) != 0 {
					t.Fatalf("List = %x, %v; want nothing", macs, err)
				}
				return
			}
			wantCode(t, "List", err, abi.ErrOther, tc.want, x.host.base[len("http://"):])
		})
	}
}

// TestListUnsortedPages lists on Quay's tag lists: pages of at most 100
// in the order of the registry's ids, last ignored, opaque links. A page
// that starts with a tag past the prefix says nothing of the next ones.
func TestListUnsortedPages(t *testing.T) {
	x := newHarness(t, registrytest.QuayTags)
	var want []abi.MAC
	for i := range 150 {
		mac := testMAC(byte(i))
		x.must("Put", x.put(abi.KindPackfile, mac, []byte{byte(i)}))
		want = append(want, mac)
	}
	lock := testMAC(7)
	x.must("Put", x.put(abi.KindLock, lock, nil))
	if got := x.list(abi.KindLock); !slices.Equal(got, []abi.MAC{lock}) {
		t.Errorf("List(lock) = %x, want %x", got, lock)
	}
	if got := x.list(abi.KindPackfile); !slices.Equal(got, want) {
		t.Errorf("List(packfile) = %d MACs, want %d", len(got), len(want))
	}
}
