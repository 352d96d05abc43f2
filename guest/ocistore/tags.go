package ocistore

import (
	"encoding/hex"
	"strconv"
	"strings"
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
)

const (
	configTag    = "config"
	markerPrefix = "deleted-"
)

// tagPrefix is what every tag of kind k starts with.
func tagPrefix(k abi.Kind) string {
	if int(k) < len(tagPrefixes) {
		return tagPrefixes[k]
	}
	return k.String() + "-"
}

// tagPrefixes holds the prefix of every kind, made once.
var tagPrefixes = func() []string {
	p := make([]string, len(abi.Kinds())) // kinds are 0 to n-1
	for _, k := range abi.Kinds() {
		p[k] = k.String() + "-"
	}
	return p
}()

// objectTag is the tag of object (k, mac).
func objectTag(k abi.Kind, mac abi.MAC) string { return tagPrefix(k) + hex.EncodeToString(mac[:]) }

// markerTag is the tag that marks object (k, mac) deleted on registries
// that cannot delete.
func markerTag(k abi.Kind, mac abi.MAC) string { return markerPrefix + objectTag(k, mac) }

// parseTag returns the MAC of tag if it is prefix followed by 64 lowercase
// hex digits. Other tags, ours or not, are not objects of that kind. It
// takes bytes, as tag list pages are decoded without a string per tag.
func parseTag(prefix string, tag []byte) (abi.MAC, bool) {
	if len(tag) < len(prefix) || string(tag[:len(prefix)]) != prefix {
		return abi.MAC{}, false
	}
	return parseMAC(tag[len(prefix):])
}

// parseMAC reads 64 lowercase hex digits.
func parseMAC(h []byte) (abi.MAC, bool) {
	var mac abi.MAC
	if len(h) != 2*len(mac) {
		return mac, false
	}
	for i := range mac {
		hi, lo := hexValues[h[2*i]], hexValues[h[2*i+1]]
		if hi|lo > 0xf {
			return mac, false
		}
		mac[i] = hi<<4 | lo
	}
	return mac, true
}

// hexValues maps lowercase hex digits to their value, other bytes to 0xff.
var hexValues = func() (t [256]byte) {
	for c := range t {
		switch {
		case c >= '0' && c <= '9':
			t[c] = byte(c - '0')
		case c >= 'a' && c <= 'f':
			t[c] = byte(c - 'a' + 10)
		default:
			t[c] = 0xff
		}
	}
	return t
}()

// cacheKey names a tag in the host's cache, which every store of the host
// process shares: the same MAC may well be in two repositories (plakar sync).
func (s *Store) cacheKey(tag string) string { return s.cacheSpace + tag }

// objectKey returns the tag of object (k, mac) and its cache key, made in
// one allocation: a ranged get needs both, and little else.
func (s *Store) objectKey(k abi.Kind, mac abi.MAC) (tag, key string) {
	prefix := tagPrefix(k)
	b := make([]byte, 0, len(s.cacheSpace)+len(prefix)+hex.EncodedLen(len(mac)))
	b = append(append(b, s.cacheSpace...), prefix...)
	b = hex.AppendEncode(b, mac[:])
	key = unsafe.String(unsafe.SliceData(b), len(b)) // b is never written again
	return key[len(s.cacheSpace):], key
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
