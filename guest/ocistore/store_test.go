package ocistore

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

func TestNewOptions(t *testing.T) {
	h := newTestHost(t, "http://127.0.0.1:1")
	_, err := New(h, map[string]string{"location": "oci://reg/x", "username": "u", "colour": "red"})
	wantCode(t, "unknown options", err, abi.ErrInvalidConfig, `"colour", "username"`, "location and repository_prefix")
	_, err = New(h, map[string]string{})
	wantCode(t, "no location", err, abi.ErrInvalidConfig, "location option is missing")
	_, err = New(h, map[string]string{"location": "oci://reg/My_Repo"})
	wantCode(t, "bad location", err, abi.ErrInvalidConfig, `repository "My_Repo" must be lowercase`)
	s, err := New(h, map[string]string{"location": "oci://reg/backups", "repository_prefix": "team"})
	if err != nil || s.Location().Repository != "team/backups" {
		t.Fatalf("New = %v, %v", s, err)
	}
	if m, err := s.Mode(); err != nil || m != abi.AccessRead|abi.AccessWrite {
		t.Errorf("Mode = %v, %v", m, err)
	}
}

func TestStore(t *testing.T) {
	x := newHarness(t)
	s := x.store

	x.must("Ping", x.do(s.Ping))
	_, err := s.Open()
	x.host.endCall()
	wantCode(t, "Open before Create", err, abi.ErrNotFound, "no store at "+x.loc+": create it first")
	if macs := x.list(abi.KindPackfile); len(macs) != 0 {
		t.Errorf("List of a repository never pushed = %x", macs)
	}

	config := []byte(`{"version":"1.1.0","repository_id":"x"}`)
	x.must("Create", x.do(func() error { return s.Create(config) }))
	err = x.do(func() error { return s.Create(config) })
	wantCode(t, "second Create", err, abi.ErrAlreadyExists, "a store already exists at "+x.loc+"; pick another path")
	var got []byte
	x.must("Open", x.do(func() (err error) { got, err = s.Open(); return err }))
	if !bytes.Equal(got, config) {
		t.Errorf("Open = %q, want %q", got, config)
	}

	// Two packfiles with the same bytes share a blob, not a manifest.
	data := bytes.Repeat([]byte("0123456789"), 1000)
	p1, p2, st1, lk := testMAC(1), testMAC(2), testMAC(3), testMAC(4)
	x.must("Put p1", x.put(abi.KindPackfile, p1, data))
	x.must("Put p2", x.put(abi.KindPackfile, p2, data))
	x.must("Put state", x.put(abi.KindState, st1, []byte("state")))
	x.must("Put lock", x.put(abi.KindLock, lk, []byte("lock 1")))
	x.must("Put empty", x.put(abi.KindECCState, st1, nil))

	for _, tt := range []struct {
		k    abi.Kind
		want []abi.MAC
	}{
		{abi.KindPackfile, []abi.MAC{p1, p2}},
		{abi.KindState, []abi.MAC{st1}},
		{abi.KindLock, []abi.MAC{lk}},
		{abi.KindECCPackfile, nil},
		{abi.KindECCState, []abi.MAC{st1}},
	} {
		if got := x.list(tt.k); !slices.Equal(got, tt.want) {
			t.Errorf("List(%s) = %x, want %x", tt.k, got, tt.want)
		}
	}

	// Whole objects and ranges.
	x.host.takeRequests()
	if b, err := x.get(abi.KindPackfile, p1, nil); err != nil || !bytes.Equal(b, data) {
		t.Errorf("Get p1 = %d bytes, %v", len(b), err)
	}
	if reqs := x.host.takeRequests(); len(reqs) != 1 {
		t.Errorf("Get with a warm cache made %d requests, want 1: %q", len(reqs), reqs)
	}
	if b, err := x.get(abi.KindECCState, st1, nil); err != nil || len(b) != 0 {
		t.Errorf("Get empty = %q, %v", b, err)
	}
	for _, r := range []struct {
		off  uint64
		n    uint32
		want []byte
	}{
		{0, 10, data[:10]},
		{1234, 100, data[1234:1334]},
		{9990, 10, data[9990:]},
		{9995, 100, data[9995:]}, // clipped at the end
		{500, 0, nil},
	} {
		b, err := x.get(abi.KindPackfile, p2, &abi.Range{Offset: r.off, Length: r.n})
		if err != nil || !bytes.Equal(b, r.want) {
			t.Errorf("Get p2 [%d+%d] = %q, %v; want %q", r.off, r.n, b, err, r.want)
		}
	}
	_, err = x.get(abi.KindPackfile, p2, &abi.Range{Offset: 10000, Length: 1})
	wantCode(t, "Get past the end", err, abi.ErrRangeNotSatisfiable)

	// Missing objects, and objects of another kind under the same MAC.
	_, err = x.get(abi.KindPackfile, testMAC(9), nil)
	wantCode(t, "Get missing", err, abi.ErrNotFound, "packfile-", x.loc)
	_, err = x.get(abi.KindPackfile, st1, nil)
	wantCode(t, "Get other kind", err, abi.ErrNotFound)

	// A cold cache goes through the manifest, then warms up.
	x.host.cache = map[string]string{}
	x.host.takeRequests()
	if b, err := x.get(abi.KindState, st1, nil); err != nil || string(b) != "state" {
		t.Errorf("Get state = %q, %v", b, err)
	}
	if reqs := x.host.takeRequests(); len(reqs) != 2 {
		t.Errorf("cold Get made %d requests, want 2: %q", len(reqs), reqs)
	}
	// A cache pointing at a blob the registry lost: fall back to the tag.
	x.host.CacheSet(s.cacheKey(ObjectTag(abi.KindState, st1)), s.cacheValue(descriptor{Digest: tombstoneDigest, Size: 3}))
	if b, err := x.get(abi.KindState, st1, nil); err != nil || string(b) != "state" {
		t.Errorf("Get with a stale cache = %q, %v", b, err)
	}

	var size int64
	x.must("Size", x.do(func() (err error) { size, err = s.Size(); return err }))
	if want := int64(len(data) + len("state") + len("lock 1")); size != want {
		t.Errorf("Size = %d, want %d", size, want)
	}

	// Deleting one packfile leaves the other, with the same bytes, whole.
	x.must("Delete p1", x.del(abi.KindPackfile, p1))
	wantCode(t, "Delete p1 again", x.del(abi.KindPackfile, p1), abi.ErrNotFound)
	_, err = x.get(abi.KindPackfile, p1, nil)
	wantCode(t, "Get deleted", err, abi.ErrNotFound)
	if b, err := x.get(abi.KindPackfile, p2, nil); err != nil || !bytes.Equal(b, data) {
		t.Errorf("Get p2 after deleting p1: %d bytes, %v", len(b), err)
	}
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{p2}) {
		t.Errorf("List after Delete = %x", got)
	}
	wantCode(t, "Delete missing", x.del(abi.KindState, testMAC(9)), abi.ErrNotFound)

	// A lock is deleted and put again under the same MAC, with new bytes.
	x.must("Delete lock", x.del(abi.KindLock, lk))
	x.must("Put lock again", x.put(abi.KindLock, lk, []byte("lock 2")))
	if b, err := x.get(abi.KindLock, lk, nil); err != nil || string(b) != "lock 2" {
		t.Errorf("Get lock = %q, %v", b, err)
	}

	x.must("Close", s.Close())
}

