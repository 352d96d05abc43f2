package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/term"

	"github.com/plakar-oci/ocistore/vault"
)

// console serializes what goes to the terminal: a progress line on stderr,
// redrawn in place, and the lines (logs, warnings, results) that must not
// tear it. Every write clears the progress line first; the next tick draws
// it again.
type console struct {
	mu   sync.Mutex
	w    io.Writer
	line bool // a progress line is drawn
}

func newConsole(w io.Writer) *console { return &console{w: w} }

func (c *console) clearLocked() {
	if c.line {
		io.WriteString(c.w, "\r\x1b[K")
		c.line = false
	}
}

// Write writes log output (whole lines) to stderr.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	return c.w.Write(p)
}

// Printf writes a line to stderr.
func (c *console) Printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	fmt.Fprintf(c.w, format+"\n", args...)
}

// Stdout writes a line to w (stdout), which may be the same terminal.
func (c *console) Stdout(w io.Writer, s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	io.WriteString(w, s+"\n")
}

// Progress draws s as the progress line.
func (c *console) Progress(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, "\r"+s+"\x1b[K")
	c.line = true
}

// Clear removes the progress line.
func (c *console) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
}

// progressInterval: the line is redrawn at most 5 times a second.
const progressInterval = 200 * time.Millisecond

// rateWindow is the span over which the transfer rate is measured.
const rateWindow = 5 * time.Second

// startProgress draws the progress of the vault's operation until the
// returned function is called, if stderr is a terminal and -silent is off.
func (a *app) startProgress(v *vault.Vault) (stop func()) {
	if !a.progressOn() {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(progressInterval)
		defer tick.Stop()
		var r rateMeter
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			p := v.Progress()
			if p.Op == "" {
				continue
			}
			line := formatProgress(p, r.add(time.Now(), p.BytesDone))
			if w := terminalWidth(a.stderr); w > 0 && len(line) >= w {
				line = line[:w-1]
			}
			a.con.Progress(line)
		}
	}()
	return func() {
		close(done)
		<-finished
		a.con.Clear()
	}
}

func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return width
}

// rateMeter measures a rate over the last rateWindow.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	t time.Time
	n int64
}

// add records n at t and returns the rate in bytes per second (0 until
// there is a span to measure).
func (r *rateMeter) add(t time.Time, n int64) float64 {
	r.samples = append(r.samples, rateSample{t, n})
	for len(r.samples) > 2 && t.Sub(r.samples[1].t) >= rateWindow {
		r.samples = r.samples[1:]
	}
	first := r.samples[0]
	dt := t.Sub(first.t).Seconds()
	if dt < 0.5 {
		return 0
	}
	return float64(n-first.n) / dt
}

// formatProgress is the progress line: what, files and bytes done (of how
// many), the rate, the time left, and what the store received.
func formatProgress(p vault.Progress, rate float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", p.Op, p.Phase)
	if p.FilesTotal >= 0 {
		fmt.Fprintf(&b, " | %s/%s files", humanize.Comma(p.FilesDone), humanize.Comma(p.FilesTotal))
	} else {
		fmt.Fprintf(&b, " | %s files", humanize.Comma(p.FilesDone))
	}
	if p.BytesTotal >= 0 {
		fmt.Fprintf(&b, ", %s/%s", ibytes(p.BytesDone), ibytes(p.BytesTotal))
	} else {
		fmt.Fprintf(&b, ", %s", ibytes(p.BytesDone))
	}
	if rate > 0 {
		fmt.Fprintf(&b, " | %s/s", ibytes(int64(rate)))
		if p.BytesTotal > p.BytesDone {
			eta := time.Duration(float64(p.BytesTotal-p.BytesDone) / rate * float64(time.Second))
			fmt.Fprintf(&b, " | ETA %s", formatDuration(eta))
		}
	}
	switch p.Op {
	case "backup":
		fmt.Fprintf(&b, " | stored %s", ibytes(p.BytesStored))
	default:
		fmt.Fprintf(&b, " | fetched %s", ibytes(p.BytesFetched))
	}
	if p.Errors > 0 {
		fmt.Fprintf(&b, " | %d errors", p.Errors)
	}
	fmt.Fprintf(&b, " | %s", formatDuration(p.Elapsed()))
	return b.String()
}

func ibytes(n int64) string {
	if n < 0 {
		n = 0
	}
	return humanize.IBytes(uint64(n))
}

// formatDuration writes d as 1h02m03s, 2m03s, 4.2s.
func formatDuration(d time.Duration) string {
	switch {
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm%02ds", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60)
}
