package ocistore

import (
	"fmt"

	"github.com/plakar-oci/ocistore/abi"
)

// Ways to delete, in the order Delete tries them (see the package comment).
const (
	deleteByTag int32 = iota
	deleteByDigest
	deleteByTombstone
)

// Delete removes object (k, mac); a missing (or already deleted) object is
// abi.ErrNotFound.
func (s *Store) Delete(k abi.Kind, mac abi.MAC) error {
	tag := objectTag(k, mac)
	action := fmt.Sprintf("delete %s from %s", tag, s.loc)
	if err := s.checkKind(action, k); err != nil {
		return err
	}
	s.h.CacheRemove(s.cacheKey(tag))
	for {
		mode := s.deleteMode.Load()
		var done bool
		var err error
		switch mode {
		case deleteByTag:
			done, err = s.deleteTag(action, tag)
		case deleteByDigest:
			done, err = s.deleteDigest(action, tag)
		default:
			return s.bury(action, k, mac)
		}
		if done || err != nil {
			return err
		}
		s.deleteMode.CompareAndSwap(mode, mode+1)
		s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: registry %s refused this way of deleting; trying the next one", s.loc.Registry))
	}
}

// deleteTag deletes by tag. done false means the registry cannot delete
// tags, and the next way should be tried.
func (s *Store) deleteTag(action, tag string) (done bool, err error) {
	resp, err := s.send(action, &abi.Request{Method: "DELETE", URL: s.manifestURL(tag)})
	if err != nil {
		return true, err
	}
	if ok2xx(resp.Status) {
		s.discard(resp)
		return true, nil
	}
	body, _, _ := s.read(resp.Body, maxErrorBody)
	s.discard(resp)
	switch {
	case resp.Status == 400 || resp.Status == 405 || hasCode(parseRegistryErrors(body), "UNSUPPORTED"):
		// Distribution v2 reads a tag as a bad digest; others refuse
		// outright, yet may delete by digest.
		return false, nil
	case resp.Status == 404:
		// Either the tag is missing, or the registry looked it up as a
		// digest: only the tag itself can tell.
		_, exists, err := s.manifestDigest(action, tag)
		if err != nil {
			return true, err
		}
		if !exists {
			return true, errorf(abi.ErrNotFound, "%s: no such object", action)
		}
		return false, nil
	}
	return true, httpError(s.loc, action, resp.Status, body)
}

// deleteDigest deletes the manifest tag points to, by digest.
func (s *Store) deleteDigest(action, tag string) (done bool, err error) {
	digest, exists, err := s.manifestDigest(action, tag)
	if err != nil {
		return true, err
	}
	if !exists || digest == tombstoneDigest {
		return true, errorf(abi.ErrNotFound, "%s: no such object", action)
	}
	resp, err := s.send(action, &abi.Request{Method: "DELETE", URL: s.manifestURL(digest)})
	if err != nil {
		return true, err
	}
	if ok2xx(resp.Status) {
		s.discard(resp)
		return true, nil
	}
	body, _, _ := s.read(resp.Body, maxErrorBody)
	s.discard(resp)
	if resp.Status == 405 || hasCode(parseRegistryErrors(body), "UNSUPPORTED") {
		return false, nil
	}
	if resp.Status == 404 {
		return true, errorf(abi.ErrNotFound, "%s: no such object (deleted meanwhile)", action)
	}
	return true, httpError(s.loc, action, resp.Status, body)
}

// bury deletes by tombstone, on registries that cannot delete. The marker
// goes first: if the second PUT fails, the object is still whole, and
// List, which checks the object tag of every marker, still shows it.
func (s *Store) bury(action string, k abi.Kind, mac abi.MAC) error {
	tag := objectTag(k, mac)
	digest, exists, err := s.manifestDigest(action, tag)
	if err != nil {
		return err
	}
	if !exists || digest == tombstoneDigest {
		return errorf(abi.ErrNotFound, "%s: no such object", action)
	}
	if err := s.putManifest(action, markerTag(k, mac), tombstone); err != nil {
		return err
	}
	return s.putManifest(action, tag, tombstone)
}

// manifestDigest returns the digest of the manifest ref names, and whether
// there is one.
func (s *Store) manifestDigest(action, ref string) (digest string, exists bool, err error) {
	resp, err := s.send(action, &abi.Request{Method: "HEAD", URL: s.manifestURL(ref), Header: []abi.Header{acceptManifest}})
	if err != nil {
		return "", false, err
	}
	switch {
	case resp.Status == 404:
		s.discard(resp)
		return "", false, nil
	case resp.Status != 200:
		return "", false, s.fail(action, resp)
	}
	d := resp.Get("Docker-Content-Digest")
	s.discard(resp)
	if validDigest(d) {
		return d, true, nil
	}
	// The header is optional in the OCI spec: hash the manifest itself.
	resp, err = s.send(action, &abi.Request{Method: "GET", URL: s.manifestURL(ref), Header: []abi.Header{acceptManifest}})
	if err != nil {
		return "", false, err
	}
	switch {
	case resp.Status == 404:
		s.discard(resp)
		return "", false, nil
	case resp.Status != 200:
		return "", false, s.fail(action, resp)
	}
	raw, err := s.readDoc(action, "manifest "+ref, resp, maxManifest)
	if err != nil {
		return "", false, err
	}
	return digestOf(raw), true, nil
}
