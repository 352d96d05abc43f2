package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	fsstore "github.com/PlakarKorp/integrations/fs/storage"
	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/internal/faultproxy"
	"github.com/plakar-oci/ocistore/internal/pluginproc"
)

// The restore-tree workload: first the tree backed up, restored and
// checked as ocibackup does it (treevault.go); then $(go env GOROOT)/src
// (at scale < 1, the part of it sourceRoots picks) backed up into the
// registry by the sandboxed store, then restored and checked, each by a new store with an empty
// read-ahead cache and a new Kloset cache, as later plakar commands; the
// same restore and check through 20 ms added to every request
// (internal/faultproxy); and the same three from Kloset's fs store on
// local disk (integrations/fs); and the same backup, restore and check
// through the Plakar plugin (package plugin), a process per command that
// Kloset drives over gRPC as Plakar does. See docs/benchmarks.md.

const (
	treeOCI     = "oci"
	treeLatency = "oci+20ms"
	treeFS      = "fs"
	treePlugin  = "plugin"
	addedDelay  = 20 * time.Millisecond
)

// treeResult is one phase of the workload on one store.
type treeResult struct {
	Phase    string  `json:"phase"`
	Store    string  `json:"store"`
	Seconds  float64 `json:"seconds"`
	Requests counts  `json:"requests"`
	PeakRSS  int64   `json:"peak_rss_bytes"`
	// PluginRSS is the plugin process's peak, besides the benchmark's
	// (Kloset's, as Plakar's).
	PluginRSS int64 `json:"plugin_peak_rss_bytes,omitempty"`
	// OpenRequests are those of opening the repository (its
	// configuration and states), before the restore or check.
	OpenRequests int64 `json:"open_requests,omitempty"`
	// Windows is the read-ahead cache's disk use after the phase.
	Windows int64 `json:"readahead_bytes,omitempty"`
}

// fsTarget is Kloset's fs store as a benchmark target: it makes no
// requests and has no guest.
type fsTarget struct{ storeTarget }

func (fsTarget) requests() counts           { return counts{Method: map[string]int64{}} }
func (fsTarget) guestMemory() (uint64, int) { return 0, 0 }

// pluginTarget is the store of a plugin process, as Plakar opens it, in
// front of the registry through a proxy that counts the plugin's
// requests.
type pluginTarget struct {
	storeTarget
	proc  *pluginproc.Process
	proxy *faultproxy.Proxy
	// peak is the process's peak RSS, read as it is closed (a child's
	// rusage counts its parent's memory from before the exec).
	peak int64
}

func (t *pluginTarget) requests() counts { return proxyCounts(t.proxy, t.cnt) }

// proxyCounts adds the requests proxy forwarded since it was last asked
// to cnt, and returns cnt's counts.
func proxyCounts(proxy *faultproxy.Proxy, cnt *counter) counts {
	for _, e := range proxy.Requests() {
		cnt.count(e.Method)
	}
	return cnt.snapshot()
}

func (t *pluginTarget) close(ctx context.Context) error {
	err := t.s.Close(ctx)
	t.peak = procStatus(strconv.Itoa(t.proc.Pid()), "VmHWM")
	if perr := t.proc.Stop(); err == nil {
		err = perr
	}
	t.proxy.Close()
	return err
}

// newPluginStore starts the plugin executable exe and opens repository
// repo through it, with an empty read-ahead cache of its own; the
// compiled module is kept in cache, as Plakar's cache directory keeps it.
func (b *bench) newPluginStore(exe, cache, repo string) (*pluginTarget, error) {
	proxy, err := faultproxy.New(b.reg.URL)
	if err != nil {
		return nil, err
	}
	proc, err := pluginproc.Spawn(exe, pluginproc.Env(cache), os.Stderr)
	if err != nil {
		proxy.Close()
		return nil, err
	}
	b.stores++
	windows := b.path(fmt.Sprintf("readahead-%d", b.stores))
	s, err := proc.Store(b.ctx, map[string]string{"location": "oci://" + proxy.Host + "/" + repo, "readahead_cache_dir": windows})
	if err != nil {
		proc.Stop()
		proxy.Close()
		return nil, err
	}
	return &pluginTarget{storeTarget: storeTarget{s: s, cnt: &counter{}, repo: repo, windows: windows}, proc: proc, proxy: proxy}, nil
}

