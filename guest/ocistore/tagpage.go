package ocistore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// A page of the tag list is decoded by hand, not with encoding/json: a
// page is a thousand tags, and reflection allocating a string for each
// made listing in the sandbox several times slower than natively
// (RATIONALE.md, "what the sandbox costs"). The scanner reads the page
// once, checks it is JSON, and reads it as encoding/json would into
// struct{ Tags []string }: the last key that matches "tags" without regard
// to case wins; null is no tags. A null tag is refused: encoding/json reads
// it as whatever its slice held there before, and no registry sends one.
// Our tags are decoded straight from the page's bytes into MACs; only a
// tag with escapes or non-ASCII bytes (never one of ours) goes through
// encoding/json. FuzzTagPage holds the scanner to encoding/json.

// maxDepth is how deep the scanner follows nested values, as encoding/json
// does (10000), so that a hostile page cannot exhaust the stack.
const maxDepth = 10000

// pageInfo is what listTags needs of one page of the tag list.
type pageInfo struct {
	n      int    // how many tags the page has
	last   string // its last tag
	sorted bool   // whether they are sorted, none twice
	beyond bool   // whether, sorted, they went past the prefix: no later page has one of ours
}

// parseTagPage decodes one page of a tag list and appends to macs the MAC
// of every tag that is prefix followed by 64 lowercase hex digits. It reads
// the page once.
func parseTagPage(raw []byte, prefix string, macs []abi.MAC) (pageInfo, []abi.MAC, error) {
	sc := scanner{b: raw}
	sc.ws()
	if sc.literal("null") {
		// encoding/json reads null into a struct as nothing at all.
		if sc.ws(); sc.i == len(sc.b) {
			return pageInfo{sorted: true}, macs, nil
		}
		return pageInfo{}, macs, sc.fail("the end of the tag list")
	}
	if sc.peek() != '{' {
		return pageInfo{}, macs, errors.New("the tag list is not a JSON object")
	}
	sc.i++
	base := len(macs)
	info := pageInfo{sorted: true}
	for first := true; ; first = false {
		sc.ws()
		if sc.peek() == '}' && first {
			sc.i++
			break
		}
		key, ok := sc.str()
		if !ok {
			return pageInfo{}, macs, sc.fail("a key")
		}
		if sc.ws(); sc.peek() != ':' {
			return pageInfo{}, macs, sc.fail("':'")
		}
		sc.i++
		sc.ws()
		if keyIsTags(key) {
			// The last tags key wins, as in encoding/json.
			var err error
			if info, macs, err = sc.tags(prefix, macs[:base]); err != nil {
				return pageInfo{}, macs, err
			}
		} else if !sc.value(1) {
			return pageInfo{}, macs, sc.fail("a value")
		}
		sc.ws()
		switch sc.peek() {
		case ',':
			sc.i++
			continue
		case '}':
			sc.i++
		default:
			return pageInfo{}, macs, sc.fail("',' or '}'")
		}
		break
	}
	if sc.ws(); sc.i != len(sc.b) {
		return pageInfo{}, macs, sc.fail("the end of the tag list")
	}
	return info, macs, nil
}

// errNullTag refuses a page whose tags include null.
var errNullTag = errors.New("the tag list has a null tag")

