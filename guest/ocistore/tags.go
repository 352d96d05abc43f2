package ocistore

import (
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

const (
	configTag    = "config"
	markerPrefix = "deleted-"
)

// tagPrefix is what every tag of kind k starts with.
func tagPrefix(k abi.Kind) string { return k.String() + "-" }

// objectTag is the tag of object (k, mac).
func objectTag(k abi.Kind, mac abi.MAC) string { return tagPrefix(k) + hex.EncodeToString(mac[:]) }

// markerTag is the tag that marks object (k, mac) deleted on registries
// that cannot delete.
func markerTag(k abi.Kind, mac abi.MAC) string { return markerPrefix + objectTag(k, mac) }

// parseTag returns the MAC of tag if it is prefix followed by 64 lowercase
// hex digits. Other tags, ours or not, are not objects of that kind. It
// takes bytes, as tag list pages are decoded without a string per tag.
func parseTag(prefix string, tag []byte) (abi.MAC, bool) {
	var mac abi.MAC
	if len(tag) != len(prefix)+2*len(mac) || string(tag[:len(prefix)]) != prefix {
		return mac, false
	}
	h := tag[len(prefix):]
	for i := range mac {
		hi, ok1 := lowerHex(h[2*i])
		lo, ok2 := lowerHex(h[2*i+1])
		if !ok1 || !ok2 {
			return mac, false
		}
		mac[i] = hi<<4 | lo
	}
	return mac, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// cacheKey names a tag in the host's cache, which every store of the host
// process shares: the same MAC may well be in two repositories (plakar sync).
func (s *Store) cacheKey(tag string) string {
	return s.loc.Registry + "/" + s.loc.Repository + ":" + tag
}

// cacheable tells whether the blob behind k's tags never changes. Locks are
// put again under the same MAC with new bytes, possibly by another process,
// so a cached digest could serve a stale lock.
func cacheable(k abi.Kind) bool { return k != abi.KindLock }

// cacheValue and parseCacheValue encode a blob's digest and size: Get needs
// both to verify a download without reading the manifest.
func cacheValue(d descriptor) string { return d.Digest + " " + strconv.FormatInt(d.Size, 10) }

func parseCacheValue(v string) (descriptor, bool) {
	dg, sz, ok := strings.Cut(v, " ")
	size, err := strconv.ParseInt(sz, 10, 64)
	if !ok || err != nil || size < 0 || !validDigest(dg) {
		return descriptor{}, false
	}
	return descriptor{Digest: dg, Size: size}, true
}
