package ocistore

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"

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
	tags, err := c.listTags(prefix)
	if err != nil {
		return nil, err
	}
	present := make(map[abi.MAC]bool, len(tags))
	for _, t := range tags {
		if mac, ok := parseTag(prefix, t); ok {
			present[mac] = true
		}
	}

	markers, err := c.listTags(markerPrefix + prefix)
	if err != nil {
		return nil, err
	}
	for _, t := range markers {
		mac, ok := parseTag(markerPrefix+prefix, t)
		if !ok || !present[mac] {
			continue
		}
		// A marker stays once written; the object is alive again if its
		// tag was put after the deletion.
		digest, exists, err := c.manifestDigest(objectTag(k, mac))
		if err != nil {
			return nil, err
		}
		if !exists || digest == tombstoneDigest {
			delete(present, mac)
		}
	}

	macs := make([]abi.MAC, 0, len(present))
	for mac := range present {
		macs = append(macs, mac)
	}
	sort.Slice(macs, func(i, j int) bool { return string(macs[i][:]) < string(macs[j][:]) })
	return macs, nil
}

// tagPage is the body of a tag list answer.
type tagPage struct {
	Tags []string `json:"tags"`
}

// pageInfo is what listTags needs of one page of the tag list.
type pageInfo struct {
	ours   []string // the page's tags that start with the prefix, not seen before
	n      int      // how many tags the page has
	last   string   // its last tag
	sorted bool     // whether they are sorted
	beyond bool     // whether, sorted, they went past the prefix: no later page has one of ours
}

// parseTagPage decodes one page of a tag list and keeps the tags that
// start with prefix and are not in seen, which it updates.
func parseTagPage(raw []byte, prefix string, seen map[string]bool) (pageInfo, error) {
	var p tagPage
	if err := json.Unmarshal(raw, &p); err != nil {
		return pageInfo{}, err
	}
	info := pageInfo{n: len(p.Tags), sorted: sort.StringsAreSorted(p.Tags)}
	if info.n > 0 {
		info.last = p.Tags[info.n-1]
	}
	for _, t := range p.Tags {
		if strings.HasPrefix(t, prefix) {
			if !seen[t] {
				seen[t] = true
				info.ours = append(info.ours, t)
			}
		} else if info.sorted && t > prefix {
			info.beyond = true
		}
	}
	return info, nil
}

// listTags returns the repository's tags that start with prefix, in no
// particular order. It asks for the tags after prefix (the OCI spec sorts
// them lexically) and follows the pages until they leave the prefix. A
// registry that ignores n and last costs more pages, not correctness:
// every tag is filtered here.
func (c *call) listTags(prefix string) ([]string, error) {
	s := c.s
	base := "/v2/" + s.loc.Repository + "/tags/list"
	page := func(last string) string {
		return fmt.Sprintf("%s?n=%d&last=%s", base, s.pageSize, url.QueryEscape(last))
	}
	next, sentN, lastSent := page(prefix), true, prefix
	seen := map[string]bool{}
	var out []string
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
		p, err := parseTagPage(d.data, prefix, seen)
		if err != nil {
			return nil, errorf(abi.ErrOther, "%s: registry %s answered a tag list that is not JSON: %v", c.action, s.loc.Registry, err)
		}
		out = append(out, p.ours...)
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
	return out, nil
}