// tags reads the value of a tags key: an array of strings, or null.
func (s *scanner) tags(prefix string, macs []abi.MAC) (pageInfo, []abi.MAC, error) {
	info := pageInfo{sorted: true}
	if s.literal("null") {
		return info, macs, nil
	}
	if s.peek() != '[' {
		return info, macs, errors.New("the tags of the tag list are not an array")
	}
	s.i++
	m := newPrefixMatch(prefix)
	var prev []byte
	prevMAC := -1 // where prev's MAC is in macs, if prev is one of ours
	for s.ws(); s.peek() != ']'; s.ws() {
		if info.n > 0 {
			if s.peek() != ',' {
				return info, macs, s.fail("',' or ']'")
			}
			s.i++
			s.ws()
		}
		// The MAC is decoded in place: a MAC returned by value is copied
		// at each return, and the sandbox pays for each copy.
		macs = append(macs, abi.MAC{})
		if tag, ok := s.ourTag(&m, &macs[len(macs)-1]); ok {
			// Two of ours sort as their MACs do, most often told apart by
			// their first eight bytes.
			if info.n > 0 && info.sorted {
				if prevMAC >= 0 {
					info.sorted = macLess(&macs[prevMAC], &macs[len(macs)-1])
				} else {
					info.sorted = less(prev, tag)
				}
			}
			info.n++
			// Most often the rest of the page follows, a run of ours.
			var run int
			if macs, run = s.ourRun(&m, macs, &info); run > 0 {
				tag = s.b[s.i-1-len(tag) : s.i-1]
			}
			prev, prevMAC = tag, len(macs)-1
			continue
		}
		macs = macs[:len(macs)-1]
		tag, ok := s.tag()
		if !ok {
			if s.literal("null") {
				return info, macs, errNullTag
			}
			return info, macs, s.fail("a tag")
		}
		hasPrefix := len(tag) >= len(prefix) && string(tag[:len(prefix)]) == prefix
		if mac, ok := parseTag(prefix, tag); ok {
			macs = append(macs, mac)
		}
		info.n++
		if info.n > 1 && info.sorted && !less(prev, tag) {
			info.sorted = false
		}
		prev, prevMAC = tag, -1
		if !hasPrefix && info.sorted && !info.beyond && string(tag) > prefix {
			info.beyond = true
		}
	}
	s.i++
	info.last = string(prev)
	return info, macs, nil
}

// ourTag reads the next value if it is a string that is m's prefix
// followed by a MAC in lowercase hex, decodes the MAC into mac, and
// returns the string's content. Such a string has no escapes, so it is
// read without the byte-by-byte walk of tag: most tags of a page are ours,
// and the sandbox runs that walk 15 to 30 times slower than native code.
func (s *scanner) ourTag(m *prefixMatch, mac *abi.MAC) (tag []byte, ok bool) {
	start := s.i + 1
	end := start + len(m.prefix) + 2*len(mac) // the closing quote
	if !m.raw || end >= len(s.b) || s.b[s.i] != '"' || s.b[end] != '"' || !m.match(s.b[start:end]) {
		return nil, false
	}
	if !decodeMAC(mac, s.b[start+len(m.prefix):end]) {
		return nil, false
	}
	s.i = end + 1
	return s.b[start:end], true
}

// ourRun reads the run of our tags that follows one of ours, written as
// registries write them: each after a comma, with no space. It decodes
// them into macs as ourTag does, counts them in info and checks their
// order, and stops before anything else, which the caller reads. It is
// the scanner's fast path: a tag of the run costs three calls (match,
// decodeMAC, macLess) and none of the general loop's work around them.
func (s *scanner) ourRun(m *prefixMatch, macs []abi.MAC, info *pageInfo) (_ []abi.MAC, run int) {
	b, i := s.b, s.i
	size := len(m.prefix) + 2*abi.MACSize
	for ; ; run++ {
		// ,"<prefix><hex>"
		start := i + 2
		end := start + size
		if end >= len(b) || b[i] != ',' || b[start-1] != '"' || b[end] != '"' || !m.match(b[start:end]) {
			break
		}
		macs = append(macs, abi.MAC{})
		mac := &macs[len(macs)-1]
		if !decodeMAC(mac, b[start+len(m.prefix):end]) {
			macs = macs[:len(macs)-1]
			break
		}
		if info.sorted && !macLess(&macs[len(macs)-2], mac) {
			info.sorted = false
		}
		info.n++
		i = end + 1
	}
	s.i = i
	return macs, run
}

// prefixMatch tells whether bytes start with a prefix, eight at a time: a
// page compares a thousand tags with it, and the sandbox pays for each
// call of the runtime's comparison as much as for decoding the MAC.
type prefixMatch struct {
	prefix string
	// The prefix in little-endian words, the last one padded with zeros:
	// an array, as a slice would be allocated at every page.
	words [maxPrefix / 8]uint64
	n     int    // how many words the prefix has
	last  uint64 // the mask of the last word's bytes
	// raw is whether a string that starts with the prefix in the page
	// starts with it once decoded: the prefix is printable ASCII, has no
	// quote or backslash, and leaves room in a tag for a MAC. Ours all
	// are; others take the slow path.
	raw bool
}

// maxPrefix is the longest prefix that a tag (128 bytes at most) can have
// before a MAC in hex.
const maxPrefix = 128 - 2*abi.MACSize