// TestPutAfterCreate: a put in the process that created the store makes
// no request beyond the upload's, as the store has deleted nothing.
func TestPutAfterCreate(t *testing.T) {
	x := newHarness(t)
	x.must("Create", x.do(func() error { return x.store.Create([]byte(`{}`)) }))
	x.host.takeRequests()
	x.must("Put", x.put(abi.KindPackfile, testMAC(1), []byte("packfile")))
	for _, r := range x.host.takeRequests() {
		if strings.HasPrefix(r, "HEAD") || strings.HasPrefix(r, "GET") {
			t.Errorf("a put after create made %s, more than its upload", r)
		}
	}
}

func TestDeleteTombstone(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	a, b := testMAC(1), testMAC(2)
	x.must("Put a", x.put(abi.KindState, a, []byte("a")))
	x.must("Put b", x.put(abi.KindState, b, []byte("a")))

	x.must("Delete a", x.del(abi.KindState, a))
	if got := x.list(abi.KindState); !slices.Equal(got, []abi.MAC{b}) {
		t.Errorf("List after Delete = %x", got)
	}
	_, err := x.get(abi.KindState, a, nil)
	wantCode(t, "Get tombstone", err, abi.ErrNotFound)
	wantCode(t, "Delete tombstone", x.del(abi.KindState, a), abi.ErrNotFound)
	wantCode(t, "Delete missing", x.del(abi.KindState, testMAC(3)), abi.ErrNotFound)
	if b, err := x.get(abi.KindState, b, nil); err != nil || string(b) != "a" {
		t.Errorf("Get b = %q, %v", b, err)
	}

	// Once refused, DELETE is not tried again.
	x.host.takeRequests()
	x.must("Delete b", x.del(abi.KindState, b))
	if reqs := x.host.takeRequests(); countRequests(reqs, "DELETE") != 0 {
		t.Errorf("Delete tried DELETE again: %q", reqs)
	}
	if got := x.list(abi.KindState); len(got) != 0 {
		t.Errorf("List after deleting all = %x", got)
	}

	// Put again after Delete: alive, listed, and deletable again.
	x.must("Put a again", x.put(abi.KindState, a, []byte("a2")))
	if got := x.list(abi.KindState); !slices.Equal(got, []abi.MAC{a}) {
		t.Errorf("List after put again = %x", got)
	}
	if b, err := x.get(abi.KindState, a, nil); err != nil || string(b) != "a2" {
		t.Errorf("Get revived = %q, %v", b, err)
	}
	x.must("Delete a again", x.del(abi.KindState, a))
	if got := x.list(abi.KindState); len(got) != 0 {
		t.Errorf("List after second delete = %x", got)
	}

	// A lock is released by the one request that moves its tag, its
	// release's first write; the list of released locks then names it,
	// and no marker is written for a lock nobody put again.
	lk := testMAC(4)
	x.must("Put lock", x.put(abi.KindLock, lk, []byte("lock")))
	x.host.takeRequests()
	x.must("Delete lock", x.del(abi.KindLock, lk))
	reqs := x.host.takeRequests()
	if len(reqs) < 2 || !strings.HasPrefix(reqs[1], "PUT /v2/team/backups/manifests/lock-") || countRequests(reqs, "DELETE") != 0 ||
		countRequests(reqs, "PUT /v2/team/backups/manifests/released-locks") != 1 || countRequests(reqs, "PUT /v2/team/backups/manifests/deleted-") != 0 {
		t.Errorf("releasing a lock: %q, want a HEAD, the tombstone's PUT, then the list of released locks written and no marker", reqs)
	}
	if got := x.list(abi.KindLock); len(got) != 0 {
		t.Errorf("List of locks after the release = %x, want none", got)
	}
	_, err = x.get(abi.KindLock, lk, nil)
	wantCode(t, "Get released lock", err, abi.ErrNotFound)
	wantCode(t, "Delete released lock", x.del(abi.KindLock, lk), abi.ErrNotFound)
}

