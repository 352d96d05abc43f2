package ocistore

import (
	"fmt"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// startUpload opens an upload session and returns its Location, which may
// be relative or absolute and is passed back unchanged: registries put
// state in it. Retrying the POST at worst leaves a session unused, which
// the registry expires.
func (c *call) startUpload() (string, error) {
	s := c.s
	resp, err := c.exchange(c.request("POST", s.uploads))
	if err != nil {
		return "", err
	}
	if resp.Status != 202 {
		return "", s.fail(c.action(), resp)
	}
	loc := resp.Get("Location")
	s.discard(resp)
	if loc == "" {
		return "", errorf(abi.ErrOther, "%s: registry %s started an upload without a Location header: it does not follow the OCI distribution API",
			c.action(), s.loc.Registry)
	}
	return loc, nil
}

// withDigest adds the digest query parameter that commits an upload.
func (s *Store) withDigest(loc, digest string) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return s.mem.Concat(loc, sep, "digest=", digest)
}

// cancelUpload abandons a failed upload so that the registry frees it now
// rather than at its own expiry. Its outcome does not matter.
func (c *call) cancelUpload(loc string) {
	if resp, err := c.send(c.request("DELETE", loc)); err == nil {
		c.s.discard(resp)
	}
}

// uploadStream streams body into a new blob and returns the blob, whose
// digest and size the host measured as the bytes went by. The upload
// starts over after a transient failure as long as not one byte of body
// was read (see retry.go).
func (c *call) uploadStream(body abi.Stream) (descriptor, error) {
	blob, whole, err := c.readAhead(body)
	if err != nil {
		return descriptor{}, err
	}
	if whole {
		return c.uploadWhole(body, blob) // see upload_whole.go
	}
	for attempt := 1; ; attempt++ {
		blob, err := c.uploadStreamOnce(body)
		if err == nil {
			return blob, nil
		}
		if codeOf(err) != abi.ErrTransient {
			return descriptor{}, err
		}
		if _, n := c.s.h.Digest(body); n > 0 {
			e := err.(*abi.Error)
			e.Message += fmt.Sprintf(" (the upload cannot be retried: %d bytes of the object were already sent, and its source cannot be read twice)", n)
			return descriptor{}, e
		}
		if !c.retry(attempt, err.Error(), 0) {
			return descriptor{}, err
		}
	}
}

