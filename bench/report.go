package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The report: every phase measured, the best run of each, the targets.

type run1 struct {
	Seconds float64 `json:"seconds"`
	// CPUSeconds is this process's CPU time (the registry's is not in it).
	CPUSeconds     float64 `json:"cpu_seconds"`
	Bytes          int64   `json:"bytes"`
	Requests       counts  `json:"requests"`
	PeakRSS        int64   `json:"peak_rss_bytes"`
	GuestMemory    uint64  `json:"guest_memory_max_bytes,omitempty"`
	GuestInstances int     `json:"guest_instances,omitempty"`
}

const (
	unitMBps = "MB/s"
	unitOps  = "op/s"
)

// result is one workload on one variant: its slices (one per round), and
// their total.
type result struct {
	Workload string  `json:"workload"`
	Variant  string  `json:"variant"`
	Ops      int     `json:"ops"`
	Slices   []run1  `json:"slices"`
	Total    run1    `json:"total"`
	MBps     float64 `json:"mb_per_s"`
	OpsPerS  float64 `json:"ops_per_s"`
	ReqPerOp float64 `json:"requests_per_op"`
	// PeakRSS and GuestMemory are the largest over the slices.
	PeakRSS     int64  `json:"peak_rss_bytes"`
	GuestMemory uint64 `json:"guest_memory_max_bytes,omitempty"`
	unit        string
}

// throughput is what ratios compare: higher is better.
func (r *result) throughput() float64 {
	if r.unit == unitMBps {
		return r.MBps
	}
	return r.OpsPerS
}

type startResult struct {
	Kind             string  `json:"kind"`
	LoadSeconds      float64 `json:"load_seconds,omitempty"`
	FirstCallSeconds float64 `json:"first_call_seconds"`
	NextCallSeconds  float64 `json:"next_call_seconds,omitempty"`
	GuestMemory      uint64  `json:"guest_memory_bytes,omitempty"`
	PeakRSS          int64   `json:"peak_rss_bytes,omitempty"`
}

type targetResult struct {
	Target string  `json:"target"`
	Value  float64 `json:"value"`
	Want   string  `json:"want"`
	Pass   bool    `json:"pass"`
}

type report struct {
	Command     string       `json:"command"`
	Date        string       `json:"date"`
	Go          string       `json:"go"`
	Platform    string       `json:"platform"`
	CPU         string       `json:"cpu"`
	CPUs        int          `json:"cpus"`
	Registry    string       `json:"registry"`
	Guest       string       `json:"guest,omitempty"` // the embedded one if empty
	LoadBefore  string       `json:"loadavg_before"`
	LoadAfter   string       `json:"loadavg_after"`
	Scale       float64      `json:"scale"`
	Rounds      int          `json:"rounds"`
	LongRounds  int          `json:"long_rounds"`
	RSSPerPhase bool         `json:"peak_rss_per_phase"`
	Tree        string       `json:"kloset_tree,omitempty"`
	RestoreTree string       `json:"restore_tree,omitempty"`
	Tree2       []treeResult `json:"restore_tree_results,omitempty"`
	// TreePackfiles is how many packfiles the restore-tree backup made.
	TreePackfiles int            `json:"restore_tree_packfiles,omitempty"`
	Start         []startResult  `json:"start"`
	Results       []*result      `json:"results"`
	Targets       []targetResult `json:"targets"`
	order         []string       // workloads, in the order they ran
	byKey         map[string]*result
}

func newReport(cfg config) *report {
	return &report{
		Command:     strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " "),
		Date:        time.Now().UTC().Format(time.RFC3339),
		Go:          runtime.Version(),
		Platform:    runtime.GOOS + "/" + runtime.GOARCH,
		CPU:         cpuModel(),
		CPUs:        runtime.NumCPU(),
		Scale:       cfg.scale,
		Rounds:      cfg.rounds,
		LongRounds:  cfg.longRounds,
		RSSPerPhase: rssReset,
		byKey:       map[string]*result{},
	}
}

func unitOf(workload string) string {
	switch {
	case strings.HasPrefix(workload, "put 1KiB"), strings.HasPrefix(workload, "list"), strings.HasPrefix(workload, "range"):
		return unitOps
	}
	return unitMBps
}

