package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

const lock = storage.StorageResourceLock

// TestReleaseKilledAtEveryStep releases a lock from a process that dies
// after its k-th request, for every k, on registries that delete by tag,
// by digest (distribution v2.8) and not at all (tombstones): the lock is
// then either live, whole, if none of the requests that went through
// wrote anything, or released, never in between. A lock taken again
// under the same MAC afterwards is live, and released by its next delete.
// A state (deleted by maintenance only) is whole or gone at every step.
// The first process of a store learns what the registry refuses; every
// later one makes no refused request, and releases the lock with its
// first write, after one HEAD at most: the way is recorded in the
// repository. (A state's tombstone follows the graveyard's update.)
func TestReleaseKilledAtEveryStep(t *testing.T) {
	regs := []struct {
		name  string
		start func(testing.TB) *registrytest.Registry
	}{
		{"distribution-nodelete", func(t testing.TB) *registrytest.Registry {
			return registrytest.Distribution(t, registrytest.Options{Delete: false})
		}},
		{"distribution-delete", func(t testing.TB) *registrytest.Registry {
			return registrytest.Distribution(t, registrytest.Options{Delete: true})
		}},
		{"docker-registry-v2.8", func(t testing.TB) *registrytest.Registry {
			return registrytest.DockerRegistry(t, registrytest.Options{Delete: true})
		}},
	}
	for _, r := range regs {
		t.Run(r.name, func(t *testing.T) {
			rig := newFaultRig(t, r.start(t))
			for _, res := range []storage.StorageResource{lock, storage.StorageResourceState} {
				for _, later := range []bool{false, true} {
					steps := 0
					for k := 0; ; k++ {
						done := deleteKilledAfter(t, rig, res, fmt.Sprintf("release/%s-k%d-later%v", res, k, later), k, later)
						if done {
							steps = k
							break
						}
					}
					if steps == 0 {
						t.Fatalf("%s, later %v: the delete made no request", res, later)
					}
					t.Logf("%s, later %v: the delete is %d requests", res, later, steps)
				}
			}
		})
	}
}

// deleteKilledAfter puts an object of kind res in repo, lists them from a
// new process (as Kloset lists the locks before it releases one: the list
// reads how the registry deletes), then deletes it from that process,
// which dies after k requests of the delete. It checks what another
// process sees, and tells whether the delete had finished before its
// process died. later has an earlier process delete an object of the kind
// in repo first.
//
// A lock is released by the first write of its delete. Other objects,
// which maintenance alone deletes, may take more than one write, and are
// then whole, listed and readable, until the last.
func deleteKilledAfter(t *testing.T, rig *faultRig, res storage.StorageResource, repo string, k int, later bool) (finished bool) {
	t.Helper()
	ctx := context.Background()
	direct := func() storage.Store {
		return newStoreWith(t, map[string]string{"location": "oci://" + rig.reg.Host + "/" + repo})
	}
	mac, data := randomMAC(), randomBytes(200)
	if later {
		earlier := randomMAC()
		s := direct()
		put(t, s, res, earlier, data)
		if err := s.Delete(ctx, res, earlier); err != nil {
			t.Fatalf("the earlier process's release: %v", err)
		}
	}
	put(t, direct(), res, mac, data)

	p := rig.store(t, repo)
	if got := list(t, p, res); !containsMAC(got, mac) {
		t.Fatalf("k=%d: the lock is not listed before its release", k)
	}
	rig.proxy.Requests()
	dying, die := context.WithCancel(ctx)
	defer die()
	var seen atomic.Int32
	cut := rig.proxy.Add(faultproxy.Rule{
		Match: func(*http.Request) bool {
			if int(seen.Add(1)) <= k {
				return false
			}
			die()
			return true
		},
		Fault: faultproxy.Fault{Kind: faultproxy.Delay, Delay: time.Hour},
	})
	err := p.Delete(dying, res, mac)
	rig.proxy.Clear()
	sent := rig.proxy.Requests()
	finished = cut.Hits() == 0
	if finished && err != nil {
		t.Fatalf("k=%d: the release failed with no fault: %v", k, err)
	}
	// What went through: the requests before the cut.
	wrote, refused := 0, 0
	for i, e := range sent {
		if i >= k && !finished {
			break
		}
		switch {
		case (e.Method == "PUT" || e.Method == "DELETE") && e.Status/100 == 2:
			// A state's delete reads and pushes the graveyard first.
			if wrote == 0 && later && i > 1 && res == lock {
				t.Errorf("k=%d: the delete's first write is its request %d (%v): want one request, after a HEAD at most", k, i+1, sent)
			}
			wrote++
		case e.Status == 400 || e.Status == 405:
			refused++
		}
	}
	if later && refused > 0 {
		t.Errorf("k=%d: a later process's release was refused %d times: %v", k, refused, sent)
	}

	o := direct()
	listed := containsMAC(list(t, o, res), mac)
	got, gerr := readAll(ctx, o, res, mac, nil)
	whole := listed && gerr == nil && bytes.Equal(got, data)
	gone := !listed && errors.Is(gerr, fs.ErrNotExist)
	switch {
	case res == lock && wrote > 0 && !gone:
		t.Fatalf("k=%d: after %v the lock is still there (listed %v, get %v)", k, sent, listed, gerr)
	case wrote == 0 && !whole:
		t.Fatalf("k=%d: after %v, which wrote nothing, the %s is not whole (listed %v, get %v)", k, sent, res, listed, gerr)
	case !whole && !gone:
		t.Fatalf("k=%d: after %v the %s is neither whole nor gone (listed %v, get %v)", k, sent, res, listed, gerr)
	}

	// Put again under the same MAC (a lock taken again), then deleted for
	// good.
	data2 := randomBytes(100)
	put(t, direct(), res, mac, data2)
	o = direct()
	if !containsMAC(list(t, o, res), mac) {
		t.Fatalf("k=%d: the %s put again is not listed", k, res)
	}
	if got := get(t, o, res, mac, nil); !bytes.Equal(got, data2) {
		t.Fatalf("k=%d: the %s put again reads back wrong", k, res)
	}
	if err := direct().Delete(ctx, res, mac); err != nil {
		t.Fatalf("k=%d: deleting the %s put again: %v", k, res, err)
	}
	o = direct()
	if containsMAC(list(t, o, res), mac) {
		t.Fatalf("k=%d: the %s is listed after its second delete", k, res)
	}
	if _, err := readAll(ctx, o, res, mac, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("k=%d: get of the %s after its second delete: %v", k, res, err)
	}
	return finished
}

