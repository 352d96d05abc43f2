package ocistore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

// Fuzz targets for what the store decodes from a registry: Link headers,
// tag lists, manifests, Retry-After. Seed corpora are in testdata/fuzz;
// `make fuzz` runs each target for a few seconds.

func FuzzNextLink(f *testing.F) {
	f.Add(`</v2/team/backups/tags/list?last=packfile-ab&n=1000>; rel="next"`)
	f.Add(`</a>; title="a, </b>; rel=next"; rel="prev", </c>; rel="next"`)
	f.Fuzz(func(t *testing.T, header string) {
		// One header value a line, as several Link headers.
		values := strings.Split(header, "\n")
		target := nextLink(values)
		if target == "" {
			return
		}
		if strings.Contains(target, ">") || !strings.Contains(header, target) {
			t.Fatalf("nextLink(%q) = %q: not a link target of the header", values, target)
		}
		if target != strings.TrimSpace(target) {
			t.Fatalf("nextLink(%q) = %q: not trimmed", values, target)
		}
		base := "/v2/team/backups/tags/list?n=1000&last=packfile-"
		got := resolveLink(base, target)
		if strings.HasPrefix(target, "/") || strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "http://") {
			if got != target {
				t.Fatalf("resolveLink(%q) = %q: an absolute target must stay as it is", target, got)
			}
		}
	})
}

// FuzzTagPage checks the hand-written tag list decoder against
// encoding/json: the same pages accepted, the same tags read.
func FuzzTagPage(f *testing.F) {
	f.Add([]byte(`{"name":"team/backups","tags":["config","packfile-00","state-01"]}`), "packfile-")
	f.Add([]byte(`{"tags":null}`), "state-")
	f.Add([]byte(`{"name":"x","tags":["packfile-`+strings.Repeat("ab", 32)+`","state-`+strings.Repeat("0f", 32)+`"],"n":[1,-2.5e3,{"a":true}]}`), "packfile-")
	// Ours out of order, told apart in their first and in their last
	// eight bytes; and the empty prefix.
	f.Add([]byte(`{"tags":["lock-`+strings.Repeat("1", 64)+`","lock-`+strings.Repeat("0", 64)+`","lock-`+strings.Repeat("0", 63)+`1","lock-`+strings.Repeat("0", 64)+`"]}`), "lock-")
	f.Add([]byte(`{"tags":["`+strings.Repeat("a", 64)+`","`+strings.Repeat("b", 64)+`"]}`), "")
	// A run of ours (ourRun) broken by a space, by a tag with a bad
	// digit, and by a tag not ours.
	run := func(h string) string { return `"packfile-` + strings.Repeat(h, 32) + `"` }
	f.Add([]byte(`{"tags":[`+run("01")+`,`+run("02")+`, `+run("03")+`,`+run("04")+`,`+run("0g")+`,`+run("05")+`,"packfile-x",`+run("06")+`]}`), "packfile-")
	f.Add([]byte(`{"TAGS":["b","a\u0041",null],"Tags":["c\n","c"]}`), "c")
	f.Fuzz(func(t *testing.T, raw []byte, prefix string) {
		info, macs, err := parseTagPage(raw, prefix, nil)
		var page struct {
			Tags []string `json:"tags"`
		}
		jerr := json.Unmarshal(raw, &page)
		if errors.Is(err, errNullTag) {
			return // encoding/json's reading of null tags is no reference
		}
		if (err == nil) != (jerr == nil) {
			t.Fatalf("parseTagPage: %v; encoding/json: %v", err, jerr)
		}
		if err != nil {
			return
		}
		want := pageInfo{n: len(page.Tags), sorted: true}
		var wantMACs []abi.MAC
		for i, tag := range page.Tags {
			if i > 0 && page.Tags[i-1] >= tag {
				want.sorted = false
			}
			if strings.HasPrefix(tag, prefix) {
				if mac, ok := parseTag(prefix, []byte(tag)); ok {
					wantMACs = append(wantMACs, mac)
				}
			} else if want.sorted && tag > prefix {
				want.beyond = true
			}
			want.last = tag
		}
		if info != want || !slices.Equal(macs, wantMACs) {
			t.Fatalf("parseTagPage = %+v, %x; encoding/json gives %+v, %x", info, macs, want, wantMACs)
		}
	})
}