func TestDeleteByDigest(t *testing.T) {
	x := newHarness(t, digestOnlyDelete)
	a, b := testMAC(1), testMAC(2)
	x.must("Put a", x.put(abi.KindPackfile, a, []byte("same")))
	x.must("Put b", x.put(abi.KindPackfile, b, []byte("same")))
	x.must("Delete a", x.del(abi.KindPackfile, a))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{b}) {
		t.Errorf("List = %x", got)
	}
	x.host.takeRequests()
	x.must("Delete b", x.del(abi.KindPackfile, b))
	reqs := x.host.takeRequests()
	if countRequests(reqs, "DELETE") != 1 || countRequests(reqs, "PUT") != 0 {
		t.Errorf("second Delete: %q, want one DELETE by digest", reqs)
	}
	wantCode(t, "Delete missing", x.del(abi.KindPackfile, b), abi.ErrNotFound)
	if got := x.list(abi.KindPackfile); len(got) != 0 {
		t.Errorf("List = %x", got)
	}
}

func TestListPagination(t *testing.T) {
	for _, tt := range []struct {
		name  string
		mws   []middleware
		pages int
	}{
		// 10 packfile tags in pages of 3, then the marker list.
		{"no Link (go-containerregistry)", nil, 5},
		{"relative Link", []middleware{linkPages(false)}, 5},
		{"absolute Link", []middleware{linkPages(true)}, 5},
		// Everything at once, twice.
		{"n and last ignored", []middleware{ignoreListParams}, 2},
		// Pages of 3 that each repeat the tag before them: the MACs
		// repeated are listed once.
		{"pages overlap", []middleware{inclusiveLast}, 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := newHarness(t, tt.mws...)
			x.store.pageSize = 3
			x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
			var want []abi.MAC
			for i := range 10 {
				want = append(want, testMAC(byte(i*20)))
				x.must("Put", x.put(abi.KindPackfile, want[i], []byte{byte(i)}))
			}
			for i := range 4 {
				x.must("Put", x.put(abi.KindState, testMAC(byte(i)), nil))
				x.must("Put", x.put(abi.KindECCPackfile, testMAC(byte(i)), nil))
			}
			x.host.takeRequests()
			if got := x.list(abi.KindPackfile); !slices.Equal(got, want) {
				t.Errorf("List = %d MACs, want %d", len(got), len(want))
			}
			reqs := x.host.takeRequests()
			pages := countRequests(reqs, "GET /v2/team/backups/tags/list")
			if pages != tt.pages {
				t.Errorf("%d tag list requests, want %d: %q", pages, tt.pages, reqs)
			}
			if got := x.list(abi.KindState); len(got) != 4 {
				t.Errorf("List(state) = %d MACs, want 4", len(got))
			}
		})
	}
}

