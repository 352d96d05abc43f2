package ocistore

import (
	"github.com/plakar-oci/ocistore/abi"
)

// readAhead tells whether the host read body ahead, and what it measured:
// a host that does reads all of it (see streams.digest in
// wit/storage.wit), so a body that reports bytes before the guest sent any
// is whole and measured.
func (c *call) readAhead(body abi.Stream) (blob descriptor, ok bool, err error) {
	digest, n := c.s.h.Digest(body)
	if n == 0 {
		return descriptor{}, false, nil
	}
	blob, err = c.measuredAs(digest, n)
	return blob, true, err
}

// uploadWhole uploads a body the host read ahead and measured as blob, so
// its digest is known before a byte is sent: the registry gets it in one
// PUT whose URL names the digest, the monolithic upload of the OCI
// distribution spec (POST, then PUT with the bytes). A put is then three
// requests (POST, PUT, manifest) instead of four: see RATIONALE.md.
//
// The PUT is not made again after a failure: the body is the host's
// stream, which cannot be rewound, and the guest cannot tell whether any
// of it was sent. An answer lost after the registry took every byte is
// recovered: the blob, which the registry checked against its digest, is
// there.
func (c *call) uploadWhole(body abi.Stream, blob descriptor) (descriptor, error) {
	s := c.s
	loc, err := c.startUpload()
	if err != nil {
		return descriptor{}, err
	}
	// The length is known: registries that refuse chunked bodies take
	// it, and the host sends no more than it announces.
	req := c.request("PUT", s.withDigest(loc, blob.Digest),
		abi.Header{"Content-Type", mediaTypeBlob}, abi.Header{"Content-Length", s.mem.Uint(uint64(blob.Size))})
	req.BodyKind, req.Stream = abi.BodyStreamed, body
	resp, err := c.send(req)
	if err != nil {
		if c.blobExists(blob) {
			return blob, nil
		}
		c.cancelUpload(loc)
		return descriptor{}, err
	}
	if !ok2xx(resp.Status) {
		err := s.fail(c.action(), resp)
		c.cancelUpload(loc)
		return descriptor{}, err
	}
	s.discard(resp)
	// A host that had read only part of the body ahead would have had the
	// blob cut to that part: refuse to tag it.
	if !s.atEnd(body) {
		return descriptor{}, errorf(abi.ErrOther, "%s: the host measured %d bytes of the body ahead, but the body is longer: the host breaks the contract of streams.digest",
			c.action(), blob.Size)
	}
	return blob, nil
}
