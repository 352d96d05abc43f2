// Package ocistore is the OCI store's logic: a Kloset store kept whole in
// one repository of an OCI registry. It is written against abi.Host only,
// so it runs the same inside the wasm guest (through the host's imports)
// and natively (in tests, against an in-process registry).
//
// # Layout
//
// A store at oci://<registry>/<repository> is that one OCI repository.
// Every object (packfile, state, lock, ecc-packfile, ecc-state) is:
//
//   - one blob holding the object's bytes, and
//   - one OCI 1.1 image manifest (application/vnd.oci.image.manifest.v1+json)
//     whose artifactType is application/vnd.plakar.<kind>.v1, whose config
//     is the OCI empty descriptor (application/vnd.oci.empty.v1+json, the
//     two bytes "{}"), whose single layer is the blob with media type
//     application/vnd.plakar.<kind>.v1, and whose annotations are
//     org.plakar.kind (the kind) and org.plakar.mac (the MAC in hex),
//   - tagged <kind>-<MAC in 64 lowercase hex digits>, for instance
//     packfile-3f2a…e9.
//
// The MAC annotation makes every object's manifest, hence its digest,
// unique: deleting one object by digest can never take another one with
// the same bytes along. Blobs themselves are shared by content, as
// registries do.
//
// The store's configuration is an artifact of the same shape tagged
// "config", with artifactType application/vnd.plakar.config.v1, written
// only by the create that won over any concurrent one: each create first
// tags its configuration "config-candidate-<hex of its digest>" (config.go).
// The empty config blob is pushed once, when the store is created (and
// again if a registry reports it missing).
//
// Listing a kind reads the repository's tag list from "<kind>-" on, page
// by page, keeping the tags of that kind; tags this package does not know
// are ignored. A create refuses a repository that holds any, though.
//
// A repository made by Plakar's upstream oci plugin (configuration tagged
// "CONFIG", objects "packfiles-<hex>", "state-<hex>", "locks-<hex>") is
// opened in that layout instead, which is a value of the Store (layout.go).
//
// # Deleting
//
// Registries disagree on deletion. Delete tries these ways in order, and
// skips those the registry refused: the way found is kept in the host's
// cache and recorded in the repository under the tag deletion-mode (a
// manifest of artifactType application/vnd.plakar.deletion-mode.v1 whose
// annotation org.plakar.deletes says "digest" or "tombstone"; no record
// means by tag), which List reads alongside its first request, so that no
// process of the store meets a refusal that another one met already:
//
//  1. DELETE of the tag (OCI 1.1, distribution v3, zot, go-containerregistry);
//  2. when the registry refuses that (400, as distribution v2 reads a tag
//     as a bad digest; 405 or UNSUPPORTED; or a 404 for a tag that a HEAD
//     shows is there), DELETE of the manifest by digest (distribution v2
//     with deletion enabled), after a HEAD of the tag to learn the digest;
//  3. when the registry refuses deletion altogether (405 or UNSUPPORTED:
//     distribution's default, GHCR, Docker Hub), a tombstone: the object's
//     tag is moved to a tombstone manifest (artifactType
//     application/vnd.plakar.tombstone.v1, empty config and one empty
//     layer, no annotations, so every tombstone is the same manifest).
//     Get treats a tombstone as a missing object. That one PUT releases
//     a lock: the host reads the locks List returns and leaves out those
//     that read as missing. The release then names the lock in the tag
//     released-locks (released.go), which List drops without reading,
//     unless a marker deleted-lock-<hex> says it was put again. Other objects
//     are first named in the graveyard, the tag graveyard, whose
//     manifest (artifactType application/vnd.plakar.graveyard.v1) has
//     one layer listing the deleted objects (graveyard.go): List drops
//     the objects it names, reading the tags of names still pending (a
//     delete that stopped half-way) and of objects with a marker tag,
//     deleted-<kind>-<hex> (put again over a tombstone, or deleted by an
//     older version): their object is alive if the tag is not a
//     tombstone. The bytes stay in the registry until its owner removes
//     the tombstone and garbage-collects (README).
//
// # Costs
//
// Put is four requests (start upload, stream, commit, manifest); Get is one
// when the host's cache knows the object's blob, two otherwise (a put
// where the store deletes by tombstone adds a HEAD of its tag alongside
// the upload, and one that does not know how the store deletes, a HEAD
// of the record of it; a lock's put reads the list of released locks
// after its tag). List is one request per page of tags, twice (objects and
// deletion markers), plus the graveyard's manifest and list (for locks,
// the list of released locks'), plus, but for locks, one HEAD per
// pending name or marker whose object tag is still listed (four at a
// time). A release by tombstone adds, after its PUT, the list of
// released locks read and pushed and a HEAD of the lock's tag. A delete by
// tombstone of an object other than a lock reads and pushes the
// graveyard (five requests and a HEAD per pending name) before its PUT. Size lists every kind
// and reads every object's manifest it has not cached: it is slow on big
// stores and meant for occasional reporting.
//
// # Failures
//
// Requests whose failure may be passing (no answer, 408, 429, 5xx, a body
// that breaks off or does not match its digest) are made again with a
// capped, jittered backoff when that cannot do harm: see retry.go for what
// is replayed, and why a streamed put body is only while not one byte of
// it went out. A put writes its tag last, so a failed put never leaves a
// tag on a partial object. Downloads are verified against their digest:
// corrupted bytes come back as a read error, never as the object.
//
// The host's cache (shared by every instance in one host process) maps
// "<registry>/<repository>:<tag>" to the object's blob digest and size.
// Locks are not cached: they are put again under the same MAC with other
// bytes, and another process may have done so.
package ocistore
