package vault

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/PlakarKorp/kloset/events"
	"github.com/PlakarKorp/kloset/kcontext"
	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/snapshot"
	"github.com/google/uuid"
)

// Progress is where the operation in progress stands. Totals are -1 while
// unknown (a backup learns them from a scan of the source that runs
// alongside).
type Progress struct {
	Op    string // backup, restore or check; empty when idle
	Phase string // what the operation is doing now

	FilesTotal int64
	BytesTotal int64
	FilesDone  int64
	BytesDone  int64 // bytes of the files done
	// BytesRead are the bytes of files read from the source (a backup
	// does not read the files that did not change since the last one).
	BytesRead int64
	Errors    int64

	// What went to and came from the store since the operation began.
	BytesStored  int64
	BytesFetched int64

	Started time.Time
}

// Elapsed is the time since the operation began.
func (p Progress) Elapsed() time.Duration {
	if p.Started.IsZero() {
		return 0
	}
	return time.Since(p.Started)
}

// maxErrorsKept bounds the per-path errors an operation keeps.
const maxErrorsKept = 100

// op is the operation in progress, as the events report it.
type op struct {
	name    string
	started time.Time
	// Counters at the start of the operation.
	baseStored, baseFetched int64

	phase                      atomic.Value // string
	filesTotal, bytesTotal     atomic.Int64
	filesDone, bytesDone       atomic.Int64
	bytesCached, errorsCounted atomic.Int64
	// totalsFromEvents: fs.summary events set the totals (check); a
	// backup's come from its own scan, a restore's from the snapshot.
	totalsFromEvents bool
	// countsFromExporter: a restore counts what its exporter reports, not
	// the events.
	countsFromExporter bool

	mu       sync.Mutex
	errors   []string
	subjects []string        // errors' subjects, in the same order
	seen     map[string]bool // subjects already reported
	// missingChunks are the chunks Kloset reported missing (the first
	// maxErrorsKept): it says so of any chunk it could not read.
	missingChunks []objects.MAC
}

func newOp(name string, store *CountingStore, totalsFromEvents bool) *op {
	o := &op{name: name, started: time.Now(), totalsFromEvents: totalsFromEvents}
	o.baseStored, o.baseFetched = store.Transferred()
	o.filesTotal.Store(-1)
	o.bytesTotal.Store(-1)
	o.phase.Store("starting")
	return o
}

func (o *op) setPhase(p string) { o.phase.Store(p) }

// addError records an error about subject (a path or an object); Kloset
// reports one failure under several event types (path.error and
// file.error, say), which count once.
func (o *op) addError(subject, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = make(map[string]bool)
	}
	if o.seen[subject] {
		return
	}
	o.seen[subject] = true
	o.errorsCounted.Add(1)
	if len(o.errors) < maxErrorsKept {
		o.errors = append(o.errors, msg)
		o.subjects = append(o.subjects, subject)
	}
}

// replaceError says better what went wrong with subject.
func (o *op) replaceError(subject, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, s := range o.subjects {
		if s == subject {
			o.errors[i] = msg
		}
	}
}

// Errors returns the per-path errors kept, and how many there were.
func (o *op) Errors() ([]string, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.errors...), o.errorsCounted.Load()
}

func (o *op) progress(store *CountingStore) Progress {
	stored, fetched := store.Transferred()
	return Progress{
		Op:           o.name,
		Phase:        o.phase.Load().(string),
		FilesTotal:   o.filesTotal.Load(),
		BytesTotal:   o.bytesTotal.Load(),
		FilesDone:    o.filesDone.Load(),
		BytesDone:    o.bytesDone.Load(),
		BytesRead:    max(o.bytesDone.Load()-o.bytesCached.Load(), 0),
		Errors:       o.errorsCounted.Load(),
		BytesStored:  stored - o.baseStored,
		BytesFetched: fetched - o.baseFetched,
		Started:      o.started,
	}
}

// eventHub turns Kloset's events into the current operation's progress
// and errors, and passes them on to the program's listener.
type eventHub struct {
	listener func(Event)
	last     atomic.Int64 // when the last event came, in Unix ns

	mu sync.Mutex
	op *op
}