func FuzzParseTag(f *testing.F) {
	f.Add("packfile-" + strings.Repeat("ab", 32))
	f.Add("deleted-lock-" + strings.Repeat("0f", 32))
	// Each byte around the ranges of lowercase hex digits, and one past ASCII.
	for _, c := range "/0:9`afgAF\x7f\u0080" {
		f.Add("state-" + strings.Repeat("0", 63) + string(c))
		f.Add("state-" + string(c) + strings.Repeat("0", 63))
	}
	f.Fuzz(func(t *testing.T, tag string) {
		for _, k := range abi.Kinds() {
			for _, prefix := range []string{tagPrefix(k), markerPrefix + tagPrefix(k)} {
				mac, ok := parseTag(prefix, []byte(tag))
				digits, hasPrefix := strings.CutPrefix(tag, prefix)
				decoded, err := hex.DecodeString(digits)
				if lowerHex := hasPrefix && err == nil && len(decoded) == len(mac) && digits == strings.ToLower(digits); lowerHex != ok || ok && !bytes.Equal(decoded, mac[:]) {
					t.Fatalf("parseTag(%q, %q) = %x, %v; the hex digits are %x, %v", prefix, tag, mac, ok, decoded, err)
				}
				if !ok {
					continue
				}
				want := ObjectTag(k, mac)
				if prefix != tagPrefix(k) {
					want = ourStore.markerTag(k, mac)
				}
				if want != tag {
					t.Fatalf("parseTag(%q, %q) = %x, whose tag is %q", prefix, tag, mac, want)
				}
			}
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	blob := descriptor{Digest: emptyDigest, Size: 2}
	f.Add(objectManifest(abi.KindPackfile, testMAC(1), blob).encode())
	f.Add(tombstone)
	f.Add(configManifest(blob).encode())
	f.Fuzz(func(t *testing.T, raw []byte) {
		wants := []string{artifactConfig, artifactTombstone, ""}
		for _, k := range abi.Kinds() {
			wants = append(wants, artifactType(k))
		}
		for _, want := range wants {
			layer, ok, err := parseManifest(raw, want)
			if err != nil && ok {
				t.Fatalf("parseManifest(%q) is both ok and an error: %v", want, err)
			}
			if !ok {
				continue
			}
			if !validDigest(layer.Digest) || layer.Size < 0 {
				t.Fatalf("parseManifest(%q) accepted layer %+v", want, layer)
			}
			// What the store would write for that layer reads back the same.
			if want == artifactConfig {
				continue
			}
			for _, k := range abi.Kinds() {
				if artifactType(k) != want {
					continue
				}
				again, ok, err := parseManifest(objectManifest(k, testMAC(9), layer).encode(), want)
				if err != nil || !ok || again.Digest != layer.Digest || again.Size != layer.Size {
					t.Fatalf("round trip of %+v: %+v, %v, %v", layer, again, ok, err)
				}
			}
		}
	})
}

func FuzzRetryAfter(f *testing.F) {
	f.Add("120")
	f.Add("Sun, 01 Jun 2025 12:00:03 GMT")
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d := retryAfter(v, now)
		if d < 0 {
			t.Fatalf("retryAfter(%q) = %v", v, d)
		}
	})
}

func FuzzParseDecimal(f *testing.F) {
	for _, s := range []string{"0", "42", "18446744073709551615", "18446744073709551616", "99999999999999999999", "", "-1", "+1", "1_000", " 1", "0x10", "007"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseDecimal(s)
		want, err := strconv.ParseUint(s, 10, 64)
		if ok != (err == nil) || ok && got != want {
			t.Fatalf("parseDecimal(%q) = %d, %v; strconv.ParseUint gives %d, %v", s, got, ok, want, err)
		}
	})
}