// peerReleaser releases a peer's lock right after the first list of locks
// it sees, before Kloset reads the locks listed: the peer's release falls
// exactly between the list and the get.
type peerReleaser struct {
	storage.Store
	peer storage.Store // another process's store on the same repository
	mu   sync.Mutex
	own  []objects.MAC // the locks put through this store
	done bool
	err  error
	gone []objects.MAC
}

func (p *peerReleaser) Put(ctx context.Context, res storage.StorageResource, mac objects.MAC, rd io.Reader) (int64, error) {
	if res == storage.StorageResourceLock {
		p.mu.Lock()
		p.own = append(p.own, mac)
		p.mu.Unlock()
	}
	return p.Store.Put(ctx, res, mac, rd)
}

func (p *peerReleaser) List(ctx context.Context, res storage.StorageResource) ([]objects.MAC, error) {
	macs, err := p.Store.List(ctx, res)
	if err != nil || res != storage.StorageResourceLock {
		return macs, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return macs, nil
	}
	p.done = true
	for _, mac := range macs {
		if !containsMAC(p.own, mac) {
			if p.err = p.peer.Delete(ctx, res, mac); p.err != nil {
				break
			}
			p.gone = append(p.gone, mac)
		}
	}
	return macs, nil
}

// TestReliabilityPeerLockReleasedBetweenListAndGet runs backup A until it
// holds its lock, then backup B, whose list of locks (A's and its own) is
// followed at once by A's lock being released, before Kloset reads it:
// B sees a released lock, never an error, and both snapshots are whole.
func TestReliabilityPeerLockReleasedBetweenListAndGet(t *testing.T) {
	for _, deletes := range []bool{false, true} {
		t.Run(fmt.Sprintf("delete=%v", deletes), func(t *testing.T) {
			reg := registrytest.Distribution(t, registrytest.Options{Delete: deletes})
			cfg := map[string]string{"location": "oci://" + reg.Host + "/reliability/peer"}
			createStore(t, cfg)
			srcA, srcB := reliabilitySource(t, 21, 5), reliabilitySource(t, 22, 5)

			gate := &gateStore{reached: make(chan struct{}), release: make(chan struct{})}
			vA := openVault(t, cfg, reliabilityPassphrase, func(s storage.Store) storage.Store {
				gate.Store = s
				return gate
			})
			var idA objects.MAC
			doneA := make(chan error, 1)
			go func() {
				var err error
				idA, err = vA.backup(srcA)
				doneA <- err
			}()
			released := false
			defer func() {
				if !released {
					close(gate.release)
					<-doneA
				}
			}()
			select {
			case <-gate.reached:
			case err := <-doneA:
				t.Fatalf("backup A ended before its first packfile: %v", err)
			}

			hook := &peerReleaser{peer: newStoreWith(t, cfg)}
			vB := openVault(t, cfg, reliabilityPassphrase, func(s storage.Store) storage.Store {
				hook.Store = s
				return hook
			})
			idB, err := vB.backup(srcB)
			if hook.err != nil || len(hook.gone) != 1 {
				t.Fatalf("the hook released %d peer locks (%v), want A's", len(hook.gone), hook.err)
			}
			if err != nil {
				t.Fatalf("backup B, whose peer released its lock between list and get: %v", err)
			}
			vB.checkClean(t, "backup B")
			close(gate.release)
			released = true
			if err := <-doneA; err != nil {
				t.Fatalf("backup A: %v", err)
			}

			v := openVault(t, cfg, reliabilityPassphrase, nil)
			if got, want := v.snapshotIDs(t), sortedMACs(idA, idB); !slices.Equal(got, want) {
				t.Fatalf("snapshots: %x, want %x", got, want)
			}
			v.check(t, idA, idB)
			v.restoreSame(t, idB, srcB)
		})
	}
}

