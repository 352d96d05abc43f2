package ocistore

import (
	"fmt"
	"slices"

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
	known := c.deletionMode()
	var err error
	for mode := known; ; mode++ {
		var done bool
		switch mode {
		case deleteByTag:
			done, err = c.deleteTag(tag)
		case deleteByDigest:
			done, err = c.deleteDigest(tag)
		default:
			done, err = true, c.bury(k, mac)
		}
		if !done {
			s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: registry %s refused this way of deleting; trying the next one", s.loc.Registry))
			continue
		}
		if mode != known && err == nil {
			// Learned after the object was released, so that the first
			// delete of a store is not one request longer. (A missing
			// object may have ended the delete before this way was tried.)
			c.recordDeletionMode(mode)
		}
		return err
	}
}

// deletionMode is how this store's registry deletes: from the host's
// cache (every instance of this store in this process), else from the
// record in the repository (every process of the store), else the first
// way. Each way a registry refuses is then tried once per store, not once
// per process: the first delete of a process is the request that releases
// the object, not a refused DELETE before it. A record that cannot be
// read costs refused requests, never the delete.
func (c *call) deletionMode() int32 {
	if mode, ok := c.cachedDeletionMode(); ok {
		return mode
	}
	mode, err := c.readDeletionMode(0)
	if err != nil {
		return deleteByTag
	}
	return mode
}

// deletionModeKey is where the host's cache keeps the deletion mode.
func (s *Store) deletionModeKey() string {
	if s.modeKey == "" {
		// Made once: every put reads it.
		s.modeKey = abi.DeletionModeKey(s.loc.Registry, s.loc.Repository)
	}
	return s.modeKey
}

func (c *call) cachedDeletionMode() (int32, bool) {
	v, ok := c.s.h.CacheGet(c.s.deletionModeKey())
	if !ok || len(v) != 1 || v[0] < '0' || v[0] > '2' {
		return 0, false
	}
	return int32(v[0] - '0'), true
}

// readDeletionMode reads the record of how the registry deletes (a HEAD of
// its tag, started already if started is not 0) into the host's cache. A
// record this version does not know is the first way: trying it again
// costs one refused request, and writes a record this version knows.
func (c *call) readDeletionMode(started abi.Pending) (int32, error) {
	resp, err := c.exchangeStarted(c.deletionModeHead(), started)
	if err != nil {
		return 0, err
	}
	var mode int32
	switch resp.Status {
	case 404:
	case 200:
		mode = int32(slices.Index(deletionModeDigests[:], resp.Get(headerDigest)))
		mode = max(mode, deleteByTag)
	default:
		return 0, c.s.fail(c.action(), resp)
	}
	c.s.discard(resp)
	c.s.h.CacheSet(c.s.deletionModeKey(), string(rune('0'+mode)))
	return mode, nil
}

func (c *call) deletionModeHead() *abi.Request { return c.manifestHead(deletionModeTag) }

// recordDeletionMode remembers mode in the host's cache and in the
// repository. A failure to record costs the next process one refused
// request, nothing more: it is logged, never returned.
func (c *call) recordDeletionMode(mode int32) {
	c.s.h.CacheSet(c.s.deletionModeKey(), string(rune('0'+mode)))
	if mode == deleteByTag {
		return // the default: nothing to record
	}
	if err := c.putManifest(deletionModeTag, deletionModeManifests[mode]); err != nil {
		c.s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: recording how registry %s deletes: %v", c.s.loc.Registry, err))
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

// bury deletes by tombstone, on registries that cannot delete: the
// object's tag moves to the tombstone, so that Get finds a tombstone.
//
// A lock is released by the one request that moves its tag, whatever
// happens next: the host reads every lock List returns, as Kloset does
// right after, and leaves out those that read as missing. Then, so that
// lists need not read it (every command leaves a released lock behind),
// the list of released locks names it (releaseLock), which does not
// fail the release. Locks are released by every command: the graveyard,
// which deletes wait for one another to rewrite, is not theirs.
//
// Other objects are deleted by maintenance only, and their List is not
// checked by reading every tag: the graveyard names them (entomb). It
// does first: a delete that stops half-way leaves a live tag the
// graveyard names, which List reads as an object put again (alive, and
// readable), never an object listed that cannot be read; deleting it
// again completes the deletion. An object whose tag is a tombstone
// already is named too before the delete reports it missing: that heals
// a name lost to a graveyard pushed by two deletes at once.
func (c *call) bury(k abi.Kind, mac abi.MAC) error {
	tag := c.s.objectTag(k, mac)
	digest, exists, err := c.manifestDigest(tag)
	if err != nil {
		return err
	}
	if !exists || (k == abi.KindLock && digest == tombstoneDigest) {
		return errorf(abi.ErrNotFound, "%s: no such object", c.action())
	}
	if k != abi.KindLock {
		if err := c.entomb(k, mac, digest == tombstoneDigest); err != nil {
			return err
		}
		if digest == tombstoneDigest {
			return errorf(abi.ErrNotFound, "%s: no such object (deleted already)", c.action())
		}
	}
	if err := c.putManifest(tag, tombstone); err != nil {
		return err
	}
	if k == abi.KindLock {
		c.releaseLock(mac)
	}
	return nil
}

// manifestDigest returns the digest of the manifest ref names, and whether
// there is one.
func (c *call) manifestDigest(ref string) (digest string, exists bool, err error) {
	return c.manifestDigestStarted(ref, c.manifestHead(ref), 0)
}

// manifestHead is the HEAD of the manifest ref names.
func (c *call) manifestHead(ref string) *abi.Request {
	return c.request("HEAD", c.s.manifestURL(ref), acceptManifest)
}

// manifestDigestStarted is manifestDigest with its HEAD, req, started
// already if started is not 0.
func (c *call) manifestDigestStarted(ref string, req *abi.Request, started abi.Pending) (digest string, exists bool, err error) {
	resp, err := c.exchangeStarted(req, started)
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
