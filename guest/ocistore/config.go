package ocistore

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// maxConfig bounds the store's configuration: Kloset's is a few hundred
// bytes, and it is read whole into guest memory.
const maxConfig = 16 << 20

// candidatePrefix starts the tag of a configuration a create proposes,
// followed by the hex of its blob's digest (RATIONALE.md, "Two creates of
// one store").
const candidatePrefix = "config-candidate-"

// Create makes the store with Kloset's serialized configuration. Registries
// have no compare-and-swap, so two creates of one store agree through
// candidates: each tags its configuration as a candidate of its own, then
// lists the candidates, and wins only if it sees no other live one. A
// winner's candidate stays: a create that comes later sees it and loses.
// Only a winner tags its configuration config, which is all Open reads.
func (s *Store) Create(config []byte) error {
	c := s.newCall("create the store at ", "", "")
	if len(config) > maxConfig {
		return errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than the %d this store reads back", c.action(), len(config), maxConfig)
	}
	_, exists, err := c.manifestDigest(configTag)
	if err != nil {
		return err
	}
	if exists {
		return errorf(abi.ErrAlreadyExists, "a store already exists at %s; pick another path", s.loc)
	}
	if err := c.checkUnused(); err != nil {
		return err
	}
	// Every manifest names the empty blob as its config: push it once here.
	if err := c.pushEmpty(); err != nil {
		return err
	}
	blob, err := c.uploadBytes(config)
	if err != nil {
		return err
	}
	raw := configManifest(blob).encode()
	mine := candidatePrefix + strings.TrimPrefix(blob.Digest, "sha256:")
	if err := c.putManifest(mine, raw); err != nil {
		// Its answer may be lost while the tag was written: withdraw it,
		// which is safe as long as this create has not won.
		c.withdraw(mine)
		return err
	}
	other, err := c.otherCandidate(mine)
	if err != nil {
		c.withdraw(mine)
		return err
	}
	if other == "" {
		// Won: from here on the candidate stays whatever happens, or a
		// create that listed before it was written could win too.
		if err := c.putManifest(configTag, raw); err != nil {
			return errorf(codeOf(err), "%v (this create won, yet may not have tagged its configuration: if opening the store fails, this create was interrupted; its configuration is tag %s)", err, mine)
		}
		s.useLayout(ourLayout)
		// A store just created has deleted nothing: its puts need not
		// read the record of how it deletes to know that no tombstone
		// lies under them (object.go).
		s.h.CacheSet(s.deletionModeKey(), string(rune('0'+deleteByTag)))
		return nil
	}
	c.withdraw(mine)
	if _, exists, err := c.manifestDigest(configTag); err == nil && exists {
		return s.createdMeanwhile()
	}
	return errorf(abi.ErrOther, "another create of a store at %s is running or was interrupted (its configuration is tag %s): nothing of this one was kept; try again once it has finished, or, if none is running, delete that tag or pick another path",
		s.loc, other)
}

// createdMeanwhile is the failure of a create that found no store, and
// then another create's configuration.
func (s *Store) createdMeanwhile() error {
	return errorf(abi.ErrAlreadyExists, "a store was created at %s meanwhile, by another create: nothing of this one was kept; open that store, or create yours at another path", s.loc)
}

// otherCandidate returns the tag of a live candidate configuration that is
// not mine, or "" if there is none. Losers that cannot delete tombstone
// their candidate: one HEAD a candidate tells.
func (c *call) otherCandidate(mine string) (string, error) {
	macs, err := c.listTags(candidatePrefix, c.s.pageSize, 0)
	if err != nil {
		return "", err
	}
	for _, mac := range macs {
		tag := candidatePrefix + fmt.Sprintf("%x", mac[:])
		if tag == mine {
			continue
		}
		digest, exists, err := c.manifestDigest(tag)
		if err != nil {
			return "", err
		}
		if exists && digest != tombstoneDigest {
			return tag, nil
		}
	}
	return "", nil
}

// withdraw removes a candidate that lost, or that a failure left behind:
// deleted where the registry deletes, else tombstoned. It is best effort:
// a candidate left there makes later creates fail with its tag, and
// opening the store says no store is there.
func (c *call) withdraw(tag string) {
	done, err := c.deleteTag(tag)
	if err == nil && !done {
		done, err = c.deleteDigest(tag)
	}
	if err == nil && !done {
		err = c.putManifest(tag, tombstone)
	}
	if err != nil && codeOf(err) != abi.ErrNotFound {
		c.s.h.Log(abi.LevelWarn, fmt.Sprintf("oci: %s: withdrawing candidate configuration %s failed: %v", c.action(), tag, err))
	}
}

