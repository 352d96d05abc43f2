package ocistore

import (
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// startUpload opens an upload session and returns its Location, which may
// be relative or absolute and is passed back unchanged: registries put
// state in it.
func (s *Store) startUpload(action string) (string, error) {
	resp, err := s.send(action, &abi.Request{Method: "POST", URL: "/v2/" + s.loc.Repository + "/blobs/uploads/"})
	if err != nil {
		return "", err
	}
	if resp.Status != 202 {
		return "", s.fail(action, resp)
	}
	loc := resp.Get("Location")
	s.discard(resp)
	if loc == "" {
		return "", errorf(abi.ErrOther, "%s: registry %s started an upload without a Location header: it does not follow the OCI distribution API",
			action, s.loc.Registry)
	}
	return loc, nil
}

// withDigest adds the digest query parameter that commits an upload.
func withDigest(loc, digest string) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + digest
}

// cancelUpload abandons a failed upload so that the registry frees it now
// rather than at its own expiry. Its outcome does not matter.
func (s *Store) cancelUpload(action, loc string) {
	if resp, err := s.send(action, &abi.Request{Method: "DELETE", URL: loc}); err == nil {
		s.discard(resp)
	}
}

// uploadStream streams body into a new blob and returns the blob, whose
// digest and size the host measured as the bytes went by.
func (s *Store) uploadStream(action string, body abi.Stream) (descriptor, error) {
	loc, err := s.startUpload(action)
	if err != nil {
		return descriptor{}, err
	}
	resp, err := s.send(action, &abi.Request{
		Method:   "PATCH",
		URL:      loc,
		Header:   []abi.Header{{"Content-Type", mediaTypeBlob}},
		BodyKind: abi.BodyStreamed,
		Stream:   body,
	})
	if err != nil {
		s.cancelUpload(action, loc)
		return descriptor{}, err
	}
	if !ok2xx(resp.Status) {
		err := s.fail(action, resp)
		s.cancelUpload(action, loc)
		return descriptor{}, err
	}
	if next := resp.Get("Location"); next != "" {
		loc = next
	}
	s.discard(resp)

	digest, size := s.h.Digest(body)
	if !validDigest(digest) {
		s.cancelUpload(action, loc)
		return descriptor{}, errorf(abi.ErrOther, "%s: the host measured the upload as %q, not a sha256 digest", action, digest)
	}
	blob := descriptor{MediaType: mediaTypeBlob, Digest: digest, Size: int64(size)}
	if err := s.commitUpload(action, loc, blob.Digest, nil); err != nil {
		s.cancelUpload(action, loc)
		return descriptor{}, err
	}
	return blob, nil
}

// uploadBytes pushes a small blob built in the guest: the store's
// configuration, the empty blob.
func (s *Store) uploadBytes(action string, data []byte) (descriptor, error) {
	blob := descriptor{MediaType: mediaTypeBlob, Digest: digestOf(data), Size: int64(len(data))}
	loc, err := s.startUpload(action)
	if err != nil {
		return descriptor{}, err
	}
	if err := s.commitUpload(action, loc, blob.Digest, data); err != nil {
		s.cancelUpload(action, loc)
		return descriptor{}, err
	}
	return blob, nil
}

// commitUpload closes upload loc with its last bytes (none for a streamed
// upload); the registry checks the digest before it accepts the blob.
func (s *Store) commitUpload(action, loc, digest string, data []byte) error {
	req := &abi.Request{Method: "PUT", URL: withDigest(loc, digest), Header: []abi.Header{{"Content-Type", mediaTypeBlob}}}
	if data != nil {
		req.BodyKind, req.Bytes = abi.BodyBytes, data
	}
	resp, err := s.send(action, req)
	if err != nil {
		return err
	}
	if !ok2xx(resp.Status) {
		return s.fail(action, resp)
	}
	s.discard(resp)
	return nil
}

// pushEmpty uploads the empty blob every manifest uses as its config.
func (s *Store) pushEmpty(action string) error {
	_, err := s.uploadBytes(action, emptyBlob)
	return err
}

// putManifest tags raw as tag. A registry that lost the empty blob (its
// garbage collector may take it once no manifest is left to hold it) says
// so, and gets it again.
func (s *Store) putManifest(action, tag string, raw []byte) error {
	for attempt := 0; ; attempt++ {
		resp, err := s.send(action, &abi.Request{
			Method:   "PUT",
			URL:      s.manifestURL(tag),
			Header:   []abi.Header{{"Content-Type", mediaTypeManifest}},
			BodyKind: abi.BodyBytes,
			Bytes:    raw,
		})
		if err != nil {
			return err
		}
		if ok2xx(resp.Status) {
			s.discard(resp)
			return nil
		}
		body, _, _ := s.read(resp.Body, maxErrorBody)
		s.discard(resp)
		if attempt == 0 && (resp.Status == 400 || resp.Status == 404) &&
			hasCode(parseRegistryErrors(body), "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN") {
			if err := s.pushEmpty(action); err != nil {
				return err
			}
			continue
		}
		return httpError(s.loc, action, resp.Status, body)
	}
}
