package ocistore

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

// tags returns every tag of the harness's repository.
func (x *harness) tags() []string {
	x.t.Helper()
	var list struct{ Tags []string }
	x.must("list the tags", x.do(func() error {
		d, err := x.store.newCall("list ", "tags", " of ").getDoc("tag list", x.store.tags, nil, maxTagPage, "")
		if err != nil {
			return err
		}
		return json.Unmarshal(d.data, &list)
	}))
	return list.Tags
}

// graveyardManifestNow returns the manifest the graveyard tag points to.
func (x *harness) graveyardManifestNow() []byte {
	x.t.Helper()
	var raw []byte
	x.must("read the graveyard", x.do(func() error {
		d, err := x.store.newCall("read ", graveyardTag, " of ").getDoc("manifest", x.store.manifestURL(graveyardTag), []abi.Header{acceptManifest}, maxManifest, "")
		raw = d.data
		return err
	}))
	return raw
}

// TestDeleteGraveyard: where DELETE is refused, deleted objects are named
// in the one graveyard tag, not by a tag each; markers that earlier
// versions wrote are honoured beside it.
func TestDeleteGraveyard(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	var macs []abi.MAC
	for i := range 6 {
		macs = append(macs, testMAC(byte(i+1)))
		x.must("Put", x.put(abi.KindPackfile, macs[i], []byte{byte(i)}))
	}
	x.must("Put state", x.put(abi.KindState, macs[0], []byte("state")))
	before := len(x.tags())
	x.buryWithMarker(abi.KindPackfile, macs[0])
	for _, mac := range macs[1:4] {
		x.must("Delete", x.del(abi.KindPackfile, mac))
	}
	x.host.takeRequests()
	if got := x.list(abi.KindPackfile); !slices.Equal(got, macs[4:]) {
		t.Errorf("List = %x, want %x", got, macs[4:])
	}
	// The tags read: the one with an old marker, and the last one deleted,
	// whose name is pending until the next delete; not one per object.
	if heads := countRequests(x.host.takeRequests(), "HEAD /v2/team/backups/manifests/packfile-"); heads != 2 {
		t.Errorf("List read %d tags of deleted objects, want 2", heads)
	}
	// The same MAC in another kind is not deleted.
	if got := x.list(abi.KindState); !slices.Equal(got, macs[:1]) {
		t.Errorf("List states = %x, want %x", got, macs[:1])
	}
	tags := x.tags()
	var markers []string
	for _, tag := range tags {
		if strings.HasPrefix(tag, markerPrefix) {
			markers = append(markers, tag)
		}
	}
	if len(markers) != 1 {
		t.Errorf("marker tags %q, want only the one written the old way", markers)
	}
	// The old way's marker, the graveyard, and the record of how the
	// registry deletes.
	if len(tags) != before+3 || !slices.Contains(tags, graveyardTag) {
		t.Errorf("%d tags after deleting 4 objects, from %d: %q", len(tags), before, tags)
	}
	// What the host reads to report how the registry deleted.
	loc := x.store.Location()
	if v, _ := x.host.CacheGet(abi.DeletionModeKey(loc.Registry, loc.Repository)); v != abi.DeletesByTombstone {
		t.Errorf("the host's cache says the registry deletes in mode %q, want %q", v, abi.DeletesByTombstone)
	}
	// Put again after the delete: alive, then deleted again.
	x.must("Put again", x.put(abi.KindPackfile, macs[1], []byte("again")))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, append([]abi.MAC{macs[1]}, macs[4:]...)) {
		t.Errorf("List after put again = %x", got)
	}
	x.must("Delete again", x.del(abi.KindPackfile, macs[1]))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, macs[4:]) {
		t.Errorf("List after deleting again = %x", got)
	}
}

// TestBuryStoppedHalfWay: a delete stopped between the graveyard's push
// and the tombstone leaves the object readable and listed; deleting it
// again completes.
func TestBuryStoppedHalfWay(t *testing.T) {
	a, b := testMAC(1), testMAC(2)
	// The second PUT of a's manifest, the tombstone's, fails.
	var puts atomic.Int32
	failTombstone := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/manifests/"+ObjectTag(abi.KindPackfile, a)) && puts.Add(1) == 2 {
				writeError(w, 400, "MANIFEST_INVALID", "injected")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	x := newHarness(t, refuseDelete, failTombstone)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	x.must("Put a", x.put(abi.KindPackfile, a, []byte("a")))
	x.must("Put b", x.put(abi.KindPackfile, b, []byte("b")))
	if err := x.del(abi.KindPackfile, a); err == nil {
		t.Fatal("Delete a succeeded; its tombstone was refused")
	}
	if !strings.Contains(string(x.graveyardManifestNow()), artifactGraveyard) {
		t.Fatal("no graveyard after the delete that stopped half-way")
	}
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{a, b}) {
		t.Errorf("List after a delete stopped half-way = %x, want a and b", got)
	}
	if data, err := x.get(abi.KindPackfile, a, nil); err != nil || string(data) != "a" {
		t.Errorf("Get a after a delete stopped half-way = %q, %v", data, err)
	}
	x.must("Delete a again", x.del(abi.KindPackfile, a))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{b}) {
		t.Errorf("List after deleting again = %x, want b", got)
	}
}

