package ocistore

import (
	"encoding/hex"
	"strconv"

	"github.com/plakar-oci/ocistore/abi"
)

// appendObjectManifest appends objectManifest(k, mac, blob).encode() to
// b, without reflection: the same bytes (TestEncodeObjectManifest checks
// it), for a fraction of the guest's time, which every put pays for
// (encoding/json costs the sandboxed guest about as much as a request:
// RATIONALE.md).
// Every string in it is a media type, a kind name, a sha256 digest or hex,
// none of which JSON escapes.
func appendObjectManifest(b []byte, k abi.Kind, mac abi.MAC, blob descriptor) []byte {
	t := artifactType(k)
	b = append(b, `{"schemaVersion":2,"mediaType":"`+mediaTypeManifest+`","artifactType":"`...)
	b = append(b, t...)
	b = append(b, `","config":{"mediaType":"`+mediaTypeEmpty+`","digest":"`+emptyDigest+`","size":`...)
	b = strconv.AppendInt(b, int64(len(emptyBlob)), 10)
	b = append(b, `},"layers":[{"mediaType":"`...)
	b = append(b, t...)
	b = append(b, `","digest":"`...)
	b = append(b, blob.Digest...)
	b = append(b, `","size":`...)
	b = strconv.AppendInt(b, blob.Size, 10)
	b = append(b, `}],"annotations":{"`+annotationKind+`":"`...)
	b = append(b, k.String()...)
	b = append(b, `","`+annotationMAC+`":"`...)
	b = hex.AppendEncode(b, mac[:])
	return append(b, `"}}`...)
}
