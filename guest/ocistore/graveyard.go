package ocistore

import (
	"bytes"
	"encoding/hex"
	"slices"

	"github.com/plakar-oci/ocistore/abi"
)

// graveyardTag names the objects deleted by tombstone (bury): one tag
// whose manifest (artifactType application/vnd.plakar.graveyard.v1) has
// one layer, the list of the deleted objects, a line "<kind> <hex MAC>"
// each, sorted, followed by " pending" while the object's tag may not be
// a tombstone yet. On a registry that refuses DELETE no tag ever goes
// away: one tag for every deleted object would grow the tag list, which
// every List pages through, by one per object forever.
//
// List takes a name that is not pending as the object's death without
// reading its tag, unless a marker tag says the object was put again
// (Put): so List costs one read more, not one per object ever deleted.
// It reads the tags of the pending ones, which the next delete confirms
// (entomb).
const graveyardTag = "graveyard"

const artifactGraveyard = "application/vnd.plakar.graveyard.v1"

// maxGraveyard bounds the list: the size of the largest manifest, which
// the host reads whatever its limit on documents. At about 75 bytes an
// object that is some 55,000 deleted objects (a terabyte of packfiles),
// past which deletes fail until an operator reclaims the space (README,
// "Deleting"), which empties the graveyard.
const maxGraveyard = maxManifest

// grave is one deleted object. pending: its tag was live when it was
// named, and may still be (a delete stopped half-way).
type grave struct {
	k       abi.Kind
	mac     abi.MAC
	pending bool
}

const pendingField = " pending"

func compareGrave(a, b grave) int {
	if a.k != b.k {
		return int(a.k) - int(b.k)
	}
	return compareMAC(a.mac, b.mac)
}

// nameList is a list of objects kept in one tag, whose manifest (of
// artifactType artifact) has one layer, the list: the graveyard, or the
// list of released locks (released.go).
type nameList struct {
	tag, artifact string
	what          string // what the list is, for errors
	parse         func([]byte) ([]grave, error)
}

var graveyardList = nameList{graveyardTag, artifactGraveyard, "list of deleted objects", parseGraveyard}

// nameListGet is the request for the manifest of list l.
func (c *call) nameListGet(l *nameList) *abi.Request {
	return c.request("GET", c.s.manifestURL(l.tag), acceptManifest)
}

// readNames returns the objects list l names, sorted, none if there is
// no such tag. Its manifest's GET is started already if started is not
// 0.
func (c *call) readNames(l *nameList, started abi.Pending) ([]grave, error) {
	d, err := c.getStartedDoc("manifest "+l.tag, c.nameListGet(l), started, docTuning{limit: maxManifest, want: headerDigest})
	if err != nil {
		return nil, err
	}
	switch d.status {
	case 404:
		return nil, nil
	case 200:
	default:
		return nil, d.err
	}
	layer, ok, err := parseManifest(d.data, l.artifact)
	if err == nil && !ok {
		err = errorf(abi.ErrOther, "its artifactType is not %s", l.artifact)
	}
	if err == nil && layer.Size > maxManifest {
		err = errorf(abi.ErrOther, "its list is %d bytes, more than %d", layer.Size, maxManifest)
	}
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: tag %s is not the store's %s (%v): remove whatever else writes to repository %s",
			c.action(), l.tag, l.what, err, c.s.loc.Repository)
	}
	d, err = c.getDoc(l.what, c.s.blobURL(layer.Digest), nil, maxManifest, layer.Digest)
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "%s: the blob %s of the %s is missing (was it garbage-collected?): tag %s must be pushed again, or the objects it names are listed",
			c.action(), layer.Digest, l.what, l.tag)
	}
	if d.status != 200 {
		return nil, d.err
	}
	graves, err := l.parse(d.data)
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: the %s (tag %s) is damaged: %v", c.action(), l.what, l.tag, err)
	}
	return graves, nil
}

// parseGraveyard decodes the graveyard's list, sorting it if it is not.
func parseGraveyard(data []byte) ([]grave, error) {
	var graves []grave
	sorted := true
	for line := range bytes.Lines(data) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		var g grave
		line, g.pending = bytes.CutSuffix(line, []byte(pendingField))
		name, h, ok := bytes.Cut(line, []byte(" "))
		kindOK := false
		for _, k := range abi.Kinds() {
			if string(name) == k.String() {
				g.k, kindOK = k, true
			}
		}
		if !ok || !kindOK || !decodeMAC(&g.mac, h) {
			return nil, errorf(abi.ErrOther, "line %q is not a kind and a MAC", line)
		}
		if n := len(graves); n > 0 && compareGrave(graves[n-1], g) >= 0 {
			sorted = false
		}
		graves = append(graves, g)
	}
	if !sorted {
		slices.SortStableFunc(graves, compareGrave)
		// A name given twice is pending if either is: its tag is read.
		out := graves[:0]
		for _, g := range graves {
			if n := len(out); n > 0 && compareGrave(out[n-1], g) == 0 {
				out[n-1].pending = out[n-1].pending || g.pending
				continue
			}
			out = append(out, g)
		}
		graves = out
	}
	return graves, nil
}