// waitQuiet waits until no event came for span, for at most max.
func (h *eventHub) waitQuiet(span, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		since := time.Since(time.Unix(0, h.last.Load()))
		if since >= span {
			return
		}
		time.Sleep(span - since)
	}
}

func (h *eventHub) begin(o *op) {
	h.mu.Lock()
	h.op = o
	h.mu.Unlock()
}

func (h *eventHub) end(o *op) {
	h.mu.Lock()
	if h.op == o {
		h.op = nil
	}
	h.mu.Unlock()
}

func (h *eventHub) current() *op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.op
}

// Progress reports the operation in progress (Op is empty when there is
// none). It may be called from any goroutine.
func (v *Vault) Progress() Progress {
	o := v.events.current()
	if o == nil {
		return Progress{FilesTotal: -1, BytesTotal: -1}
	}
	return o.progress(v.store)
}

// syncWorkflow names the events the vault sends itself.
const syncWorkflow = "vault"

// sync returns once every event emitted before it was called has been
// dispatched: the event bus delivers in order.
func (h *eventHub) sync(kctx *kcontext.KContext, repo uuid.UUID) {
	done := make(chan struct{})
	kctx.Events().NewRepositoryEmitter(repo, syncWorkflow).Info("vault.sync", map[string]any{"done": done})
	<-done
}

func (h *eventHub) dispatch(ev *events.Event) {
	if ev.Workflow == syncWorkflow {
		if done, ok := ev.Data["done"].(chan struct{}); ok {
			close(done)
		}
		return
	}
	e := Event{Workflow: ev.Workflow, Type: ev.Type, Level: ev.Level, Data: ev.Data}
	if p, ok := ev.Data["path"].(string); ok {
		e.Path = p
	}
	if err, ok := ev.Data["error"]; ok && err != nil {
		e.Error = fmt.Sprint(err)
	}
	if o := h.current(); o != nil {
		o.apply(ev, &e)
	}
	if h.listener != nil {
		h.listener(e)
	}
}

func fileSize(ev *events.Event) int64 {
	if fi, ok := ev.Data["fileinfo"].(objects.FileInfo); ok {
		return fi.Size()
	}
	return 0
}

func (o *op) apply(ev *events.Event, e *Event) {
	if ev.Level == events.Error {
		what := e.Path
		if what == "" {
			if mac, ok := ev.Data["mac"].(objects.MAC); ok {
				what = fmt.Sprintf("%s %x", strings.TrimSuffix(ev.Type, ".error"), mac)
			} else {
				what = ev.Type
			}
		}
		o.addError(what, fmt.Sprintf("%s: %s", what, e.Error))
		if mac, ok := ev.Data["mac"].(objects.MAC); ok && ev.Type == "chunk.error" && ev.Data["error"] == snapshot.ErrChunkMissing {
			o.mu.Lock()
			if len(o.missingChunks) < maxErrorsKept {
				o.missingChunks = append(o.missingChunks, mac)
			}
			o.mu.Unlock()
		}
		return
	}
	if o.countsFromExporter && (ev.Type == "file.ok" || ev.Type == "file.cached") {
		return
	}
	switch ev.Type {
	case "file.ok":
		o.filesDone.Add(1)
		o.bytesDone.Add(fileSize(ev))
	case "file.cached":
		// A backup reports an unchanged file as cached, then as ok: it
		// was not read.
		o.bytesCached.Add(fileSize(ev))
	case "fs.summary":
		if o.totalsFromEvents {
			if n, ok := ev.Data["files"].(uint64); ok {
				o.filesTotal.Store(int64(n))
			}
			if n, ok := ev.Data["size"].(uint64); ok {
				o.bytesTotal.Store(int64(n))
			}
		}
	case "snapshot.import.start":
		o.setPhase("reading files")
	case "snapshot.import.done":
		o.setPhase("uploading")
	case "snapshot.vfs.start":
		o.setPhase("building the index")
	case "snapshot.index.start":
		o.setPhase("writing the index")
	case "snapshot.commit.start":
		o.setPhase("committing")
	}
}
