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
	action := fmt.Sprintf("list %s objects in %s", k, s.loc)
	if err := s.checkKind(action, k); err != nil {
		return nil, err
	}
	prefix := tagPrefix(k)
	tags, err := s.listTags(action, prefix)
	if err != nil {
		return nil, err
	}
	present := make(map[abi.MAC]bool, len(tags))
	for _, t := range tags {
		if mac, ok := parseTag(prefix, t); ok {
			present[mac] = true
		}
	}

	markers, err := s.listTags(action, markerPrefix+prefix)
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
		digest, exists, err := s.manifestDigest(action, objectTag(k, mac))
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

// listTags returns the repository's tags that start with prefix, in no
// particular order. It asks for the tags after prefix (the OCI spec sorts
// them lexically) and follows the pages until they leave the prefix. A
// registry that ignores n and last costs more pages, not correctness:
// every tag is filtered here.
func (s *Store) listTags(action, prefix string) ([]string, error) {
	base := "/v2/" + s.loc.Repository + "/tags/list"
	page := func(last string) string {
		return fmt.Sprintf("%s?n=%d&last=%s", base, s.pageSize, url.QueryEscape(last))
	}
	next, sentN, lastSent := page(prefix), true, prefix
	seen := map[string]bool{}
	var out []string
	for pages := 0; next != ""; pages++ {
		if pages == maxPages {
			return nil, errorf(abi.ErrOther, "%s: the tag list of registry %s runs past %d pages: its pagination links loop", action, s.loc.Registry, maxPages)
		}
		current := next
		resp, err := s.send(action, &abi.Request{Method: "GET", URL: current})
		if err != nil {
			return nil, err
		}
		switch {
		case resp.Status == 404 && pages == 0:
			// NAME_UNKNOWN: nothing was ever pushed to the repository.
			s.discard(resp)
			return nil, nil
		case resp.Status == 400 && pages == 0 && sentN:
			// Some registries refuse n or last; their own pages will do.
			s.discard(resp)
			next, sentN = base, false
			continue
		case resp.Status != 200:
			return nil, s.fail(action, resp)
		}
		links := headerValues(resp, "Link")
		raw, err := s.readDoc(action, "tag list", resp, maxTagPage)
		if err != nil {
			return nil, err
		}
		var p tagPage
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, errorf(abi.ErrOther, "%s: registry %s answered a tag list that is not JSON: %v", action, s.loc.Registry, err)
		}

		// Past the prefix in a sorted list, no tag of ours is left.
		sorted, beyond := sort.StringsAreSorted(p.Tags), false
		for _, t := range p.Tags {
			if strings.HasPrefix(t, prefix) {
				if !seen[t] {
					seen[t] = true
					out = append(out, t)
				}
			} else if sorted && t > prefix {
				beyond = true
			}
		}
		if beyond {
			break
		}

		next = ""
		if l := nextLink(links); l != "" {
			if next = resolveLink(current, l); next == current {
				next = ""
			}
		} else if n := len(p.Tags); sentN && n == s.pageSize && sorted && p.Tags[n-1] > lastSent {
			// A full page without a Link (go-containerregistry's registry):
			// ask for the next one ourselves.
			lastSent = p.Tags[n-1]
			next = page(lastSent)
		}
	}
	return out, nil
}
