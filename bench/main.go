// Command bench measures the OCI store, in one run, against one local
// registry (distribution v3.1.2 on a temporary directory, started here):
// the same workloads through go-containerregistry straight to the registry
// (raw: the ceiling), through the store compiled for the host (native) and
// through the store in its wasm sandbox (wasm). It prints a table, checks
// the project's targets and writes everything to a JSON file.
//
//	go run ./bench                 # full run: 1 GiB put/get, 500 MB Kloset tree
//	go run ./bench -scale 0.1      # quick run: the same workloads, a tenth as big
//
// The registry binary is found as the tests find it: $OCISTORE_REGISTRY_V3
// or build/bin/registry-v3.1.2 (`make tools`). The embedded guest is the
// one `make guest` built.
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

type config struct {
	scale      float64
	rounds     int
	longRounds int
	conc       []int
	rangeConc  int
	out        string
	markdown   string
	only       map[string]bool
	profile    string
	// treeProfiles is the directory of a CPU profile per restore-tree
	// phase.
	treeProfiles string
	keep         bool
	guest        string
	restoreDir   string
}

func main() {
	var cfg config
	var conc, only string
	flag.Float64Var(&cfg.scale, "scale", 1, "size of the workloads: 1 is the full benchmark, 0.1 a quick run")
	flag.IntVar(&cfg.rounds, "rounds", 12, "rounds each workload is cut into, every variant running its share of each round in turn (a multiple of 6: every order of three variants twice)")
	flag.IntVar(&cfg.longRounds, "long-rounds", 6, "rounds of the long workloads (one big object, Kloset), each running it whole with every store (even: both orders of two stores as often)")
	flag.StringVar(&conc, "conc", "1,4", "concurrencies of the put and get workload")
	flag.IntVar(&cfg.rangeConc, "range-conc", 4, "concurrency of the range reads, the small puts and Kloset's store")
	flag.StringVar(&cfg.out, "out", "build/bench.json", "JSON report")
	flag.StringVar(&cfg.markdown, "md", "", "also write the table, as Markdown, to this file")
	flag.StringVar(&only, "only", "", "run only these workloads (comma-separated: start, putget, range, list, big, kloset, zeros, restore-tree)")
	flag.StringVar(&cfg.profile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&cfg.treeProfiles, "tree-cpuprofile", "", "write a CPU profile of each restore-tree phase to PHASE-STORE.pprof in this directory")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (registry storage, trees)")
	flag.StringVar(&cfg.restoreDir, "restore-dir", defaultRestoreDir(), "where Kloset restores go (a tmpfs by default, when there is one: see restoreRoot)")
	flag.StringVar(&cfg.guest, "guest", "", "a guest module to measure instead of the embedded one (a .wasm file)")
	flag.Parse()
	for _, c := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fatalf("-conc: %q is not a concurrency", c)
		}
		cfg.conc = append(cfg.conc, n)
	}
	if cfg.rounds < 1 || cfg.longRounds < 1 || cfg.scale <= 0 {
		fatalf("-rounds and -long-rounds must be at least 1, and -scale positive")
	}
	if only != "" {
		cfg.only = map[string]bool{}
		for _, w := range strings.Split(only, ",") {
			cfg.only[strings.TrimSpace(w)] = true
		}
	}
	// The guest logs every request at debug level; warnings only.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	if cfg.profile != "" {
		f, err := os.Create(cfg.profile)
		if err != nil {
			fatalf("%v", err)
		}
		pprof.StartCPUProfile(f)
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	rep, err := run(cfg)
	if rep != nil {
		if werr := rep.write(cfg); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// bench is one run: the registry, the compiled guest, the report.
type bench struct {
	cfg    config
	ctx    context.Context
	dir    string
	reg    *registrytest.Registry
	plugin *host.Plugin
	rep    *report
	repos  int
	stores int
	// wasmBytes is the guest module the wasm variant runs.
	wasmBytes []byte
	// fronts are the hosts of the proxies in front of reg: the zot
	// double (wasmZot) and a plain proxy (wasmProxy).
	fronts map[string]string

	// The objects the native store put in the last put/get run, at the
	// highest concurrency, for the range reads (the store keeps its
	// cache).
	kept *keptObjects
	// Buffers of the workers: the objects being put, and reads.
	wbufs, rbufs [][]byte
}

type keptObjects struct {
	t    target
	macs []objects.MAC
}

func run(cfg config) (*report, error) {
	b := &bench{cfg: cfg, ctx: context.Background(), wasmBytes: host.EmbeddedGuest()}
	b.rep = newReport(cfg)
	var err error
	if cfg.guest != "" {
		if b.wasmBytes, err = os.ReadFile(cfg.guest); err != nil {
			return nil, err
		}
		b.rep.Guest = cfg.guest
	}
	b.rep.LoadBefore = loadAverage()
	if b.dir, err = os.MkdirTemp("", "ocistore-bench-"); err != nil {
		return nil, err
	}
	if !cfg.keep {
		defer os.RemoveAll(b.dir)
	} else {
		fmt.Fprintf(os.Stderr, "bench: keeping %s\n", b.dir)
	}
	regDir := b.path("registry")
	if b.reg, err = registrytest.StartDistribution(regDir, registrytest.Options{Delete: true}); err != nil {
		return nil, err
	}
	defer b.reg.Close()
	b.rep.Registry = "distribution " + registrytest.DistributionVersion + " at " + b.reg.URL
	b.fronts = map[string]string{}
	for v, double := range map[string]func(http.Handler) http.Handler{
		wasmZot:   registrytest.ZotTags,
		wasmProxy: func(h http.Handler) http.Handler { return h },
	} {
		front, closeFront, err := registrytest.StartFront(b.reg.URL, double, log.New(io.Discard, "", 0))
		if err != nil {
			return nil, err
		}
		defer closeFront()
		b.fronts[v] = front
	}
	fmt.Printf("registry: %s (storage %s)\n", b.rep.Registry, b.reg.Dir)

	steps := []struct {
		name string
		f    func() error
	}{
		{"start", b.start},
		{"putget", b.putGet},
		{"range", b.ranges},
		{"list", b.list},
		{"big", b.big},
		{"kloset", b.kloset},
		{"zeros", b.zeros},
		{"restore-tree", b.restoreTree},
	}
	for _, s := range steps {
		if b.plugin == nil && s.name != "start" {
			// Every workload but start runs on a plugin compiled once,
			// with a warm compilation cache.
			if b.plugin, err = host.Load(b.ctx, b.wasmBytes, host.Options{CacheDir: b.path("wazero")}); err != nil {
				return b.rep, err
			}
		}
		if cfg.only != nil && !cfg.only[s.name] {
			continue
		}
		fmt.Printf("== %s\n", s.name)
		if err := s.f(); err != nil {
			return b.rep, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if b.kept != nil {
		b.kept.t.close(b.ctx)
	}
	b.rep.LoadAfter = loadAverage()
	b.rep.evaluate()
	b.rep.print(os.Stdout)
	return b.rep, nil
}

// path makes a directory under the run's temporary directory.
func (b *bench) path(name string) string {
	p := filepath.Join(b.dir, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		fatalf("%v", err)
	}
	return p
}

// scaled is n scaled, at least least.
func (b *bench) scaled(n, least int) int {
	return max(least, int(math.Round(float64(n)*b.cfg.scale)))
}

// order is the order of the variants in a round: every order in turn
// (two for two variants, six for three), so that over a multiple of that
// many rounds each variant runs first, last and after each other one as
// often as the others. Rotating them only made the wasm store run after
// the native one in every round, and last more often than it with eight
// rounds: whatever drifts during a workload, or what one variant leaves
// the registry to do (its garbage), weighed on one variant more.
func order(round int, vs []string) []string {
	perms := permutations(vs)
	return perms[round%len(perms)]
}

// permutations lists every order of vs, in lexical order of positions.
func permutations(vs []string) [][]string {
	if len(vs) <= 1 {
		return [][]string{slices.Clone(vs)}
	}
	var out [][]string
	for i, v := range vs {
		rest := slices.Concat(vs[:i:i], vs[i+1:])
		for _, p := range permutations(rest) {
			out = append(out, append([]string{v}, p...))
		}
	}
	return out
}

// newTarget makes a variant on a fresh repository. Stores are created
// (the empty config blob and the configuration go in) before any
// measurement, as Kloset creates a repository before it stores in it.
func (b *bench) newTarget(v, name string, conc int) (target, error) {
	b.repos++
	repo := fmt.Sprintf("bench/%s-%d-%s", name, b.repos, v)
	if v == raw {
		return newRawTarget(b.reg.Host, repo, conc)
	}
	st, err := b.newStore(v, repo)
	if err != nil {
		return nil, err
	}
	if err := st.s.Create(b.ctx, []byte(`{"bench":true}`)); err != nil {
		return nil, err
	}
	return st, nil
}

func (b *bench) newStore(v, repo string) (*storeTarget, error) {
	return b.newStoreAt(v, b.reg.Host, repo)
}

// newStoreAt makes a store of repository repo at registry host (the
// registry, or a proxy to it), with an empty read-ahead cache of its own,
// as a new process on another machine has.
func (b *bench) newStoreAt(v, registry, repo string) (*storeTarget, error) {
	cnt := &counter{}
	b.stores++
	windows := b.path(fmt.Sprintf("readahead-%d", b.stores))
	config := map[string]string{"location": "oci://" + registry + "/" + repo, "readahead_cache_dir": windows}
	opt := host.WithTransport(cnt.wrap)
	var s storage.Store
	var err error
	switch v {
	case native:
		s, err = host.NewNativeStore(b.ctx, config, opt)
	case wasm:
		s, err = host.NewStore(b.ctx, b.plugin, config, opt)
	case wasmZot, wasmProxy:
		config["location"] = "oci://" + b.fronts[v] + "/" + repo
		s, err = host.NewStore(b.ctx, b.plugin, config, opt)
	default:
		err = fmt.Errorf("no store for variant %s", v)
	}
	if err != nil {
		return nil, err
	}
	return &storeTarget{s: s, cnt: cnt, repo: repo, windows: windows}, nil
}

// buffers makes sure every worker has a buffer for objects of size bytes
// (random bytes, made unique per object by their first 32) and one for
// reads.
func (b *bench) buffers(conc, size int) {
	for len(b.wbufs) < conc {
		b.wbufs = append(b.wbufs, nil)
		b.rbufs = append(b.rbufs, make([]byte, 256<<10))
	}
	for i := range conc {
		if len(b.wbufs[i]) != size {
			b.wbufs[i] = make([]byte, size)
			rand.NewChaCha8([32]byte{byte(i), 1}).Read(b.wbufs[i])
		}
	}
}

// objectMAC names object i of a phase: any 32 bytes make a MAC for the
// store, and these are unique per object.
func objectMAC(phase string, i int) objects.MAC {
	return objects.MAC(sha256.Sum256(fmt.Appendf(nil, "%s/%d", phase, i)))
}

// parallel runs op for i in [0, n) on conc workers and returns the sum of
// what op returned (bytes).
func parallel(ctx context.Context, n, conc int, op func(ctx context.Context, i, worker int) (int64, error)) (int64, error) {
	var next, total atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for w := range min(conc, n) {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return nil
				}
				k, err := op(ctx, i, w)
				if err != nil {
					return err
				}
				total.Add(k)
			}
		})
	}
	err := g.Wait()
	return total.Load(), err
}