func (b *bench) restoreTree() error {
	root, err := goroot()
	if err != nil {
		return err
	}
	src := filepath.Join(root, "src")
	roots, srcBytes, err := sourceRoots(src, int64(130e6*b.cfg.scale))
	if err != nil {
		return err
	}
	_, files, err := rootsSize(roots)
	if err != nil {
		return err
	}
	if err := warm(roots); err != nil {
		return err
	}
	b.rep.RestoreTree = fmt.Sprintf("%d files, %.0f MB of %s", files, float64(srcBytes)/1e6, src)
	fmt.Printf("  tree: %s\n", b.rep.RestoreTree)
	wrapped, key, err := klosetConfig([]byte("ocistore benchmark"))
	if err != nil {
		return err
	}
	proxy, err := faultproxy.New(b.reg.URL)
	if err != nil {
		return err
	}
	defer proxy.Close()
	proxy.Always(faultproxy.Any, faultproxy.Fault{Kind: faultproxy.Delay, Delay: addedDelay})

	b.repos++
	repo := fmt.Sprintf("bench/tree-%d", b.repos)
	ociStore := func(host string) (*storeTarget, error) {
		b.repos++
		return b.newStoreAt(wasm, host, repo)
	}
	fsDir := filepath.Join(b.path("tree-fs"), "repo")
	fsStore := func() (target, error) {
		s, err := fsstore.NewStore(b.ctx, "fs", map[string]string{"location": "fs://" + fsDir})
		if err != nil {
			return nil, err
		}
		return &fsTarget{storeTarget{s: s, cnt: &counter{}}}, nil
	}

	// First, while the process holds nothing else: its peak RSS is then
	// ocibackup's own.
	if err := b.treeVault(roots, srcBytes); err != nil {
		return err
	}

	exe, err := pluginproc.Build("./plugin", b.path("plugin-bin"))
	if err != nil {
		return err
	}
	// The plugin's cache directory holds the compiled module, as
	// Plakar's does after the first command: compiled before the phases.
	pluginCache := b.path("plugin-cache")
	if pt, err := b.newPluginStore(exe, pluginCache, "bench/warm"); err != nil {
		return err
	} else if err := pt.close(b.ctx); err != nil {
		return err
	}
	b.repos++
	pluginRepo := fmt.Sprintf("bench/tree-%d", b.repos)

	var id, fsID, pluginID objects.MAC
	// Backups: the registry's, then the fs store's.
	st, err := ociStore(b.reg.Host)
	if err != nil {
		return err
	}
	if err := st.s.Create(b.ctx, wrapped); err != nil {
		return err
	}
	if id, err = b.treeBackup(treeOCI, st, st.s, key, roots); err != nil {
		return err
	}
	if st, err = ociStore(b.reg.Host); err != nil {
		return err
	}
	packfiles, err := st.s.List(b.ctx, storage.StorageResourcePackfile)
	st.close(b.ctx)
	if err != nil {
		return err
	}
	b.rep.TreePackfiles = len(packfiles)
	ft, err := fsStore()
	if err != nil {
		return err
	}
	fs := ft.(*fsTarget).s
	if err := fs.Create(b.ctx, wrapped); err != nil {
		return err
	}
	if fsID, err = b.treeBackup(treeFS, ft, fs, key, roots); err != nil {
		return err
	}
	pt, err := b.newPluginStore(exe, pluginCache, pluginRepo)
	if err != nil {
		return err
	}
	if err := pt.s.Create(b.ctx, wrapped); err != nil {
		return err
	}
	if pluginID, err = b.treeBackup(treePlugin, pt, pt.s, key, roots); err != nil {
		return err
	}

	for _, v := range []string{treeOCI, treeLatency, treeFS, treePlugin} {
		for _, phase := range []string{"restore", "check"} {
			var t target
			var s storage.Store
			snap := id
			switch v {
			case treeOCI, treeLatency:
				host := b.reg.Host
				if v == treeLatency {
					host = proxy.Host
				}
				st, err := ociStore(host)
				if err != nil {
					return err
				}
				t, s = st, st.s
			case treeFS:
				if t, err = fsStore(); err != nil {
					return err
				}
				s, snap = t.(*fsTarget).s, fsID
			case treePlugin:
				pt, err := b.newPluginStore(exe, pluginCache, pluginRepo)
				if err != nil {
					return err
				}
				t, s, snap = pt, pt.s, pluginID
			}
			if err := b.treePhase(phase, v, t, s, key, snap, srcBytes); err != nil {
				return err
			}
		}
	}
	return nil
}

