package ocistore

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/guest/internal/scratch"
	"github.com/plakar-oci/ocistore/internal/location"
)

// Option keys New accepts. Credentials are not among them: the host keeps
// them and adds them to requests.
const (
	OptionLocation = "location"
	OptionPrefix   = "repository_prefix"
)

// defaultPageSize is the n of tag list requests: distribution's default
// maximum, and few enough tags (~80 KB) to read at once.
const defaultPageSize = 1000

// Store is one store: one repository of one registry.
type Store struct {
	h   abi.Host
	loc location.Location
	// The strings every call starts from, made once: the location for
	// messages, the API paths of the repository, the store's part of the
	// host's cache.
	where, manifests, blobs, uploads, tags, cacheSpace string
	modeKey                                            string // deletionModeKey

	// mem and reqs are the memory of the call in progress, reused by the
	// next (package scratch, Reset): a put or a ranged get then makes no
	// Go allocation.
	mem  scratch.Bytes
	reqs scratch.Slots[abi.Request]
	// listPage and listMACs are a list's memory, kept for the next list:
	// what List returns is in it.
	listPage scratch.Buffer[byte]
	listMACs scratch.Buffer[abi.MAC]

	// lay is the store's layout, nil until a call needs it (ready).
	lay *layout

	pageSize int
	// lastTag is how the registry takes a tag list's last (lastAny,
	// lastExisting), learned at the first list, shared through the host's
	// cache by the store's instances.
	lastTag atomic.Int32

	// sleep and now are sliceSleep and time.Now, but in tests.
	sleep func(time.Duration)
	now   func() time.Time
}

// New makes the store for options; it performs no request.
func New(h abi.Host, options map[string]string) (*Store, error) {
	var unknown []string
	for k := range options {
		if k != OptionLocation && k != OptionPrefix {
			unknown = append(unknown, fmt.Sprintf("%q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, errorf(abi.ErrInvalidConfig, "unknown option %s: the OCI store takes %s and %s only (credentials go to the host)",
			strings.Join(unknown, ", "), OptionLocation, OptionPrefix)
	}
	if _, ok := options[OptionLocation]; !ok {
		return nil, errorf(abi.ErrInvalidConfig, "the %s option is missing: set it to oci://<registry>/<repository>, as in oci://registry.example.com/team/backups",
			OptionLocation)
	}
	loc, err := location.Parse(options[OptionLocation], options[OptionPrefix])
	if err != nil {
		return nil, errorf(abi.ErrInvalidConfig, "%v", err)
	}
	return &Store{
		h: h, loc: loc,
		where:      loc.String(),
		manifests:  "/v2/" + loc.Repository + "/manifests/",
		blobs:      "/v2/" + loc.Repository + "/blobs/",
		uploads:    "/v2/" + loc.Repository + "/blobs/uploads/",
		tags:       "/v2/" + loc.Repository + "/tags/list",
		cacheSpace: loc.Registry + "/" + loc.Repository + ":",
		pageSize:   defaultPageSize, sleep: sliceSleep, now: time.Now,
	}, nil
}

// Reset ends a call: the memory of its requests, of the strings it built
// and of its list is reused by the next. The store's caller (the guest's
// exports, the native host) calls it between two calls, never during one.
// The MACs List returns are in that memory, and so is what a call handed
// the host: a host that keeps any of it (a cache entry, a digest to
// verify, a list) keeps a copy, as the sandbox's host does by lifting it.
func (s *Store) Reset() {
	s.mem.Reset()
	s.reqs.Reset()
	s.listPage.Reset()
	s.listMACs.Reset()
}

// Location is the store's parsed location.
func (s *Store) Location() location.Location { return s.loc }

// Mode is read and write: whether credentials allow writing shows at the
// first write, as registries have no way to ask.
func (s *Store) Mode() (abi.Access, error) { return abi.AccessRead | abi.AccessWrite, nil }

// Close has nothing to release: the host owns connections and streams.
func (s *Store) Close() error { return nil }

// Ping checks that the registry answers the distribution API and lets
// these credentials in.
func (s *Store) Ping() error {
	c := s.newCall("ping ", "", "")
	notRegistry := func(answer string) error {
		return errorf(abi.ErrOther, "%s: %s does not answer the OCI distribution API at /v2/ (%s); is it a registry?",
			c.action(), s.loc.Registry, answer)
	}
	// A body larger than maxErrorBody is not a registry's: readDoc's
	// error says so, and is turned into notRegistry below.
	d, err := c.getDoc("answer to /v2/", "/v2/", nil, maxErrorBody, "")
	switch {
	case err != nil && codeOf(err) == abi.ErrOther:
		return notRegistry("200 with a body that is not JSON")
	case err != nil:
		return err
	case d.status == 404:
		return notRegistry("404 Not Found")
	case d.status != 200:
		return d.err
	}
	// Registries answer {} or nothing at all (go-containerregistry); a web
	// server or a captive portal answers HTML.
	if len(strings.TrimSpace(string(d.data))) > 0 && !json.Valid(d.data) && d.get("Docker-Distribution-API-Version") == "" {
		return notRegistry("200 with a body that is not JSON")
	}
	return nil
}
