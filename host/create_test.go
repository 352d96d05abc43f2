package host_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// gate holds the first request a matcher accepts until it is opened: the
// proxy asks its rules in turn, so the request waits in the proxy,
// between the store and the registry. reached is closed when it arrives.
type gate struct {
	match   faultproxy.Matcher
	once    sync.Once
	reached chan struct{}
	open    chan struct{}
}

func newGate(p *faultproxy.Proxy, m faultproxy.Matcher) *gate {
	g := &gate{match: m, reached: make(chan struct{}), open: make(chan struct{})}
	// A rule that never applies: it only holds the request.
	p.Always(func(r *http.Request) bool {
		held := false
		if g.match(r) {
			g.once.Do(func() { held = true })
		}
		if held {
			close(g.reached)
			<-g.open
		}
		return false
	}, faultproxy.Fault{})
	return g
}

// createRace is two creates of one store on distribution: b through a
// proxy that adds latency to each request, held at the request the gate
// matches; a on the direct path, run while b is held.
type createRace struct {
	reg        *registrytest.Registry
	proxy      *faultproxy.Proxy
	cfgA, cfgB map[string]string
	passA      []byte
	passB      []byte
}

func newCreateRace(t *testing.T, deletes bool) *createRace {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: deletes})
	proxy := faultproxy.Start(t, reg.URL)
	return &createRace{
		reg: reg, proxy: proxy,
		cfgA:  map[string]string{"location": "oci://" + reg.Host + "/race/store"},
		cfgB:  map[string]string{"location": "oci://" + proxy.Host + "/race/store"},
		passA: []byte("passphrase of the create on the direct path"),
		passB: []byte("passphrase of the create behind latency"),
	}
}

// run starts b's create, waits until it is held at g, runs during(), opens
// g and returns b's result.
func (r *createRace) run(t *testing.T, g *gate, during func()) error {
	t.Helper()
	r.proxy.Always(faultproxy.Any, faultproxy.Fault{Kind: faultproxy.Delay, Delay: 30 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := vault.Create(context.Background(), r.cfgB, r.passB, nil)
		done <- err
	}()
	select {
	case <-g.reached:
	case err := <-done:
		close(g.open)
		t.Fatalf("the create behind latency ended (%v) without making the request the test holds it at", err)
	}
	during()
	close(g.open)
	return <-done
}

// liveCandidates are the candidate configurations in the registry that
// are not withdrawn (deleted, or tagged to the tombstone).
func (r *createRace) liveCandidates(t *testing.T) []string {
	t.Helper()
	var live []string
	for _, tag := range r.candidates(t) {
		m := r.manifest(t, tag)
		if !strings.Contains(m, "vnd.plakar.tombstone") {
			live = append(live, tag)
		}
	}
	return live
}

// noLoserLeft checks that the registry holds only the winner's candidate:
// none at all of the loser's where the registry deletes, a tombstone at
// most where it refuses.
func (r *createRace) noLoserLeft(t *testing.T, deletes bool) {
	t.Helper()
	if live := r.liveCandidates(t); len(live) != 1 {
		t.Errorf("live candidate configurations: %q, want only the winner's", live)
	}
	if all := r.candidates(t); deletes && len(all) != 1 {
		t.Errorf("candidate tags on a registry that deletes: %q, want only the winner's", all)
	}
}

// candidates are the tags of candidate configurations in the registry.
func (r *createRace) candidates(t *testing.T) []string {
	t.Helper()
	resp, err := http.Get(r.reg.URL + "/v2/race/store/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct{ Tags []string }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, tag := range list.Tags {
		if strings.HasPrefix(tag, "config-candidate-") {
			tags = append(tags, tag)
		}
	}
	return tags
}

func (r *createRace) manifest(t *testing.T, tag string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", r.reg.URL+"/v2/race/store/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// check opens the store with pass, the winner's passphrase, after making
// sure that the loser's, other, is refused as a wrong one.
func (r *createRace) check(t *testing.T, pass, other []byte) *testVault {
	t.Helper()
	if _, err := vault.Open(context.Background(), r.cfgA, other, nil); !errors.Is(err, vault.ErrWrongPassphrase) {
		t.Errorf("opening with the losing create's passphrase: %v, want %v", err, vault.ErrWrongPassphrase)
	}
	return openVault(t, r.cfgA, pass, nil)
}

// TestCreateRaceLate is issue 17's scenario: the create behind latency
// checked that no store was there, then stalls; meanwhile the direct one
// creates the store and backs up. The late create must fail with a clear
// message and leave nothing behind, and the store stay the first one's,
// snapshot and all. On a registry that refuses DELETE too (the loser
// tombstones its candidate).
func TestCreateRaceLate(t *testing.T) {
	holds := []struct {
		name string
		at   faultproxy.Matcher
	}{
		// At its first write, the upload of the empty blob: after it
		// found no store there, and a repository holding nothing else.
		{"first write", faultproxy.UploadStart},
		// At its look for anything else in the repository (one page of
		// tags, without last): after it found no configuration there.
		{"tags looked for", func(req *http.Request) bool {
			return req.Method == "GET" && strings.HasSuffix(req.URL.Path, "/tags/list") &&
				!strings.Contains(req.URL.RawQuery, "last=")
		}},
	}
	for _, hold := range holds {
		for _, deletes := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/delete=%v", hold.name, deletes), func(t *testing.T) {
				raceLate(t, deletes, hold.at)
			})
		}
	}
}