func newPrefixMatch(prefix string) prefixMatch {
	m := prefixMatch{prefix: prefix, last: ^uint64(0), raw: len(prefix) <= maxPrefix}
	for _, c := range []byte(prefix) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			m.raw = false
		}
	}
	if !m.raw {
		return m
	}
	var w [8]byte
	for i := 0; i < len(prefix); i += 8 {
		clear(w[:])
		copy(w[:], prefix[i:])
		m.words[m.n] = binary.LittleEndian.Uint64(w[:])
		m.n++
	}
	if r := len(prefix) % 8; r != 0 {
		m.last = 1<<(8*r) - 1
	}
	return m
}

// match tells whether b starts with the prefix; b has at least 8 bytes
// more than the prefix.
func (m *prefixMatch) match(b []byte) bool {
	n := m.n
	if n == 0 {
		return true
	}
	for i, w := range m.words[:n-1] {
		if binary.LittleEndian.Uint64(b[8*i:]) != w {
			return false
		}
	}
	return binary.LittleEndian.Uint64(b[8*(n-1):])&m.last == m.words[n-1]
}

// macLess is compareMAC(*a, *b) < 0, most often from the first words.
func macLess(a, b *abi.MAC) bool {
	x, y := binary.BigEndian.Uint64(a[:]), binary.BigEndian.Uint64(b[:])
	if x != y {
		return x < y
	}
	return compareMAC(*a, *b) < 0
}

// less is bytes.Compare(a, b) < 0 written out: tags differ within their
// first bytes, and the sandbox pays for each call bytes.Compare makes.
func less(a, b []byte) bool {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}

// keyIsTags matches a key as encoding/json matches it to a field named
// Tags: without regard to case, escapes decoded.
func keyIsTags(raw []byte) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return bytes.EqualFold(raw, []byte("tags"))
	}
	var k string
	return json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &k) == nil && strings.EqualFold(k, "tags")
}

// scanner walks JSON text. Its methods report whether what they expected
// was there; none of them panics on malformed input.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) fail(want string) error {
	if s.i >= len(s.b) {
		return fmt.Errorf("the tag list is not JSON: it ends where %s should be", want)
	}
	return fmt.Errorf("the tag list is not JSON: %q at offset %d where %s should be", s.b[s.i], s.i, want)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) literal(lit string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// str reads a string and returns its raw content, escapes undecoded.
func (s *scanner) str() ([]byte, bool) {
	raw, _, ok := s.rawString()
	return raw, ok
}

// rawString is str, and tells whether the string is plain: no escapes, no
// bytes encoding/json may replace (invalid UTF-8), so its raw content is
// its value.
func (s *scanner) rawString() (raw []byte, plain, ok bool) {
	if s.peek() != '"' {
		return nil, false, false
	}
	start := s.i + 1
	plain = true
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], plain, true
		case c < 0x20:
			return nil, false, false
		case c >= 0x80:
			plain = false
		case c == '\\':
			plain = false
			i++
			if i >= len(s.b) {
				return nil, false, false
			}
			switch s.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(s.b) || !isHexDigits(s.b[i+1:i+5]) {
					return nil, false, false
				}
				i += 4
			default:
				return nil, false, false
			}
		}
	}
	return nil, false, false
}

// tag reads a string, decoded.
func (s *scanner) tag() ([]byte, bool) {
	start := s.i
	raw, plain, ok := s.rawString()
	if !ok || plain {
		return raw, ok
	}
	var t string
	if json.Unmarshal(s.b[start:s.i], &t) != nil {
		return nil, false
	}
	return []byte(t), true
}

// value skips one JSON value, inside depth objects and arrays.
func (s *scanner) value(depth int) bool {
	switch c := s.peek(); {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return false
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		s.ws()
		if s.peek() == end {
			s.i++
			return true
		}
		for {
			if c == '{' {
				if _, ok := s.str(); !ok {
					return false
				}
				if s.ws(); s.peek() != ':' {
					return false
				}
				s.i++
				s.ws()
			}
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			switch s.peek() {
			case ',':
				s.i++
				s.ws()
			case end:
				s.i++
				return true
			default:
				return false
			}
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

// number skips -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	s.literal("-")
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func isHexDigits(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