// TestListMarkerPages checks that the marker tags of earlier versions
// still leave their objects out, and that the first page of them is
// short, and the next ones are full, whether the registry links them or
// not.
func TestListMarkerPages(t *testing.T) {
	for _, tt := range []struct {
		name string
		mws  []middleware
	}{
		{"no Link", []middleware{refuseDelete}},
		{"Link", []middleware{refuseDelete, linkPages(false)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := newHarness(t, tt.mws...)
			x.store.pageSize = probePage + 2
			var want []abi.MAC
			for i := range 25 {
				mac := testMAC(byte(i * 10))
				x.must("Put", x.put(abi.KindPackfile, mac, []byte{byte(i)}))
				if i < 15 {
					x.buryWithMarker(abi.KindPackfile, mac)
				} else {
					want = append(want, mac)
				}
			}
			x.host.takeRequests()
			if got := x.list(abi.KindPackfile); !slices.Equal(got, want) {
				t.Errorf("List = %x, want %x", got, want)
			}
			var sizes []string
			for _, r := range x.host.takeRequests() {
				u, err := url.Parse(strings.Fields(r)[1])
				if err == nil && strings.HasSuffix(u.Path, "/tags/list") && strings.HasPrefix(u.Query().Get("last"), markerPrefix) {
					sizes = append(sizes, u.Query().Get("n"))
				}
			}
			// 15 markers: a probe of 10, then a page of 12 that goes past them.
			if want := []string{itoa(probePage), itoa(probePage + 2)}; !slices.Equal(sizes, want) {
				t.Errorf("marker pages of n %q, want %q", sizes, want)
			}
		})
	}
}

// TestListStartsPages checks that a list starts a page early only when it
// needs it: the marker probe at once, and the next page when a page ends
// with one of the kind's tags, never the page after the kind's last tag.
func TestListStartsPages(t *testing.T) {
	for _, tc := range []struct {
		name string
		mws  []middleware
		// early: the next page is asked for before this one is read,
		// from the Link's last.
		early bool
	}{
		{"Link with last", []middleware{linkPages(false)}, true},
		{"opaque Link", []middleware{linkPages(false), cursorLinks}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newHarness(t, tc.mws...)
			x.store.pageSize = 4
			var want []abi.MAC
			for i := range 10 {
				mac := testMAC(byte(i * 10))
				x.must("Put", x.put(abi.KindPackfile, mac, []byte{byte(i)}))
				want = append(want, mac)
			}
			for i := range 6 {
				x.must("Put", x.put(abi.KindState, testMAC(byte(i*10+1)), []byte{byte(i)}))
			}
			x.host.takeEvents()
			started, abandoned := x.host.started, x.host.abandoned
			if got := x.list(abi.KindPackfile); !slices.Equal(got, want) {
				t.Errorf("List = %x, want %x", got, want)
			}
			// Pages in the order asked for, and whether each was asked for
			// before the previous one was read.
			var pages, uris []string
			var before []bool
			read := map[string]bool{}
			for _, e := range x.host.takeEvents() {
				what, uri, _ := strings.Cut(e, " ")
				u, err := url.Parse(uri)
				if err != nil || !strings.HasSuffix(u.Path, "/tags/list") {
					continue
				}
				if what == "read" {
					read[uri] = true
					continue
				}
				last := u.Query().Get("last")
				if last == "" {
					last = u.Query().Get("cursor")
				}
				before = append(before, len(uris) > 0 && !read[uris[len(uris)-1]])
				pages, uris = append(pages, last), append(uris, uri)
			}
			// The probe of markers, then pages of 4, 4 and 2 packfiles: the
			// third ends with states, so no fourth page was started.
			if len(pages) != 4 || pages[0] != markerPrefix+tagPrefix(abi.KindPackfile) {
				t.Fatalf("tag list pages after %q, want the marker probe and 3 pages of packfiles", pages)
			}
			if got := x.host.started - started; got != 4 {
				t.Errorf("%d requests started early, want 4 (the probe, the graveyard, the second and third pages: the puts read the record of how the registry deletes)", got)
			}
			if got := x.host.abandoned - abandoned; got != 0 {
				t.Errorf("%d requests started and never used", got)
			}
			for i := 2; i < len(pages); i++ {
				if before[i] != tc.early {
					t.Errorf("page %d asked for before page %d was read: %v, want %v", i, i-1, before[i], tc.early)
				}
			}
		})
	}
}