// add records a slice of ops operations of workload on variant v, and
// returns the workload's result.
func (r *report) add(workload, v string, ops int, x run1) *result {
	key := workload + "\x00" + v
	res := r.byKey[key]
	if res == nil {
		res = &result{Workload: workload, Variant: v, unit: unitOf(workload), Total: run1{Requests: counts{Method: map[string]int64{}}}}
		r.byKey[key] = res
		r.Results = append(r.Results, res)
		if !slices.Contains(r.order, workload) {
			r.order = append(r.order, workload)
		}
	}
	res.Slices = append(res.Slices, x)
	res.Ops += ops
	t := &res.Total
	t.Seconds += x.Seconds
	t.CPUSeconds += x.CPUSeconds
	t.Bytes += x.Bytes
	t.Requests = t.Requests.plus(x.Requests)
	t.PeakRSS = max(t.PeakRSS, x.PeakRSS)
	t.GuestMemory = max(t.GuestMemory, x.GuestMemory)
	t.GuestInstances = max(t.GuestInstances, x.GuestInstances)
	res.PeakRSS, res.GuestMemory = t.PeakRSS, t.GuestMemory
	res.MBps = float64(t.Bytes) / 1e6 / t.Seconds
	res.OpsPerS = float64(res.Ops) / t.Seconds
	res.ReqPerOp = float64(t.Requests.Total) / float64(res.Ops)
	return res
}

func (r *report) get(workload, v string) *result { return r.byKey[workload+"\x00"+v] }

// The targets, measured in the same run.
const (
	wantSandbox = 0.95
	wantNative  = 0.85
	// wantZot bounds the time of a list on the zot double over that of
	// the same list on distribution, both sandboxed.
	wantZot         = 1.2
	wantGuestMemory = 32 << 20
	wantPutRequests = 3
	wantGetRequests = 1
)

func (r *report) evaluate() {
	r.Targets = nil
	add := func(name string, value float64, want string, pass bool) {
		r.Targets = append(r.Targets, targetResult{Target: name, Value: value, Want: want, Pass: pass})
	}
	for _, w := range r.order {
		n, s := r.get(w, native), r.get(w, wasm)
		if n != nil && s != nil {
			ratio := s.throughput() / n.throughput()
			add("sandboxed/native, "+w, ratio, fmt.Sprintf(">= %.2f", wantSandbox), ratio >= wantSandbox)
		}
	}
	for _, w := range r.order {
		d, z := r.get(w, wasm), r.get(w, wasmZot)
		if d != nil && z != nil {
			ratio := d.throughput() / z.throughput()
			add("list time, zot double/distribution, "+w, ratio, fmt.Sprintf("<= %.2f", wantZot), ratio <= wantZot)
		}
		// The same without the proxy's hop, which the double needs
		// and zot does not.
		if p := r.get(w, wasmProxy); p != nil && z != nil {
			ratio := p.throughput() / z.throughput()
			add("list time, zot double/plain proxy, "+w, ratio, fmt.Sprintf("<= %.2f", wantZot), ratio <= wantZot)
		}
	}
	for _, w := range r.order {
		if !strings.HasPrefix(w, "put c") && !strings.HasPrefix(w, "get c") {
			continue
		}
		x, n := r.get(w, raw), r.get(w, native)
		if x != nil && n != nil {
			ratio := n.throughput() / x.throughput()
			add("native/raw, "+w, ratio, fmt.Sprintf(">= %.2f", wantNative), ratio >= wantNative)
		}
	}
	r.evaluateTree(add)
	var guest uint64
	for _, res := range r.Results {
		guest = max(guest, res.GuestMemory)
	}
	for _, s := range r.Start {
		guest = max(guest, s.GuestMemory)
	}
	if guest > 0 {
		add("guest linear memory per instance (MiB)", float64(guest)/(1<<20), fmt.Sprintf("< %d", wantGuestMemory>>20), guest < wantGuestMemory)
	}
	for _, w := range []string{"zeros restore", "zeros cat"} {
		if res := r.get(w, wasm); res != nil {
			add("peak RSS (MB), "+w, float64(res.PeakRSS)/1e6, fmt.Sprintf("< %.0f", wantZerosRSS/1e6), res.PeakRSS < wantZerosRSS)
		}
	}
	for _, w := range r.order {
		for _, v := range []string{native, wasm} {
			res := r.get(w, v)
			switch {
			case res == nil:
			case strings.HasPrefix(w, "put c"):
				add(fmt.Sprintf("requests per put, %s, %s", w, v), res.ReqPerOp, fmt.Sprintf("<= %d", wantPutRequests), res.ReqPerOp <= wantPutRequests)
			case strings.HasPrefix(w, "range"):
				add(fmt.Sprintf("requests per range read, %s", v), res.ReqPerOp, fmt.Sprintf("<= %d", wantGetRequests), res.ReqPerOp <= wantGetRequests)
			}
		}
	}
}