func encodeGraveyard(graves []grave) []byte {
	b := make([]byte, 0, len(graves)*(len("ecc-packfile ")+2*abi.MACSize+1))
	for _, g := range graves {
		b = append(b, g.k.String()...)
		b = append(b, ' ')
		b = hex.AppendEncode(b, g.mac[:])
		if g.pending {
			b = append(b, pendingField...)
		}
		b = append(b, '\n')
	}
	return b
}

// gravesOf are the graves of kind k among graves, sorted.
func gravesOf(graves []grave, k abi.Kind) []grave {
	var of []grave
	for _, g := range graves {
		if g.k == k {
			of = append(of, g)
		}
	}
	return of
}

// entomb makes the graveyard name object (k, mac), pending unless its tag
// is a tombstone already (tombstoned), and confirms the pending names
// whose tags are tombstones now (read markerReads at a time: normally the
// one the delete before named). Registries have no compare-and-swap: two
// entombs at once would each push the list they read plus their own
// object, and the one pushed first is lost. The host runs a store's
// deletes of objects other than locks one at a time (front.Delete),
// Kloset's exclusive lock keeps two maintenances apart, and a lost name
// heals: the object's tag is a tombstone, which List shows, and the next
// delete of it (maintenance deletes what it lists and no state uses)
// names it again.
func (c *call) entomb(k abi.Kind, mac abi.MAC, tombstoned bool) error {
	graves, err := c.readNames(&graveyardList, 0)
	if err != nil {
		return err
	}
	changed := false
	var pending []int
	var tags []string
	for i, g := range graves {
		if g.pending && (g.k != k || g.mac != mac) {
			pending = append(pending, i)
			tags = append(tags, c.s.objectTag(g.k, g.mac))
		}
	}
	dead, err := c.deadTags(tags)
	if err != nil {
		return err
	}
	for j, i := range pending {
		if dead[j] {
			graves[i].pending, changed = false, true
		}
	}
	g := grave{k, mac, !tombstoned}
	switch i, found := slices.BinarySearchFunc(graves, g, compareGrave); {
	case !found:
		graves, changed = slices.Insert(graves, i, g), true
	case graves[i].pending != g.pending:
		graves[i], changed = g, true
	}
	if !changed {
		return nil
	}
	data := encodeGraveyard(graves)
	if len(data) > maxGraveyard {
		return errorf(abi.ErrOther, "%s: the list of deleted objects (tag %s) is full at %d bytes: registry %s refuses DELETE, and the space of what was deleted must be reclaimed first (README, \"Deleting\"), which empties it",
			c.action(), graveyardTag, maxGraveyard, c.s.loc.Registry)
	}
	return c.pushNames(&graveyardList, data)
}

// pushNames pushes data, encoded, as list l.
func (c *call) pushNames(l *nameList, data []byte) error {
	blob, err := c.uploadBytes(data)
	if err != nil {
		return err
	}
	return c.putManifest(l.tag, artifactManifest(l.artifact, blob, nil).encode())
}

// deadTags reads tags, markerReads at a time, and tells which are
// tombstones or missing.
func (c *call) deadTags(tags []string) ([]bool, error) {
	dead := make([]bool, len(tags))
	for from := 0; from < len(tags); from += markerReads {
		batch := tags[from:min(len(tags), from+markerReads)]
		var reqs [markerReads]*abi.Request
		var started [markerReads]abi.Pending
		for j, tag := range batch {
			reqs[j] = c.manifestHead(tag)
			started[j] = c.start(reqs[j])
		}
		for j, tag := range batch {
			digest, exists, err := c.manifestDigestStarted(tag, reqs[j], started[j])
			if err != nil {
				return nil, err
			}
			dead[from+j] = !exists || digest == tombstoneDigest
		}
	}
	return dead, nil
}

func graveyardManifest(blob descriptor) []byte {
	return artifactManifest(artifactGraveyard, blob, nil).encode()
}