// raceLate holds the create behind latency at the request at matches,
// while the direct one creates the store and backs up.
func raceLate(t *testing.T, deletes bool, at faultproxy.Matcher) {
	{
		{
			r := newCreateRace(t, deletes)
			src := reliabilitySource(t, 17, 5)
			g := newGate(r.proxy, at)
			var id [32]byte
			err := r.run(t, g, func() {
				if _, err := vault.Create(context.Background(), r.cfgA, r.passA, nil); err != nil {
					t.Fatalf("the direct create: %v", err)
				}
				v := openVault(t, r.cfgA, r.passA, nil)
				var err error
				if id, err = v.backup(src); err != nil {
					t.Fatalf("the backup after the direct create: %v", err)
				}
			})
			if !errors.Is(err, vault.ErrStoreExists) || !strings.Contains(err.Error(), "a store was created at oci://"+r.proxy.Host+"/race/store meanwhile") {
				t.Fatalf("the late create: %v; want %q, the store was created meanwhile", err, vault.ErrStoreExists)
			}
			t.Logf("the late create fails as it must: %v", err)
			r.noLoserLeft(t, deletes)
			v := r.check(t, r.passA, r.passB)
			if ids := v.snapshotIDs(t); len(ids) != 1 || ids[0] != id {
				t.Fatalf("snapshots: %x, want [%x]", ids, id)
			}
			v.restoreSame(t, id, src)
		}
	}
}

// TestCreateRaceBothWrote holds the create behind latency after it wrote
// its candidate, before it looked for others: the direct create then sees
// that candidate and loses, withdrawing its own, and the held one wins.
// At most one create succeeds, whatever the order.
func TestCreateRaceBothWrote(t *testing.T) {
	for _, deletes := range []bool{false, true} {
		t.Run(fmt.Sprintf("delete=%v", deletes), func(t *testing.T) {
			r := newCreateRace(t, deletes)
			g := newGate(r.proxy, func(req *http.Request) bool {
				return req.Method == "GET" && strings.HasSuffix(req.URL.Path, "/tags/list") &&
					strings.Contains(req.URL.RawQuery, "last=config-candidate-")
			})
			var errA error
			errB := r.run(t, g, func() {
				_, errA = vault.Create(context.Background(), r.cfgA, r.passA, nil)
			})
			if errA == nil || !strings.Contains(errA.Error(), "another create of a store at oci://"+r.reg.Host+"/race/store is running") {
				t.Errorf("the direct create, which saw the other's candidate: %v; want it to fail, naming the other create", errA)
			}
			if errB != nil {
				t.Fatalf("the held create, the only candidate left: %v", errB)
			}
			r.noLoserLeft(t, deletes)
			r.check(t, r.passB, r.passA)
		})
	}
}