// unusedProbe is how many tags checkUnused reads: one page, without last.
const unusedProbe = 100

// checkUnused makes sure that the repository holds nothing a create of
// ours did not write, before it writes there: another tool's artifacts,
// a store of Plakar's upstream oci plugin, or objects of a store whose
// configuration is gone. One page of the tag list is enough: registries
// sort it, and a tag of anything else is among the first ones but in a
// repository of thousands of candidates.
func (c *call) checkUnused() error {
	s := c.s
	d, err := c.getDoc("tag list", s.tags+"?n="+fmt.Sprint(unusedProbe), nil, maxTagPage, "")
	if err == nil && d.status == 400 {
		// Some registries refuse n: their first page will do.
		d, err = c.getDoc("tag list", s.tags, nil, maxTagPage, "")
	}
	switch {
	case err != nil:
		return err
	case d.status == 404:
		return nil // NAME_UNKNOWN: nothing was ever pushed there
	case d.status != 200:
		return d.err
	}
	var page struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(d.data, &page); err != nil {
		return errorf(abi.ErrOther, "%s: registry %s answered a tag list that is not JSON: %v", c.action(), s.loc.Registry, err)
	}
	var foreign []string
	for _, tag := range page.Tags {
		switch {
		case tag == configTag:
			// Create found none just before: another create won since.
			return s.createdMeanwhile()
		case tag == upstreamLayout.configTag:
			return errorf(abi.ErrAlreadyExists, "a store made by Plakar's upstream oci plugin is already at %s (tag %s): use it as it is, no create is needed", s.loc, tag)
		case !strings.HasPrefix(tag, candidatePrefix):
			foreign = append(foreign, tag)
		}
	}
	if len(foreign) > 0 {
		return errorf(abi.ErrOther, "repository %s of registry %s already holds tags that no create of a store wrote (%s): a store needs a repository of its own; pick another path",
			s.loc.Repository, s.loc.Registry, quoteSome(foreign, 3))
	}
	return nil
}

// quoteSome quotes the first n of tags, and counts the rest.
func quoteSome(tags []string, n int) string {
	var b strings.Builder
	for i, t := range tags[:min(n, len(tags))] {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", t)
	}
	if len(tags) > n {
		fmt.Fprintf(&b, " and %d more", len(tags)-n)
	}
	return b.String()
}

// Open returns the configuration given to Create: the one tagged config by
// the create that won, or, in a repository of Plakar's upstream oci plugin,
// the one tagged CONFIG, whose layout the store then keeps.
func (s *Store) Open() ([]byte, error) {
	c := s.newCall("open the store at ", "", "")
	lay := ourLayout
	d, err := c.getDoc("configuration manifest", s.manifestURL(lay.configTag), []abi.Header{acceptManifest}, maxManifest, headerDigest)
	if err == nil && d.status == 404 {
		lay = upstreamLayout
		d, err = c.getDoc("configuration manifest", s.manifestURL(lay.configTag), []abi.Header{acceptManifest}, maxManifest, headerDigest)
	}
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "no store at %s: create it first", s.loc)
	}
	if d.status != 200 {
		return nil, d.err
	}
	want := artifactConfig
	if lay == upstreamLayout {
		want = ""
	}
	layer, ok, err := parseManifest(d.data, want)
	if err == nil && !ok {
		err = fmt.Errorf("its artifactType is not %q", want)
	}
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: the tag %q there is not a Plakar store configuration (%v): pick another path",
			c.action(), lay.configTag, err)
	}
	if layer.Size > maxConfig {
		return nil, errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than %d: this is not a Plakar store", c.action(), layer.Size, maxConfig)
	}

	// The blob is checked against the manifest's digest: a corrupted read
	// is made again, and never returned.
	d, err = c.getDoc("configuration", s.blobURL(layer.Digest), nil, maxConfig, layer.Digest)
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "%s: the configuration blob %s is missing (was it garbage-collected?): the store is damaged",
			c.action(), layer.Digest)
	}
	if d.status != 200 {
		return nil, d.err
	}
	s.useLayout(lay)
	return d.data, nil
}
