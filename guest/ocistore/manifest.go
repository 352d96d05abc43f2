package ocistore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"unsafe"

	"github.com/plakar-oci/ocistore/abi"
)

// Media types and annotations of the layout (see the package comment).
const (
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeEmpty    = "application/vnd.oci.empty.v1+json"
	mediaTypeBlob     = "application/octet-stream"
	// mediaTypeImageConfig is the config of the upstream layout's manifests.
	mediaTypeImageConfig = "application/vnd.oci.image.config.v1+json"

	artifactConfig    = "application/vnd.plakar.config.v1"
	artifactTombstone = "application/vnd.plakar.tombstone.v1"

	artifactDeletionMode = "application/vnd.plakar.deletion-mode.v1"
	annotationDeletes    = "org.plakar.deletes"

	annotationKind = "org.plakar.kind"
	annotationMAC  = "org.plakar.mac"

	// emptyDigest is the digest of emptyBlob, fixed by the OCI image spec.
	emptyDigest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)

var emptyBlob = []byte("{}")

// artifactType is the artifactType (and layer media type) of kind k.
func artifactType(k abi.Kind) string { return artifactTypes.of(k) }

var artifactTypes = newPerKind(func(k abi.Kind) string { return "application/vnd.plakar." + k.String() + ".v1" })

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

var emptyDescriptor = descriptor{MediaType: mediaTypeEmpty, Digest: emptyDigest, Size: int64(len(emptyBlob))}

// manifest is the part of an OCI image manifest this package writes and
// reads. encoding/json sorts map keys, so a manifest always encodes to the
// same bytes: tombstones rely on it to share one digest.
type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

func (m *manifest) encode() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // only strings and ints: cannot fail
	}
	return b
}

// artifactManifest is an artifact of type typ whose bytes are blob, its
// one layer: what objects, the configuration and the graveyard are.
func artifactManifest(typ string, blob descriptor, annotations map[string]string) *manifest {
	return &manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		ArtifactType:  typ,
		Config:        emptyDescriptor,
		Layers:        []descriptor{{MediaType: typ, Digest: blob.Digest, Size: blob.Size}},
		Annotations:   annotations,
	}
}

// objectManifest describes object (k, mac) whose bytes are blob.
func objectManifest(k abi.Kind, mac abi.MAC, blob descriptor) *manifest {
	return artifactManifest(artifactType(k), blob, map[string]string{annotationKind: k.String(), annotationMAC: hex.EncodeToString(mac[:])})
}

func configManifest(blob descriptor) *manifest {
	return artifactManifest(artifactConfig, blob, map[string]string{annotationKind: "config"})
}

// tombstone is the one manifest every deleted object's tag points to on
// registries that cannot delete.
var tombstone = (&manifest{
	SchemaVersion: 2,
	MediaType:     mediaTypeManifest,
	ArtifactType:  artifactTombstone,
	Config:        emptyDescriptor,
	Layers:        []descriptor{emptyDescriptor},
}).encode()

var tombstoneDigest = digestOf(tombstone)

// deletionModeManifests are the records of how a registry deletes, by
// way (deleteByTag needs none: it is the default), and
// deletionModeDigests their digests, which a HEAD of the record's tag
// is compared with.
var (
	deletionModeManifests = [...][]byte{
		deleteByDigest:    deletionModeManifest("digest"),
		deleteByTombstone: deletionModeManifest("tombstone"),
	}
	deletionModeDigests = [...]string{
		deleteByDigest:    digestOf(deletionModeManifests[deleteByDigest]),
		deleteByTombstone: digestOf(deletionModeManifests[deleteByTombstone]),
	}
)

func deletionModeManifest(way string) []byte {
	return (&manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		ArtifactType:  artifactDeletionMode,
		Config:        emptyDescriptor,
		Layers:        []descriptor{emptyDescriptor},
		Annotations:   map[string]string{annotationDeletes: way},
	}).encode()
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// parseManifest decodes a manifest this package wrote and returns its
// artifactType and, for an artifact of want, its only layer. A tombstone,
// or an artifact of another type, yields ok false: the caller reports the
// object missing. Anything else malformed is an error.
func parseManifest(raw []byte, want string) (layer descriptor, ok bool, err error) {
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return descriptor{}, false, fmt.Errorf("the manifest is not valid JSON: %v", err)
	}
	if m.ArtifactType != want {
		return descriptor{}, false, nil
	}
	if len(m.Layers) != 1 {
		return descriptor{}, false, fmt.Errorf("the %s manifest has %d layers, not 1", want, len(m.Layers))
	}
	l := m.Layers[0]
	if !validDigest(l.Digest) || l.Size < 0 {
		return descriptor{}, false, fmt.Errorf("the %s manifest's layer has digest %q and size %d", want, l.Digest, l.Size)
	}
	return l, true, nil
}

// validDigest accepts sha256 digests only: the host computes sha256, and a
// digest goes into request paths, so it must not carry anything else.
func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	return ok && isHex64(h)
}

// isHex64 tells whether s is 64 lowercase hex digits, eight at a time
// (decodeMAC): every get checks the digest it found in the cache.
func isHex64(s string) bool {
	var mac abi.MAC
	return decodeMAC(&mac, unsafe.Slice(unsafe.StringData(s), len(s)))
}