func TestRangeIgnored(t *testing.T) {
	x := newHarness(t, ignoreRange)
	mac := testMAC(1)
	x.must("Put", x.put(abi.KindPackfile, mac, []byte("0123456789")))
	for _, r := range []struct {
		off  uint64
		n    uint32
		want string
	}{{2, 3, "234"}, {8, 10, "89"}, {0, 0, ""}} {
		b, err := x.get(abi.KindPackfile, mac, &abi.Range{Offset: r.off, Length: r.n})
		if err != nil || string(b) != r.want {
			t.Errorf("Get [%d+%d] = %q, %v; want %q", r.off, r.n, b, err, r.want)
		}
	}
	_, err := x.get(abi.KindPackfile, mac, &abi.Range{Offset: 10, Length: 1})
	wantCode(t, "Get past the end", err, abi.ErrRangeNotSatisfiable)
}

// TestRangeLonger: a 206 answer whose body is what was asked for is handed
// over as it is; a longer one is cut to the range.
func TestRangeLonger(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mws    []middleware
		slices int
	}{{"exact", nil, 0}, {"longer", []middleware{widenRange}, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			x := newHarness(t, tc.mws...)
			mac := testMAC(1)
			x.must("Put", x.put(abi.KindPackfile, mac, []byte("0123456789")))
			before := x.host.slices
			for _, r := range []struct {
				off  uint64
				n    uint32
				want string
			}{{2, 3, "234"}, {0, 4, "0123"}} {
				b, err := x.get(abi.KindPackfile, mac, &abi.Range{Offset: r.off, Length: r.n})
				if err != nil || string(b) != r.want {
					t.Errorf("Get [%d+%d] = %q, %v; want %q", r.off, r.n, b, err, r.want)
				}
			}
			if got := x.host.slices - before; got != tc.slices {
				t.Errorf("%d streams.slice calls for 2 ranged gets, want %d", got, tc.slices)
			}
		})
	}
}

// TestPutLeavesEmptyAnswers: the registry's answers to a put have no body,
// and the store leaves them to the host rather than close each one.
func TestPutLeavesEmptyAnswers(t *testing.T) {
	x := newHarness(t)
	x.list(abi.KindLock) // as Kloset does before it puts: the deletion mode is known
	before := x.host.closes
	x.must("Put", x.put(abi.KindPackfile, testMAC(1), []byte("0123456789")))
	if got := x.host.closes - before; got != 0 {
		t.Errorf("a put closed %d streams, want 0: its answers are empty", got)
	}
	// An answer with a body is still closed: a get of a missing object.
	before = x.host.closes
	if _, err := x.get(abi.KindPackfile, testMAC(2), nil); codeOf(err) != abi.ErrNotFound {
		t.Fatalf("Get of a missing object: %v", err)
	}
	if x.host.closes == before {
		t.Errorf("the answer to a get of a missing object was not closed")
	}
}

func TestGetCorrupted(t *testing.T) {
	x := newHarness(t, corruptBlobs)
	mac := testMAC(1)
	x.must("Put", x.put(abi.KindPackfile, mac, []byte("0123456789")))
	b, err := x.get(abi.KindPackfile, mac, nil)
	if err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Errorf("Get of a corrupted blob = %q, %v; want a failed read", b, err)
	}
}

