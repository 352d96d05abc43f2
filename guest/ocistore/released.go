package ocistore

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/plakar-oci/ocistore/abi"
)

// releasedLocksTag names the locks released by tombstone (bury): one tag
// whose manifest (artifactType application/vnd.plakar.released-locks.v1)
// has one layer, the hex MACs of the locks, one a line, sorted. Kloset
// takes and releases a lock per command, and on a registry that refuses
// DELETE the released lock's tag stays: without the list, every list of
// locks would read one tag more for every command ever run on the store.
//
// List leaves out a lock the list names without reading its tag, unless
// a marker tag (deleted-lock-<hex>) says the lock was put again: the
// owner of a lock kicked as stale puts it again under the same MAC. The
// owner's put and the release each check, after their own write, whether
// the other has been (Put, releaseLock): RATIONALE.md, "Released locks on
// registries that refuse DELETE".
const releasedLocksTag = "released-locks"

const artifactReleasedLocks = "application/vnd.plakar.released-locks.v1"

// maxReleased bounds the list, as maxGraveyard does the graveyard's: some
// 64,000 locks (seven years of hourly backups). Past it, releases stop
// adding to the list, and the locks they release are read by every list
// of locks, as they all would be without it.
const maxReleased = maxManifest

var releasedLocksList = nameList{releasedLocksTag, artifactReleasedLocks, "list of released locks", parseReleasedLocks}

// parseReleasedLocks decodes the list, sorting it if it is not. Its names
// are graves, none pending: a lock's tag is a tombstone before it is
// named.
func parseReleasedLocks(data []byte) ([]grave, error) {
	var graves []grave
	sorted := true
	for line := range bytes.Lines(data) {
		g := grave{k: abi.KindLock}
		if !decodeMAC(&g.mac, bytes.TrimSuffix(line, []byte("\n"))) {
			return nil, errorf(abi.ErrOther, "line %q is not a MAC", line)
		}
		if n := len(graves); n > 0 && compareMAC(graves[n-1].mac, g.mac) >= 0 {
			sorted = false
		}
		graves = append(graves, g)
	}
	if !sorted {
		slices.SortFunc(graves, compareGrave)
		graves = slices.CompactFunc(graves, func(a, b grave) bool { return a.mac == b.mac })
	}
	return graves, nil
}

func encodeReleasedLocks(graves []grave) []byte {
	b := make([]byte, 0, len(graves)*(2*abi.MACSize+1))
	for _, g := range graves {
		b = hex.AppendEncode(b, g.mac[:])
		b = append(b, '\n')
	}
	return b
}

// releaseLock follows the tombstone that released lock mac: it names the
// lock in the list, then reads its tag, and marks the lock if its tag is
// no longer the tombstone (its owner put it again meanwhile), so that
// List does not leave it out. The lock is released whatever happens
// here: failures are logged, never returned. A failure before the list
// is written costs lists a read of the lock; one after it, with the lock
// put again, is the one case that hides a live lock (RATIONALE.md).
func (c *call) releaseLock(mac abi.MAC) {
	if err := c.nameReleasedLock(mac); err != nil {
		c.s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: %s: naming the lock in the list of released locks (tag %s): %v", c.action(), releasedLocksTag, err))
	}
	tag := c.s.objectTag(abi.KindLock, mac)
	digest, exists, err := c.manifestDigest(tag)
	if err == nil && exists && digest != tombstoneDigest {
		err = c.putManifest(c.s.markerTag(abi.KindLock, mac), tombstone)
	}
	if err != nil {
		c.s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: %s: checking whether the lock was taken again: %v", c.action(), err))
	}
}

// nameReleasedLock adds mac to the list of released locks. Registries
// have no compare-and-swap: two releases at once may each push the list
// they read plus their own lock, and the one pushed first is lost. A
// lost name costs lists a read of that lock, as without the list. Names
// are never removed: a list pushed late holds fewer, never one that no
// release wrote.
func (c *call) nameReleasedLock(mac abi.MAC) error {
	graves, err := c.readNames(&releasedLocksList, 0)
	if err != nil {
		return err
	}
	g := grave{k: abi.KindLock, mac: mac}
	i, found := slices.BinarySearchFunc(graves, g, compareGrave)
	if found {
		return nil
	}
	graves = slices.Insert(graves, i, g)
	data := encodeReleasedLocks(graves)
	if len(data) > maxReleased {
		c.s.h.Log(abi.LevelDebug, fmt.Sprintf("oci: %s: the list of released locks (tag %s) is full at %d bytes: lists of locks read this one", c.action(), releasedLocksTag, maxReleased))
		return nil
	}
	return c.pushNames(&releasedLocksList, data)
}

// releasedLockPut checks, after lock mac was put, whether the list of
// released locks names it (it was kicked, released, and its owner puts
// it again), and marks it then, so that List does not leave it out. It
// reads the list whatever the deletion mode: the one a process learned
// may predate the store's first release by tombstone, and where the
// registry deletes, the list is a 404. A lock others may not see is not
// taken: any failure is the put's.
func (c *call) releasedLockPut(mac abi.MAC) error {
	graves, err := c.readNames(&releasedLocksList, 0)
	if err != nil {
		return err
	}
	if _, found := slices.BinarySearchFunc(graves, grave{k: abi.KindLock, mac: mac}, compareGrave); !found {
		return nil
	}
	return c.putManifest(c.s.markerTag(abi.KindLock, mac), tombstone)
}
