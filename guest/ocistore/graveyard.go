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
// each, sorted. On a registry that refuses DELETE no tag ever goes away:
// one tag for every deleted object would grow the tag list, which every
// List pages through, by one per object forever.
const graveyardTag = "graveyard"

const artifactGraveyard = "application/vnd.plakar.graveyard.v1"

// maxGraveyard bounds the list: about 75 bytes an object, so nearly a
// million deleted objects, each of which also left its own tag in the
// registry's tag list.
const maxGraveyard = 64 << 20

// grave is one deleted object.
type grave struct {
	k   abi.Kind
	mac abi.MAC
}

func compareGrave(a, b grave) int {
	if a.k != b.k {
		return int(a.k) - int(b.k)
	}
	return compareMAC(a.mac, b.mac)
}

// graveyardGet is the request for the graveyard's manifest.
func (c *call) graveyardGet() *abi.Request {
	return c.request("GET", c.s.manifestURL(graveyardTag), acceptManifest)
}

// readGraveyard returns the objects the graveyard names, sorted, none if
// there is no graveyard. Its manifest's GET is started already if
// started is not 0.
func (c *call) readGraveyard(started abi.Pending) ([]grave, error) {
	d, err := c.getStartedDoc("manifest "+graveyardTag, c.graveyardGet(), started, docTuning{limit: maxManifest, want: headerDigest})
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
	layer, ok, err := parseManifest(d.data, artifactGraveyard)
	if err == nil && !ok {
		err = errorf(abi.ErrOther, "its artifactType is not %s", artifactGraveyard)
	}
	if err == nil && layer.Size > maxGraveyard {
		err = errorf(abi.ErrOther, "its list is %d bytes, more than %d", layer.Size, maxGraveyard)
	}
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: tag %s is not the store's list of deleted objects (%v): remove whatever else writes to repository %s",
			c.action(), graveyardTag, err, c.s.loc.Repository)
	}
	d, err = c.getDoc("list of deleted objects", c.s.blobURL(layer.Digest), nil, maxGraveyard, layer.Digest)
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "%s: the blob %s of the list of deleted objects is missing (was it garbage-collected?): tag %s must be pushed again, or the deleted objects are listed",
			c.action(), layer.Digest, graveyardTag)
	}
	if d.status != 200 {
		return nil, d.err
	}
	graves, err := parseGraveyard(d.data)
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: the list of deleted objects (tag %s) is damaged: %v", c.action(), graveyardTag, err)
	}
	return graves, nil
}

// parseGraveyard decodes the graveyard's list, sorting it if it is not.
func parseGraveyard(data []byte) ([]grave, error) {
	var graves []grave
	sorted := true
	for line := range bytes.Lines(data) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		name, h, ok := bytes.Cut(line, []byte(" "))
		var g grave
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
		slices.SortFunc(graves, compareGrave)
		graves = slices.Compact(graves)
	}
	return graves, nil
}

func encodeGraveyard(graves []grave) []byte {
	b := make([]byte, 0, len(graves)*(len("ecc-packfile ")+2*abi.MACSize+1))
	for _, g := range graves {
		b = append(b, g.k.String()...)
		b = append(b, ' ')
		b = hex.AppendEncode(b, g.mac[:])
		b = append(b, '\n')
	}
	return b
}

// graveMACs are the MACs of kind k among graves, sorted.
func graveMACs(graves []grave, k abi.Kind) []abi.MAC {
	var macs []abi.MAC
	for _, g := range graves {
		if g.k == k {
			macs = append(macs, g.mac)
		}
	}
	return macs
}

// entomb makes the graveyard name object (k, mac): it reads the list,
// and if the object is not on it pushes the list with it and moves the
// tag. Registries have no compare-and-swap: two entombs at once would
// each push the list they read plus their own object, and the one pushed
// first is lost. The host runs a store's deletes of objects other than
// locks one at a time (front.Delete), Kloset's exclusive lock keeps two
// maintenances apart, and a lost name heals: the object's tag is a
// tombstone, which List shows, and the next delete of it (maintenance
// deletes what it lists and no state uses) names it again.
func (c *call) entomb(k abi.Kind, mac abi.MAC) error {
	graves, err := c.readGraveyard(0)
	if err != nil {
		return err
	}
	g := grave{k, mac}
	i, found := slices.BinarySearchFunc(graves, g, compareGrave)
	if found {
		return nil
	}
	graves = slices.Insert(graves, i, g)
	data := encodeGraveyard(graves)
	if len(data) > maxGraveyard {
		return errorf(abi.ErrOther, "%s: the list of deleted objects would be %d bytes, more than %d: enable deletion on registry %s (README, Deleting)",
			c.action(), len(data), maxGraveyard, c.s.loc.Registry)
	}
	blob, err := c.uploadBytes(data)
	if err != nil {
		return err
	}
	return c.putManifest(graveyardTag, graveyardManifest(blob))
}

func graveyardManifest(blob descriptor) []byte {
	return (&manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		ArtifactType:  artifactGraveyard,
		Config:        emptyDescriptor,
		Layers:        []descriptor{{MediaType: artifactGraveyard, Digest: blob.Digest, Size: blob.Size}},
	}).encode()
}
