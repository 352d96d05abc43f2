package ocistore

import (
	"bytes"
	"fmt"
	"net/url"
	"slices"

	"github.com/plakar-oci/ocistore/abi"
)

// maxTagPage bounds one page of the tag list. Registries that ignore n
// send every tag at once: ~90 bytes a tag, so about three million tags.
const maxTagPage = 256 << 20

// maxPages stops a registry whose links go round in circles.
const maxPages = 1 << 20

// List returns the MACs of the objects of kind k, sorted.
func (s *Store) List(k abi.Kind) ([]abi.MAC, error) {
	return s.newCall(fmt.Sprintf("list %s objects in %s", k, s.loc)).list(k)
}

func (c *call) list(k abi.Kind) ([]abi.MAC, error) {
	if err := c.s.checkKind(c.action, k); err != nil {
		return nil, err
	}
	prefix := tagPrefix(k)
	macs, err := c.listTags(prefix)
	if err != nil {
		return nil, err
	}
	markers, err := c.listTags(markerPrefix + prefix)
	if err != nil {
		return nil, err
	}
	var dead []bool // by index in macs; markers are rare
	for _, mac := range markers {
		i, found := slices.BinarySearchFunc(macs, mac, compareMAC)
		if !found {
			continue
		}
		// A marker stays once written; the object is alive again if its
		// tag was put after the deletion.
		digest, exists, err := c.manifestDigest(objectTag(k, mac))
		if err != nil {
			return nil, err
		}
		if !exists || digest == tombstoneDigest {
			if dead == nil {
				dead = make([]bool, len(macs))
			}
			dead[i] = true
		}
	}
	if dead != nil {
		alive := macs[:0]
		for i, mac := range macs {
			if !dead[i] {
				alive = append(alive, mac)
			}
		}
		macs = alive
	}
	return macs, nil
}

func compareMAC(a, b abi.MAC) int { return bytes.Compare(a[:], b[:]) }

// listTags returns the MACs of the repository's tags that are prefix
// followed by a MAC in hex, sorted, each once. It asks for the tags after prefix (the OCI spec sorts
// them lexically) and follows the pages until they leave the prefix. A
// registry that ignores n and last costs more pages, not correctness:
// every tag is filtered here.
func (c *call) listTags(prefix string) ([]abi.MAC, error) {
	s := c.s
	base := "/v2/" + s.loc.Repository + "/tags/list"
	page := func(last string) string {
		return fmt.Sprintf("%s?n=%d&last=%s", base, s.pageSize, url.QueryEscape(last))
	}
	next, sentN, lastSent := page(prefix), true, prefix
	var macs []abi.MAC
	for pages := 0; next != ""; pages++ {
		if pages == maxPages {
			return nil, errorf(abi.ErrOther, "%s: the tag list of registry %s runs past %d pages: its pagination links loop", c.action, s.loc.Registry, maxPages)
		}
		current := next
		d, err := c.getDoc("tag list", current, nil, maxTagPage, "")
		if err != nil {
			return nil, err
		}
		switch {
		case d.status == 404 && pages == 0:
			// NAME_UNKNOWN: nothing was ever pushed to the repository.
			return nil, nil
		case d.status == 400 && pages == 0 && sentN:
			// Some registries refuse n or last; their own pages will do.
			next, sentN = base, false
			continue
		case d.status != 200:
			return nil, d.err
		}
		var p pageInfo
		p, macs, err = parseTagPage(d.data, prefix, macs)
		if err != nil {
			return nil, errorf(abi.ErrOther, "%s: registry %s answered a tag list that is not JSON: %v", c.action, s.loc.Registry, err)
		}
		// Past the prefix in a sorted list, no tag of ours is left.
		if p.beyond {
			break
		}

		next = ""
		if l := nextLink(headerValues(&abi.Response{Header: d.header}, "Link")); l != "" {
			if next = resolveLink(current, l); next == current {
				next = ""
			}
		} else if sentN && p.n == s.pageSize && p.sorted && p.last > lastSent {
			// A full page without a Link (go-containerregistry's registry):
			// ask for the next one ourselves.
			lastSent = p.last
			next = page(lastSent)
		}
	}
	// Sorted pages give sorted MACs (lowercase hex sorts as its bytes do);
	// a registry that ignores last repeats tags across pages.
	if !slices.IsSortedFunc(macs, compareMAC) {
		slices.SortFunc(macs, compareMAC)
	}
	return slices.Compact(macs), nil
}
