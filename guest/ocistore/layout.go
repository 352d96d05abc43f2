package ocistore

import (
	"encoding/hex"

	"github.com/plakar-oci/ocistore/abi"
)

// layout is how a store's objects are tagged and described in its
// repository. A store has ours, or the layout of Plakar's upstream oci
// plugin (PlakarKorp/integrations, oci/storage), which this store opens as
// it is: both plugins claim the protocol oci, so their users switch from
// one to the other on the same repositories.
type layout struct {
	name string // for messages
	// configTag tags the store's configuration.
	configTag string
	// prefixes are the tag prefixes of the kinds, "" for a kind the
	// layout has no objects of.
	prefixes perKind
	// artifacts are the artifactType of each kind's manifests: what
	// parseManifest wants of an object's manifest.
	artifacts perKind
	// appendManifest appends the manifest of object (k, mac) whose bytes
	// are blob.
	appendManifest func(b []byte, k abi.Kind, mac abi.MAC, blob descriptor) []byte
}

var ourLayout = &layout{
	name:           "ocistore",
	configTag:      configTag,
	prefixes:       tagPrefixes,
	artifacts:      artifactTypes,
	appendManifest: appendObjectManifest,
}

// upstreamLayout tags the configuration CONFIG and objects
// packfiles-<hex>, state-<hex> and locks-<hex>; it has no ECC kinds. Each
// object is an image manifest whose config is the blob {} as an image
// config and whose one layer is the object's bytes, with no artifactType.
// The manifests this store writes there add our kind and MAC annotations,
// which the upstream plugin ignores (it reads the first layer): they keep
// every object's manifest unique, so that deleting one by digest never
// takes another with the same bytes along.
var upstreamLayout = &layout{
	name:      "upstream",
	configTag: "CONFIG",
	prefixes: newPerKind(func(k abi.Kind) string {
		switch k {
		case abi.KindPackfile:
			return "packfiles-"
		case abi.KindState:
			return "state-"
		case abi.KindLock:
			return "locks-"
		}
		return ""
	}),
	artifacts: newPerKind(func(abi.Kind) string { return "" }),
	appendManifest: func(b []byte, k abi.Kind, mac abi.MAC, blob descriptor) []byte {
		m := manifest{
			SchemaVersion: 2,
			MediaType:     mediaTypeManifest,
			Config:        descriptor{MediaType: mediaTypeImageConfig, Digest: emptyDigest, Size: int64(len(emptyBlob))},
			Layers:        []descriptor{{MediaType: mediaTypeBlob, Digest: blob.Digest, Size: blob.Size}},
			Annotations:   map[string]string{annotationKind: k.String(), annotationMAC: hex.EncodeToString(mac[:])},
		}
		return append(b, m.encode()...)
	},
}

// layoutKey is the host cache's entry for the store's layout, which every
// instance of the store reads rather than asking the registry. A tag
// cannot hold a space, so no object's key is this one.
func (s *Store) layoutKey() string { return s.cacheSpace + " layout" }

// useLayout makes l the store's layout, and tells the other instances.
func (s *Store) useLayout(l *layout) {
	s.lay = l
	s.h.CacheSet(s.layoutKey(), l.name)
}

// ready checks kind k and learns the store's layout, once per instance:
// from the host's cache, where Open and Create leave it, or else from the
// registry (the cache is bounded, and a process may use a store it did
// not open). That costs one or two HEADs, once per instance. Once the
// layout is known it costs a few comparisons and no allocation: a put
// and a ranged get make none. verb and prep describe the call.
func (s *Store) ready(k abi.Kind, verb, prep string) error {
	if s.lay != nil && k.Valid() && s.lay.prefixes.of(k) != "" {
		return nil
	}
	return s.newCall(verb, k.String()+" objects", prep).ready(k)
}

func (c *call) ready(k abi.Kind) error {
	s := c.s
	if !k.Valid() {
		return errorf(abi.ErrOther, "%s: unknown resource kind %d: the host and the guest disagree on the contract", c.action(), k)
	}
	if s.lay == nil {
		if err := c.learnLayout(); err != nil {
			return err
		}
	}
	if s.lay.prefixes.of(k) == "" {
		return errorf(abi.ErrUnsupported, "%s: the store was made by Plakar's upstream oci plugin, whose layout has no %s objects", c.action(), k)
	}
	return nil
}

func (c *call) learnLayout() error {
	s := c.s
	if v, ok := s.h.CacheGet(s.layoutKey()); ok {
		for _, l := range []*layout{ourLayout, upstreamLayout} {
			if v == l.name {
				s.lay = l
				return nil
			}
		}
	}
	_, ours, err := c.manifestDigest(ourLayout.configTag)
	if err != nil {
		return err // nothing learned: the next call asks again
	}
	if ours {
		s.useLayout(ourLayout)
		return nil
	}
	_, upstream, err := c.manifestDigest(upstreamLayout.configTag)
	if err != nil {
		return err
	}
	if upstream {
		s.useLayout(upstreamLayout)
		return nil
	}
	// No store there: the call goes on in ours, and fails as it would
	// have. Only Create makes a store, in our layout.
	s.lay = ourLayout
	return nil
}

// tagPrefix is what every tag of kind k starts with in the store's layout.
func (s *Store) tagPrefix(k abi.Kind) string { return s.lay.prefixes.of(k) }

// objectTag is the tag of object (k, mac) in the store's layout.
func (s *Store) objectTag(k abi.Kind, mac abi.MAC) string {
	return s.tagPrefix(k) + hex.EncodeToString(mac[:])
}

// markerTag is the tag that marks object (k, mac) deleted on registries
// that cannot delete.
func (s *Store) markerTag(k abi.Kind, mac abi.MAC) string {
	return markerPrefix + s.objectTag(k, mac)
}