func (c *call) uploadStreamOnce(body abi.Stream) (descriptor, error) {
	s := c.s
	loc, err := c.startUpload()
	if err != nil {
		return descriptor{}, err
	}
	// 100-continue: a registry (or proxy) that refuses the request does
	// so before the body is sent, which keeps it replayable.
	req := c.request("PATCH", loc, abi.Header{"Content-Type", mediaTypeBlob}, abi.Header{"Expect", "100-continue"})
	req.BodyKind, req.Stream = abi.BodyStreamed, body
	resp, err := c.send(req)
	if err != nil {
		if blob, ok := c.recoverUpload(loc, body); ok {
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
	if next := resp.Get("Location"); next != "" {
		loc = next
	}
	s.discard(resp)

	blob, err := c.measured(body)
	if err == nil {
		err = c.commitUpload(loc, blob, nil)
	}
	if err != nil {
		c.cancelUpload(loc)
		return descriptor{}, err
	}
	return blob, nil
}

// measured is the blob the host measured body to be.
func (c *call) measured(body abi.Stream) (descriptor, error) {
	return c.measuredAs(c.s.h.Digest(body))
}

// measuredAs is the blob of the digest and size the host measured.
func (c *call) measuredAs(digest string, size uint64) (descriptor, error) {
	if !validDigest(digest) {
		return descriptor{}, errorf(abi.ErrOther, "%s: the host measured the upload as %q, not a sha256 digest", c.action(), digest)
	}
	return descriptor{MediaType: mediaTypeBlob, Digest: digest, Size: int64(size)}, nil
}

// recoverUpload saves an upload whose PATCH got no answer after the whole
// body went out (the connection broke once the registry had it, or a
// proxy lost the answer): if body is at its end and the registry's upload
// session holds exactly as many bytes, the upload is committed, which
// checks the digest. Anything else is not recovered.
func (c *call) recoverUpload(loc string, body abi.Stream) (descriptor, bool) {
	s := c.s
	if _, n := s.h.Digest(body); n == 0 {
		return descriptor{}, false // nothing went out: the upload can start over
	}
	if !s.atEnd(body) {
		return descriptor{}, false // the body was not sent whole
	}
	blob, err := c.measured(body)
	if err != nil {
		return descriptor{}, false
	}
	resp, err := c.send(c.request("GET", loc))
	if err != nil {
		return descriptor{}, false
	}
	got, next := resp.Get("Range"), resp.Get("Location")
	s.discard(resp)
	if resp.Status != 204 || got != fmt.Sprintf("0-%d", blob.Size-1) {
		return descriptor{}, false
	}
	if next != "" {
		loc = next
	}
	if c.commitUpload(loc, blob, nil) != nil {
		return descriptor{}, false
	}
	s.h.Log(abi.LevelInfo, fmt.Sprintf("oci: %s: the upload's answer was lost, but registry %s had every byte: committed it", c.action(), s.loc.Registry))
	return blob, true
}

// uploadBytes pushes a small blob built in the guest (the store's
// configuration, the empty blob). The bytes are at hand, so after a
// transient failure the whole upload starts over.
func (c *call) uploadBytes(data []byte) (descriptor, error) {
	blob := descriptor{MediaType: mediaTypeBlob, Digest: digestOf(data), Size: int64(len(data))}
	for attempt := 1; ; attempt++ {
		loc, err := c.startUpload()
		if err == nil {
			if err = c.commitUpload(loc, blob, data); err == nil {
				return blob, nil
			}
			c.cancelUpload(loc)
		}
		if codeOf(err) != abi.ErrTransient || !c.retry(attempt, err.Error(), 0) {
			return descriptor{}, err
		}
	}
}

// commitUpload closes upload loc with its last bytes (none for a streamed
// upload); the registry checks the digest before it accepts the blob. A
// commit whose answer was lost is made again; when the registry then no
// longer knows the session (404 BLOB_UPLOAD_UNKNOWN, or 400 from
// registries that take it for an empty upload of the wrong digest), the
// blob itself tells whether the lost commit went through.
func (c *call) commitUpload(loc string, blob descriptor, data []byte) error {
	s := c.s
	req := c.request("PUT", s.withDigest(loc, blob.Digest), abi.Header{"Content-Type", mediaTypeBlob})
	if data != nil {
		req.BodyKind, req.Bytes = abi.BodyBytes, data
	}
	c.retried = false
	resp, err := c.exchange(req)
	if err != nil {
		return err
	}
	if ok2xx(resp.Status) {
		s.discard(resp)
		return nil
	}
	lost := c.retried
	err = s.fail(c.action(), resp)
	if (resp.Status == 404 || resp.Status == 400) && lost && c.blobExists(blob) {
		return nil
	}
	return err
}

// blobExists tells whether the registry has blob, whole.
func (c *call) blobExists(blob descriptor) bool {
	resp, err := c.exchange(c.request("HEAD", c.s.blobURL(blob.Digest)))
	if err != nil {
		return false
	}
	c.s.discard(resp)
	n := resp.Get("Content-Length")
	return resp.Status == 200 && (n == "" || n == fmt.Sprint(blob.Size))
}

// pushEmpty uploads the empty blob every manifest uses as its config.
func (c *call) pushEmpty() error {
	_, err := c.uploadBytes(emptyBlob)
	return err
}

// putManifest tags raw as tag: the same bytes under the same tag, so it is
// retried freely. A registry that lost the empty blob (its garbage
// collector may take it once no manifest is left to hold it) says so, and
// gets it again.
func (c *call) putManifest(tag string, raw []byte) error {
	s := c.s
	for attempt := 0; ; attempt++ {
		req := c.request("PUT", s.manifestURL(tag), abi.Header{"Content-Type", mediaTypeManifest})
		req.BodyKind, req.Bytes = abi.BodyBytes, raw
		resp, err := c.exchange(req)
		if err != nil {
			return err
		}
		if ok2xx(resp.Status) {
			s.discard(resp)
			return nil
		}
		body, _, _ := s.read(resp.Body, nil, maxErrorBody, -1)
		s.discard(resp)
		if attempt == 0 && (resp.Status == 400 || resp.Status == 404) &&
			hasCode(parseRegistryErrors(body), "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN") {
			if err := c.pushEmpty(); err != nil {
				return err
			}
			continue
		}
		return s.failWith(c.action(), resp, body)
	}
}
