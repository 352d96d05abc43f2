package ocistore

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

const (
	configTag    = "config"
	markerPrefix = "deleted-"
	// deletionModeTag records how the registry deletes (Delete): every
	// process of the store reads it, rather than each learning it from a
	// refused request.
	deletionModeTag = "deletion-mode"
)

// tagPrefix is what every tag of kind k starts with.
func tagPrefix(k abi.Kind) string { return tagPrefixes.of(k) }

var tagPrefixes = newPerKind(func(k abi.Kind) string { return k.String() + "-" })

// perKind is a string of every kind, made once rather than at every call.
type perKind struct {
	s    []string
	make func(abi.Kind) string // for kinds the contract does not define
}

func newPerKind(f func(abi.Kind) string) perKind {
	p := perKind{s: make([]string, len(abi.Kinds())), make: f} // kinds are 0 to n-1
	for _, k := range abi.Kinds() {
		p.s[k] = f(k)
	}
	return p
}

func (p perKind) of(k abi.Kind) string {
	if int(k) < len(p.s) {
		return p.s[k]
	}
	return p.make(k)
}

// ObjectTag is the tag of object (k, mac): the store's layout, which
// other clients of the same repository (the benchmark's raw one) read
// objects by.
func ObjectTag(k abi.Kind, mac abi.MAC) string { return tagPrefix(k) + hex.EncodeToString(mac[:]) }

// parseTag returns the MAC of tag if it is prefix followed by 64 lowercase
// hex digits. Other tags, ours or not, are not objects of that kind. It
// takes bytes, as tag list pages are decoded without a string per tag.
func parseTag(prefix string, tag []byte) (abi.MAC, bool) {
	if len(tag) < len(prefix) || string(tag[:len(prefix)]) != prefix {
		return abi.MAC{}, false
	}
	return parseMAC(tag[len(prefix):])
}

// parseMAC reads 64 lowercase hex digits, eight at a time: a list decodes
// one MAC per object, and a loop over bytes and a table costs about 2.5
// times as much in the sandbox. FuzzParseTag holds it to hex.Decode.
func parseMAC(h []byte) (mac abi.MAC, ok bool) {
	ok = decodeMAC(&mac, h)
	return mac, ok
}

// decodeMAC is parseMAC into mac.
func decodeMAC(mac *abi.MAC, h []byte) bool {
	if len(h) != 2*len(mac) {
		return false
	}
	var bad uint64
	for i := 0; i < len(mac)/4; i++ {
		v := binary.LittleEndian.Uint64(h[8*i:])
		letter := atLeast(v, 'a') &^ atLeast(v, 'f'+1)
		digit := atLeast(v, '0') &^ atLeast(v, '9'+1)
		bad |= (letter | digit) ^ highBits | v&highBits
		// A nibble a byte, the first digit in the lowest byte: '0'-'9'
		// end in 0-9, 'a'-'f' in 1-6.
		x := v&(0x0f*bytesOf) + letter>>7*9
		x = (x&0x000f000f000f000f)<<4 | (x&0x0f000f000f000f00)>>8
		x = (x | x>>8) & 0x0000ffff0000ffff
		x = (x | x>>16) & 0xffffffff
		binary.LittleEndian.PutUint32(mac[4*i:], uint32(x))
	}
	return bad == 0
}

const (
	bytesOf  = 0x0101010101010101 // times c: c in every byte
	highBits = 0x80 * bytesOf
)

// atLeast has the high bit of each byte of v that is c or more, for bytes
// below 0x80 (any other makes parseMAC fail anyway).
func atLeast(v uint64, c uint64) uint64 { return (v + (0x80-c)*bytesOf) & highBits }

// cacheKey names a tag in the host's cache, which every store of the host
// process shares: the same MAC may well be in two repositories (plakar sync).
func (s *Store) cacheKey(tag string) string { return s.cacheSpace + tag }

// objectKey returns the tag of object (k, mac) and its cache key, one
// string of the call's memory: a ranged get needs both, and little else.
func (s *Store) objectKey(k abi.Kind, mac abi.MAC) (tag, key string) {
	prefix := s.tagPrefix(k)
	key = s.mem.String(func(b []byte) []byte {
		return hex.AppendEncode(append(append(b, s.cacheSpace...), prefix...), mac[:])
	})
	return key[len(s.cacheSpace):], key
}

// cacheable tells whether the blob behind k's tags never changes. Locks are
// put again under the same MAC with new bytes, possibly by another process,
// so a cached digest could serve a stale lock.
func cacheable(k abi.Kind) bool { return k != abi.KindLock }

// cacheValue and parseCacheValue encode a blob's digest and size: Get needs
// both to verify a download without reading the manifest.
func (s *Store) cacheValue(d descriptor) string {
	return s.mem.String(func(b []byte) []byte { return strconv.AppendInt(append(append(b, d.Digest...), ' '), d.Size, 10) })
}

func parseCacheValue(v string) (descriptor, bool) {
	dg, sz, ok := strings.Cut(v, " ")
	size, isNumber := parseDecimal(sz)
	if !ok || !isNumber || size > math.MaxInt64 || !validDigest(dg) {
		return descriptor{}, false
	}
	return descriptor{Digest: dg, Size: int64(size)}, true
}
