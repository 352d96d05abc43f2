package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/plakar-oci/ocistore/internal/embedreg"
	"github.com/plakar-oci/ocistore/vault"
)

const maintenanceHelp = `
Under the store's exclusive lock (it refuses to run beside a backup),
removes what no remaining snapshot needs:
  - the packfiles only removed snapshots used;
  - the packfiles of backups that never finished (killed), once older than
    the grace period: younger ones may belong to a backup still running;
  - the locks of commands that were killed (older than Kloset's lock
    lifetime, 10 minutes).
It says what it removed and how many bytes each kind gave back. On
oci://local, and a registry served by 'ocibackup registry', the
registry's garbage collection follows, and the data directory shrinks. On
any other registry, the registry's own garbage collection frees the blobs.
  -dry-run         say what would be removed; remove nothing
  -grace DURATION  how old an unfinished backup's packfile must be to be
                   removed (default 24h; 0 removes them all: only when no
                   backup can be running)`

func cmdMaintenance(a *app, args []string) error {
	fs := a.flagSet("maintenance")
	dry := fs.Bool("dry-run", false, "")
	grace := fs.Duration("grace", vault.DefaultGrace, "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("maintenance takes no argument (-dry-run, -grace DURATION)")
	}
	if *grace < 0 {
		return usagef("maintenance: -grace %v: a duration of 0 or more, as in 24h", *grace)
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	a.doing = "maintenance was stopped: what it removed is recorded in the store; run it again to finish"
	opts := vault.MaintenanceOptions{DryRun: *dry, Grace: *grace}
	var collected *embedreg.CollectResult
	var collectErr error
	if a.localServer != "" && !*dry {
		// The server holds off writes while it collects; the store's lock
		// keeps this store's backups out meanwhile.
		opts.AfterDelete = func() { collected, collectErr = a.collectServer() }
	}
	r, err := v.Maintenance(opts)
	if r != nil {
		a.printMaintenance(r)
	}
	if err != nil {
		return a.displayError(err)
	}
	if *dry {
		return nil
	}
	switch {
	case a.localReg != nil:
		// Nothing else may use the local registry while it collects:
		// this process holds its directory until the collection is over.
		if err := v.Close(); err != nil {
			return a.displayError(err)
		}
		collected, collectErr = a.localReg.Collect()
	case a.localServer == "":
		a.sayRegistryDeletion(r)
		return nil
	}
	if collectErr != nil || collected == nil {
		return fmt.Errorf("the local registry's garbage collection failed: %v (the store's maintenance is done; run maintenance again to collect)", collectErr)
	}
	a.sayf("registry: garbage collected; its data directory went down by %s", ibytes(collected.Freed))
	return nil
}

func (a *app) printMaintenance(r *vault.MaintenanceResult) {
	verb := "removed"
	if r.DryRun {
		verb = "to remove"
	}
	a.sayf("snapshots kept: %d", r.Snapshots)
	a.sayf("packfiles that only removed snapshots used: %d %s", len(r.Unused), verb)
	line := fmt.Sprintf("packfiles of unfinished backups: %d %s", len(r.Orphans), verb)
	if r.OrphanBytes > 0 {
		line += fmt.Sprintf(" (%s)", ibytes(r.OrphanBytes))
	}
	if len(r.Recent) > 0 {
		line += fmt.Sprintf("; %d kept (%s), written less than %v ago (a backup may be running): run maintenance again after %s",
			len(r.Recent), ibytes(r.RecentBytes), r.Grace, r.OldestRecent.Add(r.Grace).Local().Format(time.DateTime))
	}
	a.sayf("%s", line)
	if len(r.StaleLocks) == 0 {
		a.sayf("stale locks: none")
	} else {
		var who []string
		for _, l := range r.StaleLocks {
			who = append(who, fmt.Sprintf("%s, %s ago", l.Hostname, time.Since(l.Timestamp).Round(time.Second)))
		}
		a.sayf("stale locks: %d %s (%s)", len(r.StaleLocks), verb, strings.Join(who, "; "))
	}
	if !r.DryRun {
		a.sayf("the store no longer holds: packfiles %s, locks %s (the state recording the removals: %s)",
			ibytes(r.PackfileBytes), ibytes(r.LockBytes), ibytes(r.StateBytes))
	}
	if len(r.Failed) > 0 {
		a.printErrors("could not remove", r.Failed, int64(len(r.Failed)))
	}
}

// sayRegistryDeletion says what an external registry does with the
// objects maintenance removed, from the store's record of how it deletes.
func (a *app) sayRegistryDeletion(r *vault.MaintenanceResult) {
	n := len(r.Unused) + len(r.Orphans) + len(r.StaleLocks) - len(r.Failed)
	if n <= 0 {
		return
	}
	freed := ibytes(r.PackfileBytes + r.LockBytes)
	tombstones := fmt.Sprintf("each was replaced by a tombstone: its tag, KIND-MAC, points to a small tombstone manifest, and the tag graveyard lists it. "+
		"Their %s stay in the registry until its operator enables deletion, deletes the graveyard, the list of released locks (tag released-locks) and the tombstone (with every tag on it) and runs its garbage collection (README, \"Deleting\")", freed)
	switch r.Deletion {
	case vault.DeletedByRegistry:
		a.sayf("registry: it deleted the %d objects removed; its own garbage collection frees their blobs (%s) when it runs", n, freed)
	case vault.DeletedByTombstone:
		a.sayf("registry: it refuses DELETE, so the %d objects removed are tombstones: %s", n, tombstones)
	default:
		a.sayf("registry: it frees the blobs of the %d objects removed when its own garbage collection runs. If it refuses DELETE, %s", n, tombstones)
	}
}

// collectServer asks the 'ocibackup registry' that serves the local
// registry to collect its garbage.
func (a *app) collectServer() (*embedreg.CollectResult, error) {
	addr := a.localServer
	req, err := http.NewRequestWithContext(a.ctx, http.MethodPost, "http://"+addr+embedreg.CollectPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the registry at %s to collect garbage: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return nil, fmt.Errorf("the registry at %s did not collect garbage: %s: %s", addr, resp.Status, oneLine(string(msg)))
	}
	var res embedreg.CollectResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return nil, fmt.Errorf("the registry at %s: %w", addr, err)
	}
	return &res, nil
}