// treeBackup backs roots up into s, and records the phase.
func (b *bench) treeBackup(v string, t target, s storage.Store, key []byte, roots []string) (objects.MAC, error) {
	defer b.treeClose(t)
	env := newKlosetEnv(b.path("tree-cache-backup-" + v))
	defer env.close()
	repo, err := openRepository(env, s, key)
	if err != nil {
		return objects.NilMac, err
	}
	defer repo.Close()
	var id objects.MAC
	err = b.treeSlice("backup", v, t, func() error {
		id, err = klosetBackup(env, repo, b.path("tree-packfiles-"+v), roots...)
		return err
	})
	return id, err
}

// treePhase restores or checks snapshot id from s, as a later command.
func (b *bench) treePhase(phase, v string, t target, s storage.Store, key []byte, id objects.MAC, want int64) error {
	defer b.treeClose(t)
	env := newKlosetEnv(b.path(fmt.Sprintf("tree-cache-%s-%s", phase, v)))
	defer env.close()
	dest, err := b.restoreRoot("tree-restore-" + v)
	if err != nil {
		return err
	}
	defer os.RemoveAll(dest)
	var open int64
	err = b.treeSlice(phase, v, t, func() error {
		before := t.requests().Total
		repo, err := openRepository(env, s, key)
		if err != nil {
			return err
		}
		open = t.requests().Total - before
		defer repo.Close()
		if phase == "restore" {
			return klosetRestore(env, repo, id, dest)
		}
		return klosetCheck(env, repo, id)
	})
	if err != nil {
		return err
	}
	b.rep.Tree2[len(b.rep.Tree2)-1].OpenRequests = open
	if phase == "restore" {
		if got, _, err := treeSize(dest); err != nil || got != want {
			return fmt.Errorf("tree restore, %s: restored %d bytes (%v), want %d", v, got, err, want)
		}
	}
	return nil
}

func (b *bench) treeSlice(phase, v string, t target, f func() error) error {
	resetPeakRSS()
	settle()
	stop, err := b.treeProfile(phase, v)
	if err != nil {
		return err
	}
	before := t.requests()
	start := time.Now()
	err = f()
	stop()
	if err != nil {
		return fmt.Errorf("tree %s, %s: %w", phase, v, err)
	}
	r := treeResult{Phase: phase, Store: v, Seconds: time.Since(start).Seconds(), Requests: t.requests().since(before), PeakRSS: peakRSS()}
	if w, ok := t.(interface{ windowsDir() string }); ok {
		r.Windows = dirSize(w.windowsDir())
	}
	b.rep.Tree2 = append(b.rep.Tree2, r)
	fmt.Printf("  tree %-8s %-9s %7.2fs %6d requests (%d GET)  rss %s\n", phase, v, r.Seconds, r.Requests.Total, r.Requests.Method["GET"], mib(r.PeakRSS))
	return nil
}

// treeClose closes t after its phase, and records the peak RSS of a plugin
// process, known once it has exited, with the phase.
func (b *bench) treeClose(t target) {
	n := len(b.rep.Tree2)
	t.close(b.ctx)
	if pt, ok := t.(*pluginTarget); ok && n > 0 {
		b.rep.Tree2[n-1].PluginRSS = pt.peak
	}
}

func dirSize(dir string) int64 {
	if dir == "" {
		return 0
	}
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// treeProfile starts the CPU profile of one phase, when asked for
// (-tree-cpuprofile), and returns what stops it.
func (b *bench) treeProfile(phase, v string) (stop func(), err error) {
	if b.cfg.treeProfiles == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(b.cfg.treeProfiles, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(b.cfg.treeProfiles, phase+"-"+strings.ReplaceAll(v, " ", "")+".pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-tree-cpuprofile: %w (-cpuprofile profiles the whole run: use one of the two)", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