func TestPutRetriesEmptyBlob(t *testing.T) {
	isManifestPut := func(r *http.Request) bool { return r.Method == "PUT" && strings.Contains(r.URL.Path, "/manifests/") }
	x := newHarness(t, failFirst(isManifestPut, 404, "MANIFEST_BLOB_UNKNOWN"))
	mac := testMAC(1)
	x.must("Put", x.put(abi.KindState, mac, []byte("s")))
	if b, err := x.get(abi.KindState, mac, nil); err != nil || string(b) != "s" {
		t.Errorf("Get = %q, %v", b, err)
	}
}

func TestFailedPutLeavesNoTag(t *testing.T) {
	isCommit := func(r *http.Request) bool {
		return r.Method == "PUT" && strings.Contains(r.URL.Path, "/blobs/uploads/")
	}
	x := newHarness(t, failFirst(isCommit, 400, "DIGEST_INVALID"))
	mac := testMAC(1)
	err := x.put(abi.KindState, mac, []byte("s"))
	wantCode(t, "Put", err, abi.ErrOther, "put state-", x.loc, "400 DIGEST_INVALID")
	if got := x.list(abi.KindState); len(got) != 0 {
		t.Errorf("List after a failed Put = %x", got)
	}
	_, err = x.get(abi.KindState, mac, nil)
	wantCode(t, "Get", err, abi.ErrNotFound)
}

func TestErrors(t *testing.T) {
	always := func(status int, code string) middleware {
		return func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				writeError(w, status, code, "injected")
			})
		}
	}
	x := newHarness(t, always(401, "UNAUTHORIZED"))
	reg := strings.TrimPrefix(x.loc, "oci://")
	reg = reg[:strings.Index(reg, "/")]
	wantCode(t, "Ping 401", x.do(x.store.Ping), abi.ErrPermissionDenied,
		fmt.Sprintf("registry %s refused access to repository team/backups (401 UNAUTHORIZED: injected): check username and password", reg))
	wantCode(t, "Put 401", x.put(abi.KindPackfile, testMAC(1), []byte("x")), abi.ErrPermissionDenied, "put packfile-")

	x = newHarness(t, always(503, "UNAVAILABLE"))
	_, err := x.get(abi.KindPackfile, testMAC(1), nil)
	wantCode(t, "Get 503", err, abi.ErrTransient, "503 UNAVAILABLE")
	if e := err.(*abi.Error); e.Status != 503 {
		t.Errorf("Status = %d, want 503", e.Status)
	}

	x = newHarness(t, always(405, "UNSUPPORTED"))
	wantCode(t, "Create 405", x.do(func() error { return x.store.Create(nil) }), abi.ErrUnsupported, "does not support", "405")

	// Not a registry.
	for _, h := range []http.HandlerFunc{
		func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) },
		func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>hello</html>")) },
	} {
		srv := httptest.NewServer(h)
		host := newTestHost(t, srv.URL)
		s, err := New(host, map[string]string{OptionLocation: "oci://" + strings.TrimPrefix(srv.URL, "http://") + "/x"})
		if err != nil {
			t.Fatal(err)
		}
		s.sleep = func(time.Duration) {}
		wantCode(t, "Ping web server", s.Ping(), abi.ErrOther, "does not answer the OCI distribution API at /v2/", "is it a registry?")
		host.endCall()
		srv.Close()

		// Nobody listens any more: a network error, transient, status 0.
		err = s.Ping()
		host.endCall()
		wantCode(t, "Ping closed server", err, abi.ErrTransient, "connection refused", "(ping ")
		if e := err.(*abi.Error); e.Status != 0 {
			t.Errorf("Status = %d, want 0", e.Status)
		}
	}
}

// TestListManyMarkers lists objects with more markers than List reads at
// once: deleted ones are left out, those put again after their deletion
// are listed.
func TestListManyMarkers(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	var want []abi.MAC
	for i := range 11 {
		mac := testMAC(byte(10 + i))
		x.must("Put", x.put(abi.KindState, mac, []byte{byte(i)}))
		if i%5 == 0 {
			want = append(want, mac) // kept
			continue
		}
		x.must("Delete", x.del(abi.KindState, mac))
		if i%3 == 0 {
			x.must("Put again", x.put(abi.KindState, mac, []byte{byte(i), 1}))
			want = append(want, mac)
		}
	}
	slices.SortFunc(want, compareMAC)
	if got := x.list(abi.KindState); !slices.Equal(got, want) {
		t.Errorf("List = %x, want %x", got, want)
	}
}
