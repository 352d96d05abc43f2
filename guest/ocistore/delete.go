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
	if err := s.ready(k, "delete ", " from "); err != nil {
		return err
	}
	tag := s.objectTag(k, mac)
	c := s.newCall("delete ", tag, " from ")
	s.h.CacheRemove(s.cacheKey(tag))
	for {
		mode := s.deleteMode.Load()
		var done bool
		var err error
		switch mode {
		case deleteByTag:
			done, err = c.deleteTag(tag)
		case deleteByDigest:
			done, err = c.deleteDigest(tag)
		default:
			return c.bury(k, mac)
		}
		if done || err != nil {
			return err
		}
		s.deleteMode.CompareAndSwap(mode, mode+1)
		s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: registry %s refused this way of deleting; trying the next one", s.loc.Registry))
	}
}

// deleteRef DELETEs the manifest ref names and returns the status of the
// answer, with its body (at most maxErrorBody bytes) unless the status is
// 2xx. lost tells whether an attempt whose answer never came (or was a
// server error) preceded the answer: that attempt may have deleted it
// already.
func (c *call) deleteRef(ref string) (status int, body []byte, lost bool, err error) {
	c.retried = false
	resp, err := c.exchange(c.request("DELETE", c.s.manifestURL(ref)))
	if err != nil {
		return 0, nil, c.retried, err
	}
	if !ok2xx(resp.Status) {
		body, _, _ = c.s.read(resp.Body, nil, maxErrorBody, -1)
	}
	c.s.discard(resp)
	return resp.Status, body, c.retried, nil
}

// deleteTag deletes by tag. done false means the registry cannot delete
// tags, and the next way should be tried.
func (c *call) deleteTag(tag string) (done bool, err error) {
	status, body, lost, err := c.deleteRef(tag)
	switch {
	case err != nil:
		return true, err
	case ok2xx(status):
		return true, nil
	case status == 400 || status == 405 || hasCode(parseRegistryErrors(body), "UNSUPPORTED"):
		// Distribution v2 reads a tag as a bad digest; others refuse
		// outright, yet may delete by digest.
		return false, nil
	case status == 404:
		// Either the tag is missing, or the registry looked it up as a
		// digest: only the tag itself can tell.
		_, exists, err := c.manifestDigest(tag)
		if err != nil {
			return true, err
		}
		if !exists {
			if lost {
				return true, nil // the attempt whose answer was lost did it
			}
			return true, errorf(abi.ErrNotFound, "%s: no such object", c.action())
		}
		return false, nil
	}
	return true, httpError(c.s.loc, c.action(), status, body)
}

// deleteDigest deletes the manifest tag points to, by digest.
func (c *call) deleteDigest(tag string) (done bool, err error) {
	digest, exists, err := c.manifestDigest(tag)
	if err != nil {
		return true, err
	}
	if !exists || digest == tombstoneDigest {
		return true, errorf(abi.ErrNotFound, "%s: no such object", c.action())
	}
	status, body, lost, err := c.deleteRef(digest)
	switch {
	case err != nil:
		return true, err
	case ok2xx(status):
		return true, nil
	case status == 405 || hasCode(parseRegistryErrors(body), "UNSUPPORTED"):
		return false, nil
	case status == 404:
		if lost {
			return true, nil
		}
		return true, errorf(abi.ErrNotFound, "%s: no such object (deleted meanwhile)", c.action())
	}
	return true, httpError(c.s.loc, c.action(), status, body)
}

// bury deletes by tombstone, on registries that cannot delete. The marker
// goes first: if the second PUT fails, the object is still whole, and
// List, which checks the object tag of every marker, still shows it.
func (c *call) bury(k abi.Kind, mac abi.MAC) error {
	tag := c.s.objectTag(k, mac)
	digest, exists, err := c.manifestDigest(tag)
	if err != nil {
		return err
	}
	if !exists || digest == tombstoneDigest {
		return errorf(abi.ErrNotFound, "%s: no such object", c.action())
	}
	if err := c.putManifest(c.s.markerTag(k, mac), tombstone); err != nil {
		return err
	}
	return c.putManifest(tag, tombstone)
}

// manifestDigest returns the digest of the manifest ref names, and whether
// there is one.
func (c *call) manifestDigest(ref string) (digest string, exists bool, err error) {
	resp, err := c.exchange(c.request("HEAD", c.s.manifestURL(ref), acceptManifest))
	if err != nil {
		return "", false, err
	}
	switch {
	case resp.Status == 404:
		c.s.discard(resp)
		return "", false, nil
	case resp.Status != 200:
		return "", false, c.s.fail(c.action(), resp)
	}
	d := resp.Get(headerDigest)
	c.s.discard(resp)
	if validDigest(d) {
		return d, true, nil
	}
	// The header is optional in the OCI spec: hash the manifest itself.
	doc, err := c.getDoc("manifest "+ref, c.s.manifestURL(ref), []abi.Header{acceptManifest}, maxManifest, "")
	switch {
	case err != nil:
		return "", false, err
	case doc.status == 404:
		return "", false, nil
	case doc.status != 200:
		return "", false, doc.err
	}
	return digestOf(doc.data), true, nil
}