// The targets of the restore-tree workload (issue 18).
const (
	wantTreeVsBackup = 1.0
	wantTreeVsFS     = 1.5
	wantTreeLatency  = 2.0
	wantTreeRSS      = 700e6
	wantTreeRequests = 4 // a manifest, and at most 3 windows (RATIONALE.md)
)

func (r *report) tree(phase, store string) *treeResult {
	for i := range r.Tree2 {
		if t := &r.Tree2[i]; t.Phase == phase && t.Store == store {
			return t
		}
	}
	return nil
}

func (r *report) evaluateTree(add func(name string, value float64, want string, pass bool)) {
	for _, store := range []string{treeOCI, treeOcibackup, treePlugin} {
		backup := r.tree("backup", store)
		for _, phase := range []string{"restore", "check"} {
			oci, fs := r.tree(phase, store), r.tree(phase, treeFS)
			if oci == nil {
				continue
			}
			if backup != nil {
				x := oci.Seconds / backup.Seconds
				add(fmt.Sprintf("tree %s time / backup time, %s", phase, store), x, fmt.Sprintf("<= %.2f", wantTreeVsBackup), x <= wantTreeVsBackup)
			}
			if fs != nil {
				x := oci.Seconds / fs.Seconds
				add(fmt.Sprintf("tree %s time, %s / fs", phase, store), x, fmt.Sprintf("<= %.2f", wantTreeVsFS), x <= wantTreeVsFS)
			}
			if slow := r.tree(phase, treeLatency); slow != nil && store == treeOCI {
				x := slow.Seconds / oci.Seconds
				add(fmt.Sprintf("tree %s time, +20 ms a request / none", phase), x, fmt.Sprintf("<= %.2f", wantTreeLatency), x <= wantTreeLatency)
			}
			if r.TreePackfiles > 0 && store == treeOCI {
				x := float64(oci.Requests.Total-oci.OpenRequests) / float64(r.TreePackfiles)
				add(fmt.Sprintf("tree %s requests per packfile (%d packfiles)", phase, r.TreePackfiles), x, fmt.Sprintf("<= %d", wantTreeRequests), x <= wantTreeRequests)
			}
			rss := oci.PeakRSS + oci.PluginRSS
			add(fmt.Sprintf("tree %s peak RSS (MB), %s", phase, store), float64(rss)/1e6, fmt.Sprintf("< %.0f", wantTreeRSS/1e6), rss < wantTreeRSS)
		}
	}
}

func (r *report) print(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprint(w, r.markdown())
}

