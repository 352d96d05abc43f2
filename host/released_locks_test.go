package host_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// lockCommand is one command's life of its lock, as Kloset has it: the
// locks listed (and each read), its own put, then released.
func lockCommand(t *testing.T, s storage.Store) {
	t.Helper()
	readLocks(t, s)
	mac := randomMAC()
	put(t, s, lock, mac, randomBytes(100))
	if err := s.Delete(context.Background(), lock, mac); err != nil {
		t.Fatalf("releasing lock %x: %v", mac[:4], err)
	}
}

// readLocks lists the locks and reads each, as Kloset does before it
// takes its own.
func readLocks(t *testing.T, s storage.Store) []objects.MAC {
	t.Helper()
	macs := list(t, s, lock)
	for _, mac := range macs {
		get(t, s, lock, mac, nil)
	}
	return macs
}

// TestLockListCostBounded runs commands on a registry that refuses DELETE,
// where a released lock's tag stays, on the tombstone: the locks a new
// process lists and reads after 20 commands cost the requests they cost
// after one, not one more per command ever run. A peer's live lock is
// listed and read throughout.
func TestLockListCostBounded(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: false}))
	const repo = "released/cost"
	cfg := map[string]string{"location": "oci://" + rig.reg.Host + "/" + repo}
	peerMAC, peerData := randomMAC(), []byte("a peer's lock")
	put(t, newStoreWith(t, cfg), lock, peerMAC, peerData)
	cost := func() []faultproxy.Entry {
		t.Helper()
		s := rig.store(t, repo)
		rig.proxy.Requests()
		got := readLocks(t, s)
		sent := rig.proxy.Requests()
		if !slices.Equal(got, []objects.MAC{peerMAC}) {
			t.Fatalf("listed %x, want only the peer's lock %x", got, peerMAC)
		}
		return sent
	}
	lockCommand(t, newStoreWith(t, cfg))
	after1 := cost()
	for range 19 {
		lockCommand(t, newStoreWith(t, cfg))
	}
	after20 := cost()
	t.Logf("a list of locks and their reads: %d requests after 1 command, %d after 20", len(after1), len(after20))
	if len(after20) != len(after1) {
		t.Fatalf("a list of locks and their reads costs %d requests after 20 commands, %d after 1: %v", len(after20), len(after1), after20)
	}
}

// holdOnce holds the first request match accepts (and no other) until
// proceed is closed, having closed reached. The proxy calls Match under
// its lock: only the process held goes through this proxy.
type holdOnce struct {
	match   faultproxy.Matcher
	reached chan struct{}
	proceed chan struct{}
	once    sync.Once
}

func newHoldOnce(match faultproxy.Matcher) *holdOnce {
	return &holdOnce{match: match, reached: make(chan struct{}), proceed: make(chan struct{})}
}

func (h *holdOnce) Match(r *http.Request) bool {
	if h.match(r) {
		h.once.Do(func() {
			close(h.reached)
			<-h.proceed
		})
	}
	return false
}

