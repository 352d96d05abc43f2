package ocistore

import (
	"bytes"
	"encoding/binary"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// maxTagPage bounds one page of the tag list. Registries that ignore n
// send every tag at once: ~90 bytes a tag, so about three million tags.
const maxTagPage = 256 << 20

// maxPages stops a registry whose links go round in circles.
const maxPages = 1 << 20

// List returns the MACs of the objects of kind k, sorted, in the call's
// memory (Reset).
func (s *Store) List(k abi.Kind) ([]abi.MAC, error) {
	return s.newCall("list ", k.String(), " objects in ").list(k)
}

func (c *call) list(k abi.Kind) ([]abi.MAC, error) {
	if err := c.ready(k); err != nil {
		return nil, err
	}
	prefix := c.s.tagPrefix(k)
	// Deletion markers (deleted-<kind>-<hex>: objects put again over a
	// tombstone, and every object versions before the graveyard deleted)
	// are few, or none where the registry deletes: the first page after
	// their prefix is then the objects' own tags, and a short one saves
	// reading a thousand of them. The registry makes it while it makes
	// the objects' pages. Locks have their own list of the dead, the list
	// of released locks, and markers of those put again (releaseLock).
	markerFirst := min(c.s.pageSize, probePage)
	markerFrom := c.listFrom(markerPrefix + prefix)
	markerPage := c.start(c.tagPage(markerFirst, markerFrom))
	// Read whatever the deletion mode: a process that learned it long ago
	// may not know that the registry has stopped deleting since, or that
	// another process met a registry that never did.
	names := &graveyardList
	if k == abi.KindLock {
		names = &releasedLocksList
	}
	graveyardPage := c.start(c.nameListGet(names))
	// Kloset lists the locks before it releases one: the record of how the
	// registry deletes is read then, alongside, so that the release is one
	// request from the start (Delete).
	var modeHead abi.Pending
	if _, known := c.cachedDeletionMode(); !known {
		modeHead = c.start(c.deletionModeHead())
	}
	macs, err := c.listTags(prefix, c.s.pageSize, 0)
	if err != nil {
		return nil, err
	}
	if c.listFrom(markerPrefix+prefix) != markerFrom {
		// The objects' list just learned that last must name a tag: the
		// page started is a 404, which the call's end cancels.
		markerPage = 0
	}
	markers, err := c.listTags(markerPrefix+prefix, markerFirst, markerPage)
	if err != nil {
		return nil, err
	}
	all, err := c.readNames(names, graveyardPage)
	if err != nil {
		return nil, err
	}
	graves := gravesOf(all, k)
	if modeHead != 0 {
		// A failure here is the release's to report, if it meets it.
		c.readDeletionMode(modeHead)
	}
	// A name in the graveyard stays once written, and is written before
	// the tag moves to the tombstone (bury): a pending one may name a live
	// object (a deletion that stopped half-way), whose tag is read. So is
	// the tag of an object with a marker: Put marks an object it puts
	// again over a tombstone, and versions before the graveyard marked
	// every object they deleted. The object is alive if its tag is not a
	// tombstone. A lock's tag is not read here: the host reads every lock
	// listed.
	readTags := k != abi.KindLock
	var dead []bool // by index in macs
	var check []int // the same, of the objects whose tags are read
	var tags []string
	for _, g := range graves {
		i, found := slices.BinarySearchFunc(macs, g.mac, compareMAC)
		switch _, marked := slices.BinarySearchFunc(markers, g.mac, compareMAC); {
		case !found:
		case g.pending || marked:
			if readTags {
				check, tags = append(check, i), append(tags, c.s.objectTag(k, g.mac))
			}
		default:
			if dead == nil {
				dead = make([]bool, len(macs))
			}
			dead[i] = true
		}
	}
	for _, mac := range markers {
		i, found := slices.BinarySearchFunc(macs, mac, compareMAC)
		_, named := slices.BinarySearchFunc(graves, grave{k: k, mac: mac}, compareGrave)
		if found && !named && readTags {
			check, tags = append(check, i), append(tags, c.s.objectTag(k, mac))
		}
	}
	read, err := c.deadTags(tags)
	if err != nil {
		return nil, err
	}
	for j, i := range check {
		if read[j] {
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

// withN sets the n of a tag list URL that has one.
func withN(link string, n int) string {
	u, err := url.Parse(link)
	if err != nil {
		return link
	}
	q := u.Query()
	if !q.Has("n") || q.Get("n") == strconv.Itoa(n) {
		return link
	}
	q.Set("n", strconv.Itoa(n))
	u.RawQuery = q.Encode()
	return u.String()
}

// compareMAC is bytes.Compare of two MACs, a word at a time: List
// compares every MAC it returns, and bytes.Compare is three calls deep in
// the sandbox.
func compareMAC(a, b abi.MAC) int {
	for i := 0; i < len(a); i += 8 {
		x, y := binary.BigEndian.Uint64(a[i:]), binary.BigEndian.Uint64(b[i:])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// probePage is the n of the first page of deletion markers.
const probePage = 10

// markerReads is how many tags of marked objects List reads at once: a
// page of the list started early may still be in flight, and the host
// lets a call have 8.
const markerReads = 4

// tagPage is the request for the n tags after last, or for the first n
// tags if last is "".
func (c *call) tagPage(n int, last string) *abi.Request {
	if last == "" {
		return c.request("GET", c.s.tags+"?n="+strconv.Itoa(n))
	}
	return c.request("GET", c.s.tags+"?n="+strconv.Itoa(n)+"&last="+url.QueryEscape(last))
}

// How a registry takes a tag list's last, learned at the store's first
// list (Store.lastTag).
const (
	lastUnknown  = iota
	lastAny      // any string: the list starts at a kind's prefix
	lastExisting // only a tag of the repository (zot): lists start at the first tag
)

// lastCacheKey keeps lastExisting in the host's cache, which every
// instance of the store shares: a tag has no space, so no object's key
// is this one.
const lastCacheKey = " tag list: last must be a tag"

// listFrom is the last a list of the tags that start with prefix asks
// for first: prefix, or "" (the start of the list) on a registry that
// answers 404 to a last that is not one of its tags.
func (c *call) listFrom(prefix string) string {
	s := c.s
	mode := s.lastTag.Load()
	if mode == lastUnknown {
		// Another instance of the store may have learned it.
		if v, ok := s.h.CacheGet(s.cacheKey(lastCacheKey)); ok && v == "1" {
			mode = lastExisting
			s.lastTag.Store(mode)
		}
	}
	if mode == lastExisting {
		return ""
	}
	return prefix
}

// learnLast records how the registry took a last that is not a tag.
func (c *call) learnLast(mode int32) {
	s := c.s
	if s.lastTag.Swap(mode) == mode {
		return
	}
	if mode == lastExisting {
		s.h.CacheSet(s.cacheKey(lastCacheKey), "1")
		s.h.Log(abi.LevelDebug, "registry "+s.loc.Registry+" answers 404 to a tag list's last that is not a tag (zot): lists read the tag list from its start")
	}
}

// repositoryUnknown tells whether an answer says that the repository does
// not exist: 404 NAME_UNKNOWN, as the OCI spec has it, or Harbor's 404
// NOT_FOUND ("repository ... not found"). Any other 404, zot's empty one
// to a last that is not a tag among them, says nothing of the repository.
func repositoryUnknown(d *doc) bool {
	return d.status == 404 && hasCode(d.errs, "NAME_UNKNOWN", "NOT_FOUND")
}

// listTags returns the MACs of the repository's tags that are prefix
// followed by a MAC in hex, sorted, each once. It asks for the tags after
// prefix (the OCI spec sorts them lexically), first first of them then
// pageSize a page, and follows the pages until they leave the prefix; on
// a registry that takes only a tag as last (zot, listFrom), it asks for
// the list from its start. A registry that ignores n and last costs more
// pages, not correctness: every tag is filtered here. started, if not 0,
// is the first page's request, already started.
//
// Each page's Link is followed before the page is read, as soon as its
// headers are in, when the Link's last is one of our tags or sorts before
// them (distribution, zot and Harbor name the page's last tag there): the
// registry makes the next page while the host brings this one and the
// guest decodes it (http.start). A Link that does not say is followed
// once the page, read, ends with such a tag. Either way a sorted registry
// never gets a request for a page past the prefix.
func (c *call) listTags(prefix string, first int, started abi.Pending) ([]abi.MAC, error) {
	s := c.s
	start := c.listFrom(prefix)
	req, sentN, lastSent, n := c.tagPage(first, start), true, start, first
	macs := s.listMACs.Take()
	// The pages are read into one buffer, made for a page of ours with
	// room to spare for the JSON around the tags: grown as it is read, it
	// would be allocated and copied several times a page, which costs the
	// sandbox more than its own work.
	buf := s.listPage.Take()
	if size := n*tagSize(prefix) + 4<<10; cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	// Sorted pages, each after the one before, give sorted MACs (lowercase
	// hex sorts as its bytes do); a registry that ignores last repeats
	// tags across pages, and the MACs are then sorted here.
	ordered, ascending := true, true
	// listed is set by the first page read; restarted once a 404 to a
	// last that is not a tag sent the list back to the start.
	var listed, restarted bool
	// The answer's Link, and the page it names started from its headers:
	// the headers of every 200 answer come here, so after a retry next is
	// the last answer's. (Made once, not at every page: what a closure
	// holds is allocated where it is declared.)
	var current, next *abi.Request
	var early abi.Pending
	var earlyURL string
	headers := func(header []abi.Header) {
		next = c.linkedPage(current.URL, header, n)
		if early == 0 && next != nil && linkLastBefore(next.URL, prefix) {
			early, earlyURL = c.start(next), next.URL
		}
	}
	for pages := 0; req != nil; pages++ {
		if pages == maxPages {
			return nil, errorf(abi.ErrOther, "%s: the tag list of registry %s runs past %d pages: its pagination links loop", c.action(), s.loc.Registry, maxPages)
		}
		current, next, early, earlyURL = req, nil, 0, ""
		d, err := c.getStartedDoc("tag list", current, started, docTuning{limit: maxTagPage, buf: buf, headers: headers})
		started, req = 0, nil
		if err != nil {
			return nil, err
		}
		switch {
		case d.status == 200:
		case repositoryUnknown(d) && !listed:
			// Nothing was ever pushed to the repository.
			return nil, nil
		case d.status == 404 && !listed && lastSent != "" && !restarted:
			// zot: last must be one of the repository's tags. The list
			// from its start tells whether the repository is there; every
			// later list of the store starts there.
			restarted, start, lastSent = true, "", ""
			req = c.tagPage(n, start)
			continue
		case d.status == 404 && !listed && start == "":
			return nil, errorf(abi.ErrOther, "%s: registry %s answered %s to the tag list from its start, without saying that the repository is unknown (NAME_UNKNOWN): the store cannot list its objects",
				c.action(), s.loc.Registry, describeStatus(d.status, d.errs))
		case d.status == 400 && !listed && sentN:
			// Some registries refuse n or last; their own pages will do.
			req, sentN = c.request("GET", s.tags), false
			continue
		default:
			return nil, d.err
		}
		if !listed {
			listed = true
			if restarted {
				c.learnLast(lastExisting)
			} else if start != "" {
				c.learnLast(lastAny)
			}
		}
		if req = next; req != nil {
			n = s.pageSize
			switch {
			case early != 0 && earlyURL == req.URL:
				started = early
			case endsBefore(d.data, prefix):
				started = c.start(req)
			}
		}
		// Room for the page's MACs at once: grown a MAC at a time, the
		// slice's allocations cost the sandbox as much as the decoding.
		macs = slices.Grow(macs, len(d.data)/tagSize(prefix))
		var p pageInfo
		from := len(macs)
		p, macs, err = parseTagPage(d.data, prefix, macs)
		if err != nil {
			return nil, errorf(abi.ErrOther, "%s: registry %s answered a tag list that is not JSON: %v", c.action(), s.loc.Registry, err)
		}
		ordered = ordered && p.sorted && (from == 0 || from == len(macs) || macLess(&macs[from-1], &macs[from]))
		// Pages that repeat the tag before them (an inclusive last) are
		// still in order.
		ascending = ascending && p.sorted && (from == 0 || from == len(macs) || !macLess(&macs[from], &macs[from-1]))
		buf = d.data // decoded: the next page may be read into it
		// Past the prefix in a sorted list, no tag of ours is left. (A
		// next page started here is then cancelled when the call returns.)
		// A page is known sorted once read whole, and the list once every
		// page so far was, each after the one before: a page of Quay's,
		// in the order of its ids, may start with a tag past the prefix.
		if p.beyond && ascending {
			break
		}
		if req == nil && sentN && p.n == n && p.sorted && p.last > lastSent {
			// A full page without a Link (go-containerregistry's registry):
			// ask for the next one ourselves.
			lastSent, n = p.last, s.pageSize
			req = c.tagPage(n, lastSent)
		}
	}
	s.listPage.Keep(buf)
	s.listMACs.Keep(macs)
	if !ordered {
		slices.SortFunc(macs, compareMAC)
		macs = slices.Compact(macs)
	}
	return macs, nil
}

// tagSize is the size of one of our tags in a page: quoted, and a comma.
func tagSize(prefix string) int { return len(`"",`) + len(prefix) + 2*abi.MACSize }

// linkedPage is the request for the page that the Link of an answer to
// current names, if any, asking for pageSize tags if n was not that.
func (c *call) linkedPage(current string, header []abi.Header, n int) *abi.Request {
	link := nextLink(headerValues(header, "Link"))
	if link == "" {
		return nil
	}
	u := resolveLink(current, link)
	if n != c.s.pageSize {
		// The registry's link repeats our n: after a short first page,
		// the next ones are full.
		u = withN(u, c.s.pageSize)
	}
	if u == current {
		return nil
	}
	return c.request("GET", u)
}

// linkLastBefore tells whether the query of a page's URL asks for the
// tags after one that starts with prefix or sorts before it: in a sorted
// list, the page may hold tags of ours. Our prefixes need no escaping, so
// the query is searched as it is: url.Query would cost the sandbox
// several times what reading the page's headers does.
func linkLastBefore(page, prefix string) bool {
	_, q, _ := strings.Cut(page, "?")
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		if v, ok := strings.CutPrefix(kv, "last="); ok {
			return v < prefix || strings.HasPrefix(v, prefix)
		}
	}
	return false
}

// endsBefore tells whether the last string of a tag list page, its last
// tag as registries write them, starts with prefix or sorts before it. It
// only decides whether to start the next page early: it reads a few
// bytes, not the page.
func endsBefore(page []byte, prefix string) bool {
	end := bytes.LastIndexByte(page, '"')
	if end < 0 {
		return false
	}
	start := bytes.LastIndexByte(page[:end], '"')
	if start < 0 {
		return false
	}
	tag := page[start+1 : end]
	return bytes.HasPrefix(tag, []byte(prefix)) || string(tag) < prefix
}
