package ocistore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

func testMAC(b byte) abi.MAC {
	var m abi.MAC
	for i := range m {
		m[i] = b + byte(i)
	}
	return m
}

// ourStore is a store in our layout, for the tags it makes.
var ourStore = &Store{lay: ourLayout}

func TestTags(t *testing.T) {
	mac := testMAC(0xa0)
	hex := "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
	if got, want := ObjectTag(abi.KindPackfile, mac), "packfile-"+hex; got != want {
		t.Errorf("ObjectTag = %q, want %q", got, want)
	}
	if got, want := ObjectTag(abi.KindECCState, mac), "ecc-state-"+hex; got != want {
		t.Errorf("ObjectTag = %q, want %q", got, want)
	}
	if got, want := ourStore.markerTag(abi.KindLock, mac), "deleted-lock-"+hex; got != want {
		t.Errorf("markerTag = %q, want %q", got, want)
	}
	for _, k := range abi.Kinds() {
		// OCI tags are at most 128 characters.
		if n := len(ourStore.markerTag(k, mac)); n > 128 {
			t.Errorf("marker tag of %s is %d characters", k, n)
		}
	}

	tests := []struct {
		prefix, tag string
		ok          bool
	}{
		{"packfile-", "packfile-" + hex, true},
		{"packfile-", "ecc-packfile-" + hex, false},
		{"state-", "ecc-state-" + hex, false},
		{"packfile-", "packfile-" + strings.ToUpper(hex), false},
		{"packfile-", "packfile-" + hex[:62], false},
		{"packfile-", "packfile-" + hex + "00", false},
		{"packfile-", "packfile-" + hex[:63] + "g", false},
		{"packfile-", "deleted-packfile-" + hex, false},
		{"deleted-packfile-", "deleted-packfile-" + hex, true},
		{"packfile-", "config", false},
		{"packfile-", "latest", false},
	}
	for _, tt := range tests {
		got, ok := parseTag(tt.prefix, []byte(tt.tag))
		if ok != tt.ok {
			t.Errorf("parseTag(%q, %q) ok = %v, want %v", tt.prefix, tt.tag, ok, tt.ok)
		}
		if ok && got != mac {
			t.Errorf("parseTag(%q, %q) = %x", tt.prefix, tt.tag, got)
		}
	}
}

func TestCacheValue(t *testing.T) {
	s, err := New(nil, map[string]string{OptionLocation: "oci://reg:5000/team/backups"})
	if err != nil {
		t.Fatal(err)
	}
	d := descriptor{Digest: emptyDigest, Size: 2}
	v := s.cacheValue(d)
	got, ok := parseCacheValue(v)
	if !ok || got.Digest != d.Digest || got.Size != d.Size {
		t.Errorf("parseCacheValue(%q) = %+v, %v", v, got, ok)
	}
	for _, bad := range []string{"", emptyDigest, emptyDigest + " -1", emptyDigest + " x", "sha512:ab 2", "sha256:../../x 2"} {
		if _, ok := parseCacheValue(bad); ok {
			t.Errorf("parseCacheValue(%q) accepted", bad)
		}
	}
	if got, want := s.cacheKey("packfile-ab"), "reg:5000/team/backups:packfile-ab"; got != want {
		t.Errorf("cacheKey = %q, want %q", got, want)
	}
	mac := abi.MAC{0xab, 31: 0x01}
	s.lay = ourLayout
	for _, k := range abi.Kinds() {
		tag, key := s.objectKey(k, mac)
		if tag != ObjectTag(k, mac) || key != s.cacheKey(tag) {
			t.Errorf("objectKey(%v) = %q, %q; want %q, %q", k, tag, key, ObjectTag(k, mac), s.cacheKey(ObjectTag(k, mac)))
		}
	}
}

// Benchmarks of the guest's hot loops. The sandbox runs them 5 to 30 times
// slower than native code, and not in the same proportions, so measure
// them compiled to wasm: `make bench-guest`.

// BenchmarkParseTagPage decodes a page of a thousand tags, as a list does
// for every thousand objects.
func BenchmarkParseTagPage(b *testing.B) {
	// A page as registries send it: sorted.
	macs := make([]abi.MAC, 1000)
	for i := range macs {
		macs[i] = sha256.Sum256(fmt.Appendf(nil, "%d", i))
	}
	slices.SortFunc(macs, compareMAC)
	page := []byte(`{"name":"bench/list","tags":[`)
	for i, mac := range macs {
		if i > 0 {
			page = append(page, ',')
		}
		page = append(append(page, '"'), tagPrefix(abi.KindPackfile)...)
		page = append(hex.AppendEncode(page, mac[:]), '"')
	}
	page = append(page, "]}"...)
	b.SetBytes(int64(len(page)))
	for b.Loop() {
		var err error
		if _, macs, err = parseTagPage(page, tagPrefix(abi.KindPackfile), macs[:0]); err != nil || len(macs) != 1000 {
			b.Fatalf("%d MACs, %v", len(macs), err)
		}
	}
}

func BenchmarkParseMAC(b *testing.B) {
	mac := sha256.Sum256([]byte("mac"))
	h := hex.AppendEncode(nil, mac[:])
	if got, ok := parseMAC(h); !ok || got != mac {
		b.Fatal(got, ok)
	}
	for b.Loop() {
		parseMAC(h)
	}
}