// TestReleasedLockPutAgain: a peer releases a lock it finds stale while
// its owner puts it again under the same MAC (Kloset's refresh), on a
// registry that refuses DELETE. The owner's put lands before the release
// names the lock in the list of released locks, between that and the
// release's read of the lock's tag, or after the release: every way, the
// lock ends live, and a new process lists it and reads its new bytes.
// Released again, it is no longer listed.
func TestReleasedLockPutAgain(t *testing.T) {
	rig := newFaultRig(t, registrytest.Distribution(t, registrytest.Options{Delete: false}))
	listWrite := faultproxy.Tagged(faultproxy.ManifestPut, "released-locks")
	for _, tc := range []struct {
		name string
		// hold returns the matcher of the release's request the owner's
		// put goes before, nil for none.
		hold func(tag string) faultproxy.Matcher
	}{
		{"before the list is written", func(string) faultproxy.Matcher { return listWrite }},
		{"between the list's write and the tag's read", func(tag string) faultproxy.Matcher {
			var mu sync.Mutex
			written := false
			return func(r *http.Request) bool {
				mu.Lock()
				defer mu.Unlock()
				if listWrite(r) {
					written = true
				}
				return written && faultproxy.Tagged(faultproxy.ManifestHead, tag)(r)
			}
		}},
		{"after the release", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := "released/again-" + strings.ReplaceAll(tc.name, " ", "-")
			repo = strings.ReplaceAll(repo, "'", "")
			cfg := map[string]string{"location": "oci://" + rig.reg.Host + "/" + repo}
			// A command before: the store records that the registry
			// refuses DELETE, and the list of released locks exists.
			lockCommand(t, newStoreWith(t, cfg))

			owner := newStoreWith(t, cfg)
			mac := randomMAC()
			put(t, owner, lock, mac, []byte("the lock as first put"))
			peer := rig.store(t, repo)
			readLocks(t, peer)

			newData := []byte("the lock put again")
			released := make(chan error, 1)
			if tc.hold == nil {
				released <- peer.Delete(context.Background(), lock, mac)
				put(t, owner, lock, mac, newData)
			} else {
				h := newHoldOnce(tc.hold("lock-" + hex.EncodeToString(mac[:])))
				rig.proxy.Add(faultproxy.Rule{Match: h.Match})
				go func() { released <- peer.Delete(context.Background(), lock, mac) }()
				select {
				case <-h.reached:
				case err := <-released:
					t.Fatalf("the release (%v) made no request to hold the owner's put before", err)
				}
				put(t, owner, lock, mac, newData)
				close(h.proceed)
			}
			if err := <-released; err != nil {
				t.Fatalf("the peer's release: %v", err)
			}
			rig.proxy.Clear()

			o := newStoreWith(t, cfg)
			if got := readLocks(t, o); !containsMAC(got, mac) {
				t.Fatalf("the lock put again is not listed: %x", got)
			}
			if got := get(t, o, lock, mac, nil); !bytes.Equal(got, newData) {
				t.Fatalf("the lock put again reads %q, want %q", got, newData)
			}
			if err := owner.Delete(context.Background(), lock, mac); err != nil {
				t.Fatalf("releasing the lock put again: %v", err)
			}
			if got := readLocks(t, newStoreWith(t, cfg)); containsMAC(got, mac) {
				t.Fatalf("the lock is listed after its second release: %x", got)
			}
		})
	}
}

// TestReleasedLocksListFull: with the list of released locks full, a
// release still succeeds and leaves the list as it was; the lock it
// released is not listed (the host reads it, a tombstone), a live lock
// is, and reads back.
func TestReleasedLocksListFull(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	const repo = "released/full"
	cfg := map[string]string{"location": "oci://" + reg.Host + "/" + repo}
	lockCommand(t, newStoreWith(t, cfg))

	// As many MACs as the list holds: 4 MiB of 65-byte lines.
	var full []byte
	for range (4 << 20) / 65 {
		mac := randomMAC()
		full = append(hex.AppendEncode(full, mac[:]), '\n')
	}
	registrytest.PushArtifact(t, reg.URL, repo, "released-locks", "application/vnd.plakar.released-locks.v1", full)
	u := &upstreamRepo{t: t, base: reg.URL + "/v2/" + repo}
	listDigest := func() string {
		resp, _ := u.do("HEAD", u.base+"/manifests/released-locks", nil, "Accept", "application/vnd.oci.image.manifest.v1+json")
		return resp.Header.Get("Docker-Content-Digest")
	}
	before := listDigest()

	s := newStoreWith(t, cfg)
	live, gone := randomMAC(), randomMAC()
	put(t, s, lock, live, []byte("live"))
	put(t, s, lock, gone, []byte("released"))
	if err := s.Delete(context.Background(), lock, gone); err != nil {
		t.Fatalf("a release with the list full: %v", err)
	}
	if after := listDigest(); after != before {
		t.Fatalf("the full list changed: %s, was %s", after, before)
	}
	o := newStoreWith(t, cfg)
	if got := readLocks(t, o); !slices.Equal(got, []objects.MAC{live}) {
		t.Fatalf("listed %x, want only the live lock %x", got, live)
	}
	if got := get(t, o, lock, live, nil); string(got) != "live" {
		t.Fatalf("the live lock reads %q", got)
	}
}