// TestLockListedTwiceReleasedBetween: two lists of the locks in one
// process (two commands through one store) see a peer's lock, then the
// peer releases it, then a third list runs: every Get that follows a list
// that named the lock returns it as it was listed, however the lists and
// the Gets interleave. Each list is followed by its own Get, as Kloset
// reads every lock it listed.
func TestLockListedTwiceReleasedBetween(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/release/listed-twice"}
	s, peer := newStoreWith(t, cfg), newStoreWith(t, cfg)
	mac, data := randomMAC(), []byte("a peer's lock")
	put(t, peer, lock, mac, data)
	for i := range 2 {
		if got := list(t, s, lock); !slices.Contains(got, mac) {
			t.Fatalf("list %d: %x, want the peer's lock", i, got)
		}
	}
	if err := peer.Delete(context.Background(), lock, mac); err != nil {
		t.Fatal(err)
	}
	if got := list(t, s, lock); slices.Contains(got, mac) {
		t.Fatalf("a list after the peer released its lock: %x", got)
	}
	for i := range 2 {
		rd, err := s.Get(context.Background(), lock, mac, nil)
		if err != nil {
			t.Fatalf("get %d of a lock two lists named, released since: %v", i, err)
		}
		b, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("get %d: %q, %v; want the lock as listed", i, b, err)
		}
	}
	if _, err := s.Get(context.Background(), lock, mac, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a third get, which no list named: %v; want %v", err, fs.ErrNotExist)
	}
}

// TestLockListSkipsReleasedKeepsOthers: a list that finds a lock released
// (on a registry that refuses DELETE its tag stays, on the tombstone)
// leaves it out, and the Gets of the other locks return each its own
// bytes. The released lock sorts first, so that every lock after it
// shifts in the list.
func TestLockListSkipsReleasedKeepsOthers(t *testing.T) {
	reg := registrytest.Distribution(t, registrytest.Options{Delete: false})
	cfg := map[string]string{"location": "oci://" + reg.Host + "/release/list-skips"}
	s, peer := newStoreWith(t, cfg), newStoreWith(t, cfg)
	macs := make([]objects.MAC, 5)
	for i := range macs {
		macs[i] = randomMAC()
	}
	slices.SortFunc(macs, func(a, b objects.MAC) int { return bytes.Compare(a[:], b[:]) })
	for i, mac := range macs {
		put(t, peer, lock, mac, []byte(fmt.Sprintf("lock %d", i)))
	}
	if err := peer.Delete(context.Background(), lock, macs[0]); err != nil {
		t.Fatal(err)
	}
	if got := list(t, s, lock); !sameMACs(got, macs[1:]...) {
		t.Fatalf("listed %x, want the four locks not released", got)
	}
	for i, mac := range macs[1:] {
		if got, want := get(t, s, lock, mac, nil), fmt.Sprintf("lock %d", i+1); string(got) != want {
			t.Errorf("lock %d reads %q, want %q", i+1, got, want)
		}
	}
}
