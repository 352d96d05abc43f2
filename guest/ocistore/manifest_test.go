package ocistore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

func TestEmptyDigest(t *testing.T) {
	sum := sha256.Sum256(emptyBlob)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != emptyDigest {
		t.Errorf("digest of %q is %s, not %s", emptyBlob, got, emptyDigest)
	}
}

func TestObjectManifest(t *testing.T) {
	mac := testMAC(0)
	blob := descriptor{Digest: "sha256:" + hex.EncodeToString(make([]byte, 32)), Size: 1234}
	got := string(objectManifest(abi.KindECCPackfile, mac, blob).encode())
	want := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"artifactType":"application/vnd.plakar.ecc-packfile.v1",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + emptyDigest + `","size":2},` +
		`"layers":[{"mediaType":"application/vnd.plakar.ecc-packfile.v1","digest":"` + blob.Digest + `","size":1234}],` +
		`"annotations":{"org.plakar.kind":"ecc-packfile","org.plakar.mac":"` + hex.EncodeToString(mac[:]) + `"}}`
	if got != want {
		t.Errorf("manifest:\n got %s\nwant %s", got, want)
	}

	layer, ok, err := parseManifest([]byte(got), artifactType(abi.KindECCPackfile))
	if err != nil || !ok || layer.Digest != blob.Digest || layer.Size != blob.Size {
		t.Errorf("parseManifest = %+v, %v, %v", layer, ok, err)
	}
	// Same bytes, another MAC: another manifest, so deleting by digest
	// never takes the other object along.
	other := string(objectManifest(abi.KindECCPackfile, testMAC(1), blob).encode())
	if digestOf([]byte(other)) == digestOf([]byte(got)) {
		t.Error("two objects with the same bytes share a manifest digest")
	}
}

func TestTombstone(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(tombstone, &m); err != nil {
		t.Fatal(err)
	}
	if m["artifactType"] != artifactTombstone || m["annotations"] != nil {
		t.Errorf("tombstone = %s", tombstone)
	}
	if tombstoneDigest != digestOf(tombstone) || !validDigest(tombstoneDigest) {
		t.Errorf("tombstoneDigest = %s", tombstoneDigest)
	}
	// A tombstone is no object of any kind.
	for _, k := range abi.Kinds() {
		if _, ok, err := parseManifest(tombstone, artifactType(k)); ok || err != nil {
			t.Errorf("parseManifest(tombstone, %s) = %v, %v", k, ok, err)
		}
	}
}

func TestParseManifest(t *testing.T) {
	want := artifactType(abi.KindPackfile)
	tests := []struct {
		name   string
		raw    string
		ok     bool
		hasErr bool
	}{
		{"not json", `<html>`, false, true},
		{"other kind", `{"artifactType":"application/vnd.plakar.state.v1","layers":[{"digest":"` + emptyDigest + `","size":2}]}`, false, false},
		{"foreign image", `{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}`, false, false},
		{"no layer", `{"artifactType":"` + want + `","layers":[]}`, false, true},
		{"two layers", `{"artifactType":"` + want + `","layers":[{"digest":"` + emptyDigest + `"},{"digest":"` + emptyDigest + `"}]}`, false, true},
		{"bad digest", `{"artifactType":"` + want + `","layers":[{"digest":"sha256:../../x","size":2}]}`, false, true},
		{"negative size", `{"artifactType":"` + want + `","layers":[{"digest":"` + emptyDigest + `","size":-1}]}`, false, true},
		{"good", `{"artifactType":"` + want + `","layers":[{"digest":"` + emptyDigest + `","size":2}]}`, true, false},
	}
	for _, tt := range tests {
		_, ok, err := parseManifest([]byte(tt.raw), want)
		if ok != tt.ok || (err != nil) != tt.hasErr {
			t.Errorf("%s: parseManifest = %v, %v", tt.name, ok, err)
		}
	}
}

// Registries may refuse manifests over 4 MiB (the OCI distribution spec's
// limit, maxManifest here); the store's are a few hundred bytes whatever
// the kind, MAC and blob size, far below it.
func TestManifestSizeBound(t *testing.T) {
	const bound = 1 << 10
	var mac abi.MAC
	for i := range mac {
		mac[i] = 0xff
	}
	blob := descriptor{Digest: "sha256:" + strings.Repeat("f", 64), Size: math.MaxInt64}
	sizes := map[string]int{
		"config":    len(configManifest(blob).encode()),
		"tombstone": len(tombstone),
	}
	for _, k := range abi.Kinds() {
		sizes[k.String()] = len(objectManifest(k, mac, blob).encode())
	}
	for what, n := range sizes {
		if n > bound || n > maxManifest {
			t.Errorf("the %s manifest is %d bytes, more than %d", what, n, bound)
		}
	}
	if maxManifest != 4<<20 {
		t.Errorf("maxManifest = %d, want the spec's 4 MiB", maxManifest)
	}
}