// slice runs ops operations of a workload on t, and adds them to the
// workload's total for variant v.
func (b *bench) slice(workload, v string, t target, ops int, f func() (int64, error)) error {
	resetPeakRSS()
	settle()
	before := t.requests()
	start, cpu := time.Now(), cpuTime()
	n, err := f()
	elapsed, cpu := time.Since(start), cpuTime()-cpu
	if err != nil {
		return fmt.Errorf("%s, %s: %w", workload, v, err)
	}
	mem, instances := t.guestMemory()
	b.rep.add(workload, v, ops, run1{
		Seconds:        elapsed.Seconds(),
		CPUSeconds:     cpu.Seconds(),
		Bytes:          n,
		Requests:       t.requests().since(before),
		PeakRSS:        peakRSS(),
		GuestMemory:    mem,
		GuestInstances: instances,
	})
	return nil
}

// summary prints the totals of a workload.
func (b *bench) summary(workload string, vs []string) {
	for _, v := range vs {
		res := b.rep.get(workload, v)
		if res == nil {
			continue
		}
		fmt.Printf("  %-14s %-6s %8.2fs %s %6.2f req/op  cpu %7.2fs  rss %s%s\n", workload, v, res.Total.Seconds,
			rate(res.unit, res.Total.Bytes, res.Ops, res.Total.Seconds), res.ReqPerOp, res.Total.CPUSeconds, mib(res.PeakRSS), guestNote(res.GuestMemory))
	}
}