// markdown is the report's tables.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %d CPUs (%s), %s, %s; registry %s; scale %g, %d interleaved rounds (%d for the big object and Kloset)\n\n",
		r.Date[:10], r.CPUs, r.CPU, r.Platform, r.Go, strings.Split(r.Registry, " at ")[0], r.Scale, r.Rounds, r.LongRounds)
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) before: %s; after: %s.\n\n", r.LoadBefore, r.LoadAfter)
	if r.Guest != "" {
		fmt.Fprintf(&b, "Guest module: %s (not the embedded one).\n\n", r.Guest)
	}
	if r.Tree != "" {
		fmt.Fprintf(&b, "Kloset tree: %s.\n\n", r.Tree)
	}
	fmt.Fprintln(&b, "| workload | raw | native | wasm | wasm/native | native/raw | requests/op (raw, native, wasm) | client CPU/op (native, wasm) | peak RSS (native, wasm) | guest memory |")
	fmt.Fprintln(&b, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, w := range r.order {
		x, n, s := r.get(w, raw), r.get(w, native), r.get(w, wasm)
		cell := func(res *result) string {
			if res == nil {
				return "–"
			}
			if strings.HasPrefix(w, "list") {
				return fmt.Sprintf("%.0f ms", res.Total.Seconds*1000/float64(res.Ops))
			}
			return fmt.Sprintf("%.1f %s", res.throughput(), res.unit)
		}
		ratio := func(a, c *result) string {
			if a == nil || c == nil {
				return "–"
			}
			return fmt.Sprintf("%.2f", a.throughput()/c.throughput())
		}
		req := func(res *result) string {
			if res == nil {
				return "–"
			}
			return fmt.Sprintf("%.2f", res.ReqPerOp)
		}
		rss := func(res *result) string {
			if res == nil {
				return "–"
			}
			return mib(res.PeakRSS)
		}
		cpu := func(res *result) string {
			if res == nil {
				return "–"
			}
			d := time.Duration(res.Total.CPUSeconds / float64(res.Ops) * float64(time.Second))
			switch {
			case d >= time.Second:
				return fmt.Sprintf("%.2f s", d.Seconds())
			case d >= time.Millisecond:
				return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
			}
			return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
		}
		guest := "–"
		if s != nil && s.GuestMemory > 0 {
			guest = mib(int64(s.GuestMemory))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s, %s, %s | %s, %s | %s, %s | %s |\n", w, cell(x), cell(n), cell(s),
			ratio(s, n), ratio(n, x), req(x), req(n), req(s), cpu(n), cpu(s), rss(n), rss(s), guest)
	}
	for i, w := range r.order {
		d, p, z := r.get(w, wasm), r.get(w, wasmProxy), r.get(w, wasmZot)
		if d == nil || p == nil || z == nil {
			continue
		}
		if i == slices.IndexFunc(r.order, func(w string) bool { return r.get(w, wasmZot) != nil }) {
			fmt.Fprintln(&b)
			fmt.Fprintln(&b, "| list, sandboxed | on distribution | through a plain proxy | on the zot double | requests/op (distribution, zot double) |")
			fmt.Fprintln(&b, "|---|--:|--:|--:|--:|")
		}
		perOp := func(res *result) string { return fmt.Sprintf("%.1f ms", res.Total.Seconds*1000/float64(res.Ops)) }
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.2f, %.2f |\n", w, perOp(d), perOp(p), perOp(z), d.ReqPerOp, z.ReqPerOp)
	}
	if len(r.Tree2) > 0 {
		fmt.Fprintf(&b, "\nRestore tree: %s; %d packfiles.\n\n", r.RestoreTree, r.TreePackfiles)
		fmt.Fprintln(&b, "| tree phase | store | time | requests (GET; opening) | peak RSS | read-ahead on disk |")
		fmt.Fprintln(&b, "|---|---|--:|--:|--:|--:|")
		for _, t := range r.Tree2 {
			rss := mib(t.PeakRSS)
			if t.PluginRSS > 0 {
				rss += " + " + mib(t.PluginRSS) + " plugin"
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f s | %d (%d; %d) | %s | %s |\n", t.Phase, t.Store, t.Seconds, t.Requests.Total, t.Requests.Method["GET"], t.OpenRequests, rss, mib(t.Windows))
		}
	}
	if len(r.Start) > 0 {
		fmt.Fprintln(&b)
		fmt.Fprintln(&b, "| start | load | first call | next call | guest memory |")
		fmt.Fprintln(&b, "|---|--:|--:|--:|--:|")
		for _, s := range r.Start {
			load, next, guest := "–", "–", "–"
			if s.LoadSeconds > 0 {
				load = fmt.Sprintf("%.1f ms", s.LoadSeconds*1000)
			}
			if s.NextCallSeconds > 0 {
				next = fmt.Sprintf("%.2f ms", s.NextCallSeconds*1000)
			}
			if s.GuestMemory > 0 {
				guest = mib(int64(s.GuestMemory))
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f ms | %s | %s |\n", s.Kind, load, s.FirstCallSeconds*1000, next, guest)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(&b)
		fmt.Fprintln(&b, "| target | measured | want | |")
		fmt.Fprintln(&b, "|---|--:|--:|---|")
		for _, t := range r.Targets {
			verdict := "pass"
			if !t.Pass {
				verdict = "**FAIL**"
			}
			fmt.Fprintf(&b, "| %s | %.2f | %s | %s |\n", t.Target, t.Value, t.Want, verdict)
		}
	}
	if !r.RSSPerPhase {
		fmt.Fprintln(&b, "\nPeak RSS could not be reset between phases (/proc/self/clear_refs): it is the process's peak so far.")
	}
	return b.String()
}

func (r *report) write(cfg config) error {
	if cfg.out != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.out), 0o755); err != nil {
			return err
		}
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.out, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s\n", cfg.out)
	}
	if cfg.markdown != "" {
		if err := os.WriteFile(cfg.markdown, []byte(r.markdown()), 0o644); err != nil {
			return err
		}
	}
	return nil
}
