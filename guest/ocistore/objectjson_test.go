package ocistore

import (
	"bytes"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

func TestEncodeObjectManifest(t *testing.T) {
	mac := abi.MAC{0xde, 0xad, 31: 0xff}
	blob := descriptor{MediaType: mediaTypeBlob, Digest: emptyDigest, Size: 16 << 20}
	for _, k := range abi.Kinds() {
		want := objectManifest(k, mac, blob).encode()
		if got := appendObjectManifest(nil, k, mac, blob); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", k, got, want)
		}
	}
}