func guestNote(mem uint64) string {
	if mem == 0 {
		return ""
	}
	return "  guest " + mib(int64(mem))
}

func rate(unit string, n int64, ops int, s float64) string {
	if unit == unitMBps {
		return fmt.Sprintf("%9.1f MB/s", float64(n)/1e6/s)
	}
	return fmt.Sprintf("%9.1f op/s", float64(ops)/s)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// --- start ---

// start measures loading the guest (compiling it, or reading the compiled
// code from the cache) and a store's first call (an instance made,
// configured, and GET /v2/).
func (b *bench) start() error {
	cache := b.path("wazero")
	for _, kind := range []string{"cold", "warm"} {
		resetPeakRSS()
		t0 := time.Now()
		p, err := host.Load(b.ctx, b.wasmBytes, host.Options{CacheDir: cache})
		if err != nil {
			return err
		}
		load := time.Since(t0)
		s, err := host.NewStore(b.ctx, p, map[string]string{"location": "oci://" + b.reg.Host + "/bench/start-" + kind})
		if err != nil {
			return err
		}
		t1 := time.Now()
		if err := s.Ping(b.ctx); err != nil {
			return err
		}
		first := time.Since(t1)
		t2 := time.Now()
		if err := s.Ping(b.ctx); err != nil {
			return err
		}
		second := time.Since(t2)
		mem := s.GuestMemory()
		s.Close(b.ctx)
		b.rep.Start = append(b.rep.Start, startResult{
			Kind: kind, LoadSeconds: load.Seconds(), FirstCallSeconds: first.Seconds(), NextCallSeconds: second.Seconds(),
			GuestMemory: mem.Max, PeakRSS: peakRSS(),
		})
		fmt.Printf("  %s start: load %.1f ms, first call %.2f ms, next call %.2f ms, guest memory %s\n",
			kind, ms(load), ms(first), ms(second), mib(int64(mem.Max)))
		if kind == "warm" {
			b.plugin = p
		} else {
			p.Close(b.ctx)
		}
	}
	s, err := host.NewNativeStore(b.ctx, map[string]string{"location": "oci://" + b.reg.Host + "/bench/start-native"})
	if err != nil {
		return err
	}
	t1 := time.Now()
	if err := s.Ping(b.ctx); err != nil {
		return err
	}
	first := time.Since(t1)
	s.Close(b.ctx)
	b.rep.Start = append(b.rep.Start, startResult{Kind: "native", FirstCallSeconds: first.Seconds()})
	fmt.Printf("  native start: first call %.2f ms\n", ms(first))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// --- put and get ---

const packfileSize = 16 << 20

// rounds cuts n operations into at most r rounds: the bounds of each.
func rounds(n, r int) [][2]int {
	r = max(1, min(r, n))
	var out [][2]int
	for i := range r {
		out = append(out, [2]int{i * n / r, (i + 1) * n / r})
	}
	return out
}

// interleave runs the rounds of a workload: in each, every variant runs
// its slice of the operations, in an order that rotates from one round to
// the next. Whatever else loads the machine then weighs on every variant
// alike.
func (b *bench) interleave(workload string, vs []string, n int, targets map[string]target,
	op func(ctx context.Context, v string, i, worker int) (int64, error), conc int) error {
	for r, rg := range rounds(n, b.cfg.rounds) {
		for _, v := range order(r, vs) {
			t := targets[v]
			err := b.slice(workload, v, t, rg[1]-rg[0], func() (int64, error) {
				return parallel(b.ctx, rg[1]-rg[0], conc, func(ctx context.Context, i, w int) (int64, error) {
					return op(ctx, v, rg[0]+i, w)
				})
			})
			if err != nil {
				return err
			}
		}
	}
	b.summary(workload, vs)
	return nil
}

// putGet puts 64 objects of 16 MiB (1 GiB) with each variant, then gets
// them, at each concurrency.
func (b *bench) putGet() error {
	n := b.scaled(64, 4)
	top := b.cfg.conc[len(b.cfg.conc)-1]
	for _, conc := range b.cfg.conc {
		b.buffers(conc, packfileSize)
		targets := map[string]target{}
		macs := map[string][]objects.MAC{}
		for _, v := range variants {
			t, err := b.newTarget(v, fmt.Sprintf("putget-c%d", conc), conc)
			if err != nil {
				return err
			}
			targets[v] = t
			for i := range n {
				macs[v] = append(macs[v], objectMAC(fmt.Sprintf("putget-c%d-%s", conc, v), i))
			}
		}
		err := b.interleave(fmt.Sprintf("put c%d", conc), variants, n, targets, func(ctx context.Context, v string, i, w int) (int64, error) {
			buf := b.wbufs[w]
			copy(buf, macs[v][i][:])
			return packfileSize, targets[v].put(ctx, macs[v][i], buf)
		}, conc)
		if err != nil {
			return err
		}
		err = b.interleave(fmt.Sprintf("get c%d", conc), variants, n, targets, func(ctx context.Context, v string, i, w int) (int64, error) {
			got, err := targets[v].get(ctx, macs[v][i], 0, 0, b.rbufs[w])
			if err == nil && got != packfileSize {
				err = fmt.Errorf("get %d: %d bytes, want %d", i, got, packfileSize)
			}
			return got, err
		}, conc)
		if err != nil {
			return err
		}
		for v, t := range targets {
			if conc == top && v == native && b.kept == nil {
				b.kept = &keptObjects{t: t, macs: macs[v]}
				continue
			}
			t.close(b.ctx)
		}
	}
	return nil
}

// --- range reads ---

// ranges reads 20,000 ranges of 4 KiB to 1 MiB (log-uniform) at random
// offsets of the objects the native store put last, the same ranges with
// every variant. As in the list, every variant reads the same objects, so
// that the registry's work is the same for all: the native store that put
// them (its cache knows the blobs), and a raw client and a sandboxed store
// of their own, which learn the blobs first (untimed): from the manifests,
// and by reading a byte of each.
func (b *bench) ranges() error {
	if b.kept == nil {
		if err := b.keepObjects(); err != nil {
			return err
		}
	}
	n := b.scaled(20000, 200)
	conc := b.cfg.rangeConc
	b.buffers(conc, len(b.firstWbuf()))
	kept := b.kept
	repo := kept.t.(*storeTarget).repo
	readers := map[string]target{native: kept.t}
	rt, err := newRawTarget(b.reg.Host, repo, conc)
	if err != nil {
		return err
	}
	readers[raw] = rt
	ws, err := b.newStore(wasm, repo)
	if err != nil {
		return err
	}
	readers[wasm] = ws
	defer func() {
		rt.close(b.ctx)
		ws.close(b.ctx)
	}()
	for _, mac := range kept.macs {
		if err := rt.learn(b.ctx, mac); err != nil {
			return err
		}
		if _, err := ws.get(b.ctx, mac, 0, 1, b.rbufs[0]); err != nil {
			return err
		}
	}

	type rng struct {
		obj int
		off uint64
		n   uint32
	}
	r := rand.New(rand.NewPCG(20000, 4096))
	var total int64
	objs := len(kept.macs)
	rs := make([]rng, n)
	for i := range rs {
		size := int64(math.Exp(math.Log(4<<10) + r.Float64()*(math.Log(1<<20)-math.Log(4<<10))))
		rs[i] = rng{obj: r.IntN(objs), off: uint64(r.Int64N(packfileSize - size + 1)), n: uint32(size)}
		total += size
	}
	fmt.Printf("  %d ranges, %.1f MB in all\n", n, float64(total)/1e6)
	return b.interleave(fmt.Sprintf("range c%d", conc), variants, n, readers, func(ctx context.Context, v string, i, w int) (int64, error) {
		x := rs[i]
		got, err := readers[v].get(ctx, kept.macs[x.obj], x.off, x.n, b.rbufs[w])
		if err == nil && got != int64(x.n) {
			err = fmt.Errorf("range %d: %d bytes, want %d", i, got, x.n)
		}
		return got, err
	}, conc)
}

func (b *bench) firstWbuf() []byte {
	if len(b.wbufs) > 0 {
		return b.wbufs[0]
	}
	return make([]byte, packfileSize)
}

// keepObjects has the native store put the objects the range reads
// need, when putget did not run.
func (b *bench) keepObjects() error {
	n := b.scaled(64, 4)
	conc := b.cfg.rangeConc
	b.buffers(conc, packfileSize)
	t, err := b.newTarget(native, "ranges", conc)
	if err != nil {
		return err
	}
	macs := make([]objects.MAC, n)
	for i := range macs {
		macs[i] = objectMAC("ranges-"+native, i)
	}
	_, err = parallel(b.ctx, n, conc, func(ctx context.Context, i, w int) (int64, error) {
		copy(b.wbufs[w], macs[i][:])
		return 0, t.put(ctx, macs[i], b.wbufs[w])
	})
	if err != nil {
		return err
	}
	b.kept = &keptObjects{t: t, macs: macs}
	return nil
}

// --- small puts and list ---

// list puts 5,000 objects of 1 KiB into a repository (measured as small
// puts: the cost of a call, not of bytes), then lists them. Every
// variant lists the same repository, the native store's (the raw client
// reads the tag list alone): the registry's work then is the same for
// all. Two repositories of 5,000 tags, listed by one store, differed by
// 1.5 to 3.5% in three runs, as much as what is measured here.
func (b *bench) list() error {
	n := b.scaled(5000, 100)
	conc := b.cfg.rangeConc
	stores := []string{native, wasm}
	targets := map[string]target{}
	for _, v := range stores {
		t, err := b.newTarget(v, "list", conc)
		if err != nil {
			return err
		}
		targets[v] = t
	}
	nativeRepo := targets[native].(*storeTarget).repo
	data := make([][]byte, conc)
	for w := range data {
		data[w] = make([]byte, 1<<10)
	}
	err := b.interleave(fmt.Sprintf("put 1KiB c%d", conc), stores, n, targets, func(ctx context.Context, v string, i, w int) (int64, error) {
		mac := objectMAC("list-"+v, i)
		buf := data[w]
		copy(buf, mac[:])
		return int64(len(buf)), targets[v].put(ctx, mac, buf)
	}, conc)
	if err != nil {
		return err
	}
	for _, t := range targets {
		t.close(b.ctx)
	}
	// Clients of their own list it, warmed by one list each.
	lists := map[string]target{}
	for _, v := range variants {
		var t target
		if v == raw {
			t, err = newRawTarget(b.reg.Host, nativeRepo, 1)
		} else {
			t, err = b.newStore(v, nativeRepo)
		}
		if err != nil {
			return err
		}
		lists[v] = t
		if _, err := t.list(b.ctx); err != nil {
			return err
		}
	}
	// Every round lists listsPerRound times with each variant: a list
	// takes tens of milliseconds, and eight of them vary by more than
	// what is measured.
	listAll := func(ctx context.Context, v string, i, w int) (int64, error) {
		got, err := lists[v].list(ctx)
		if err == nil && got < n {
			err = fmt.Errorf("listed %d objects, want %d", got, n)
		}
		return 0, err
	}
	err = b.interleave(fmt.Sprintf("list %d", n), variants, listsPerRound*b.cfg.rounds, lists, listAll, 1)
	if err == nil {
		// The same repository through the zot double and through the
		// same proxy without it, against the sandboxed store on
		// distribution, each warmed by one list (which learns zot's way).
		for _, v := range []string{wasmProxy, wasmZot} {
			var t target
			if t, err = b.newStore(v, nativeRepo); err != nil {
				break
			}
			lists[v] = t
			if _, err = t.list(b.ctx); err != nil {
				break
			}
		}
		if err == nil {
			err = b.interleave(fmt.Sprintf("list %d"+zotSuffix, n), []string{wasm, wasmProxy, wasmZot}, listsPerRound*b.cfg.rounds, lists, listAll, 1)
		}
	}
	for _, t := range lists {
		t.close(b.ctx)
	}
	return err
}

// zotSuffix ends the name of the list on the zot double.
const zotSuffix = ", zot double"

// listsPerRound is how many lists each variant makes in a round.
const listsPerRound = 6

// --- one big object ---

// big puts one object of 1 GiB, streamed from a reader that cannot seek
// (too big to read ahead: the streamed upload), then gets it: neither may
// grow the guest's memory. Each long round does it once with each store.
func (b *bench) big() error {
	size := max(int64(64<<20), int64(float64(1<<30)*b.cfg.scale))
	stores := []string{native, wasm}
	targets := map[string]target{}
	for _, v := range stores {
		t, err := b.newTarget(v, "big", 1)
		if err != nil {
			return err
		}
		defer t.close(b.ctx)
		targets[v] = t
	}
	b.buffers(1, len(b.firstWbuf()))
	for r := range b.cfg.longRounds {
		for _, v := range order(r, stores) {
			st := targets[v].(*storeTarget)
			mac := objectMAC(fmt.Sprintf("big-%s", v), r)
			err := b.slice("put 1 object", v, st, 1, func() (int64, error) {
				src := io.LimitReader(rand.NewChaCha8([32]byte{7, byte(r)}), size)
				return st.s.Put(b.ctx, storage.StorageResourcePackfile, mac, onlyReader{src})
			})
			if err != nil {
				return err
			}
			err = b.slice("get 1 object", v, st, 1, func() (int64, error) {
				got, err := st.get(b.ctx, mac, 0, 0, b.rbufs[0])
				if err == nil && got != size {
					err = fmt.Errorf("got %d bytes, want %d", got, size)
				}
				return got, err
			})
			if err != nil {
				return err
			}
		}
	}
	b.summary("put 1 object", stores)
	b.summary("get 1 object", stores)
	return nil
}

// --- Kloset ---

// defaultRestoreDir is /dev/shm when it is a directory. Kloset's fs
// exporter creates each file it restores with os.CreateTemp and renames it
// into place; on this machine's disk that cost about a millisecond of CPU
// a file, as much in both modes, and made a restore of small files measure
// the disk rather than the store. The registry's storage stays on disk.
func defaultRestoreDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return ""
}

// restoreRoot makes the directory a restore goes to: under -restore-dir,
// or the benchmark's own directory if that is empty.
func (b *bench) restoreRoot(name string) (string, error) {
	if b.cfg.restoreDir == "" {
		return b.path(name), nil
	}
	return os.MkdirTemp(b.cfg.restoreDir, "ocistore-bench-"+name+"-")
}

// kloset backs up a tree of 500 MB (the Go source tree and generated
// files) with Kloset into each store, then restores it with a fresh store
// and Kloset cache, as a later plakar command would.
func (b *bench) kloset() error {
	size := int64(500e6 * b.cfg.scale)
	root, err := goroot()
	if err != nil {
		return err
	}
	src := filepath.Join(root, "src")
	roots, srcBytes, err := sourceRoots(src, size*157/500)
	if err != nil {
		return err
	}
	gen := b.path("tree")
	genBytes, err := generateTree(gen, size-srcBytes)
	if err != nil {
		return err
	}
	roots = sortedRoots(append(roots, gen))
	total, files, err := rootsSize(roots)
	if err != nil {
		return err
	}
	if err := warm(roots); err != nil {
		return err
	}
	b.rep.Tree = fmt.Sprintf("%d files, %.0f MB: %.0f MB of %s, %.0f MB generated", files, float64(total)/1e6, float64(srcBytes)/1e6, src, float64(genBytes)/1e6)
	if b.cfg.restoreDir != "" {
		b.rep.Tree += "; restored under " + b.cfg.restoreDir
	}
	fmt.Printf("  tree: %s\n", b.rep.Tree)
	passphrase := []byte("ocistore benchmark")
	wrapped, key, err := klosetConfig(passphrase)
	if err != nil {
		return err
	}
	for r := range b.cfg.longRounds {
		for _, v := range order(r, []string{native, wasm}) {
			if err := b.klosetOnce(v, r, roots, total, wrapped, key); err != nil {
				return err
			}
		}
	}
	b.summary("kloset backup", []string{native, wasm})
	b.summary("kloset restore", []string{native, wasm})
	return nil
}

func (b *bench) klosetOnce(v string, rep int, roots []string, total int64, wrapped, key []byte) error {
	b.repos++
	repo := fmt.Sprintf("bench/kloset-%d-%s", b.repos, v)
	st, err := b.newStore(v, repo)
	if err != nil {
		return err
	}
	if err := st.s.Create(b.ctx, wrapped); err != nil {
		return err
	}
	env := newKlosetEnv(b.path(fmt.Sprintf("kloset-cache-%d-%s-backup", rep, v)))
	repository, err := openRepository(env, st.s, key)
	if err != nil {
		return err
	}
	var id objects.MAC
	err = b.slice("kloset backup", v, st, 1, func() (int64, error) {
		var err error
		id, err = klosetBackup(env, repository, b.path(fmt.Sprintf("packfiles-%d-%s", rep, v)), roots...)
		return total, err
	})
	repository.Close()
	env.close()
	st.close(b.ctx)
	if err != nil {
		return err
	}

	// A later command: a new store (cold cache) and a new Kloset cache.
	st, err = b.newStore(v, repo)
	if err != nil {
		return err
	}
	defer st.close(b.ctx)
	env = newKlosetEnv(b.path(fmt.Sprintf("kloset-cache-%d-%s-restore", rep, v)))
	defer env.close()
	dest, err := b.restoreRoot(fmt.Sprintf("restore-%d-%s", rep, v))
	if err != nil {
		return err
	}
	defer os.RemoveAll(dest)
	err = b.slice("kloset restore", v, st, 1, func() (int64, error) {
		repository, err := openRepository(env, st.s, key)
		if err != nil {
			return 0, err
		}
		defer repository.Close()
		return total, klosetRestore(env, repository, id, dest)
	})
	if err != nil {
		return err
	}
	if got, _, err := treeSize(dest); err != nil || got != total {
		return fmt.Errorf("kloset restore, %s: restored %d bytes (%v), want %d", v, got, err, total)
	}
	return nil
}