// TestGraveyardLostUpdateHeals: a graveyard pushed over by one that does
// not name an object deleted meanwhile (two deletes at once) lists the
// object again, and the next delete of it, which maintenance makes as it
// is listed and unused, names it again.
func TestGraveyardLostUpdateHeals(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	a, b, c := testMAC(1), testMAC(2), testMAC(3)
	for _, mac := range []abi.MAC{a, b, c} {
		x.must("Put", x.put(abi.KindPackfile, mac, mac[:1]))
	}
	x.must("Delete a", x.del(abi.KindPackfile, a))
	stale := x.graveyardManifestNow()
	x.must("Delete b", x.del(abi.KindPackfile, b))
	x.must("push the stale graveyard", x.do(func() error {
		return x.store.newCall("push ", graveyardTag, " to ").putManifest(graveyardTag, stale)
	}))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{b, c}) {
		t.Fatalf("List after the lost update = %x, want b (named no more) and c", got)
	}
	wantCode(t, "Delete b again", x.del(abi.KindPackfile, b), abi.ErrNotFound)
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{c}) {
		t.Errorf("List after deleting b again = %x, want c", got)
	}
}

func TestParseGraveyard(t *testing.T) {
	graves := []grave{{abi.KindPackfile, testMAC(2), true}, {abi.KindPackfile, testMAC(1), false}, {abi.KindECCState, testMAC(1), false}, {abi.KindPackfile, testMAC(1), true}}
	got, err := parseGraveyard(encodeGraveyard(graves))
	// A name given twice is pending if either is.
	want := []grave{{abi.KindPackfile, testMAC(1), true}, {abi.KindPackfile, testMAC(2), true}, {abi.KindECCState, testMAC(1), false}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("parseGraveyard(encodeGraveyard(unsorted)) = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"packfile 12\n", "nokind " + strings.Repeat("0", 64) + "\n", strings.Repeat("0", 64) + "\n"} {
		if _, err := parseGraveyard([]byte(bad)); err == nil {
			t.Errorf("parseGraveyard(%q) accepted it", bad)
		}
	}
}

// TestGraveyardFull: a graveyard that cannot take one more name fails the
// delete with what to do, and leaves the object whole.
func TestGraveyardFull(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	line := len(encodeGraveyard([]grave{{abi.KindPackfile, testMAC(1), false}}))
	graves := make([]grave, maxGraveyard/line)
	for i := range graves {
		graves[i].k = abi.KindPackfile
		graves[i].mac[0], graves[i].mac[1], graves[i].mac[2] = 0xff, byte(i>>8), byte(i)
	}
	x.must("push a full graveyard", x.do(func() error {
		c := x.store.newCall("push ", graveyardTag, " to ")
		blob, err := c.uploadBytes(encodeGraveyard(graves))
		if err != nil {
			return err
		}
		return c.putManifest(graveyardTag, graveyardManifest(blob))
	}))
	a := testMAC(1)
	x.must("Put", x.put(abi.KindPackfile, a, []byte("a")))
	wantCode(t, "Delete into a full graveyard", x.del(abi.KindPackfile, a), abi.ErrOther, "is full", "Deleting")
	if data, err := x.get(abi.KindPackfile, a, nil); err != nil || string(data) != "a" {
		t.Errorf("Get after the delete failed = %q, %v", data, err)
	}
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{a}) {
		t.Errorf("List after the delete failed = %x", got)
	}
}

// TestPutAgainUnknownMode: an object put again over a tombstone whose
// name the graveyard has confirmed is listed, even by a process that did
// not know how the registry deletes (no list before the put).
func TestPutAgainUnknownMode(t *testing.T) {
	x := newHarness(t, refuseDelete)
	x.must("Create", x.do(func() error { return x.store.Create([]byte("{}")) }))
	a, b := testMAC(1), testMAC(2)
	x.must("Put a", x.put(abi.KindPackfile, a, []byte("a")))
	x.must("Put b", x.put(abi.KindPackfile, b, []byte("b")))
	x.must("Delete a", x.del(abi.KindPackfile, a))
	x.must("Delete b", x.del(abi.KindPackfile, b)) // confirms a's name
	loc := x.store.Location()
	x.host.CacheRemove(abi.DeletionModeKey(loc.Registry, loc.Repository))
	x.must("Put a again", x.put(abi.KindPackfile, a, []byte("a2")))
	if got := x.list(abi.KindPackfile); !slices.Equal(got, []abi.MAC{a}) {
		t.Errorf("List after a put again = %x, want a", got)
	}
	if data, err := x.get(abi.KindPackfile, a, nil); err != nil || string(data) != "a2" {
		t.Errorf("Get a = %q, %v", data, err)
	}
}
