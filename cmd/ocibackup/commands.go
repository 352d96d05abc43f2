package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/dustin/go-humanize"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/vault"
)

// maxErrorsShown bounds the per-path errors a command prints.
const maxErrorsShown = 20

func cmdCreate(a *app, args []string) error {
	fs := a.flagSet("create")
	plaintext := fs.Bool("no-encryption", false, "")
	noCompression := fs.Bool("no-compression", false, "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("create takes no argument")
	}
	if *plaintext && a.g.keyfile != "" {
		return usagef("create: -keyfile and -no-encryption do not go together")
	}
	cfg, err := a.storeConfig()
	if err != nil {
		return err
	}
	var pass []byte
	if !*plaintext {
		if pass, err = a.passphrase(); err != nil {
			return err
		}
		if pass == nil {
			if !a.canPrompt() {
				return fmt.Errorf("a passphrase is needed to encrypt the store: %s (or -no-encryption)", passphraseHelp)
			}
			if pass, err = a.prompt("Passphrase for the new store", true); err != nil {
				return err
			}
		}
	}
	a.doing = "the store was not created"
	config, err := vault.Create(a.ctx, cfg, pass, &vault.CreateOptions{Plaintext: *plaintext, NoCompression: *noCompression})
	if err != nil {
		return a.displayError(err)
	}
	loc := a.displayLocation(cfg)
	enc := "off"
	if config.Encryption != nil {
		enc = fmt.Sprintf("%s, key derived from the passphrase (%s)", config.Encryption.DataAlgorithm, config.Encryption.KDFParams.KDF)
	}
	comp := "off"
	if config.Compression != nil {
		comp = config.Compression.Algorithm
	}
	a.sayf("created store %s at %s (encryption: %s; compression: %s)", config.RepositoryID, loc, enc, comp)
	return nil
}

// displayLocation is the location as the user gave it.
func (a *app) displayLocation(cfg map[string]string) string {
	loc := cfg["location"]
	if a.localFrom != "" {
		loc = strings.ReplaceAll(loc, a.localFrom, a.localTo)
	}
	return loc
}

func cmdBackup(a *app, args []string) error {
	fs := a.flagSet("backup")
	name := fs.String("name", "", "")
	var tags, excludes strList
	fs.Var(&tags, "tag", "")
	fs.Var(&excludes, "exclude", "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("backup DIR: one directory to back up")
	}
	if rest[0] == "" {
		// filepath.Abs("") is the working directory: not what was meant.
		return usagef("backup: the directory to back up is empty (\"\"): give a path, or . for the current directory")
	}
	dir, err := filepath.Abs(rest[0])
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("nothing to back up: %w", err)
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	a.doing = "the backup was stopped and nothing was committed; the next backup starts afresh"
	stop := a.startProgress(v)
	r, err := v.Backup(dir, &vault.BackupOptions{Name: *name, Tags: tags, Excludes: excludes})
	stop()
	if err != nil {
		return a.displayError(storeFailed(err, "the backup stopped and nothing was committed", "run it again"))
	}
	a.printErrors("could not back up", r.Errors, r.NumErrors)
	// Kloset pads every packfile with random bytes, twice up to the
	// chunks' minimum size, so that its size says nothing of its content;
	// a small backup writes a packfile for each kind of index data, and is
	// mostly that padding: said when it is most of what was stored.
	pad := int64(v.Configuration().Chunking.MinSize)
	what := "the new data after deduplication and compression, the snapshot's index and each packfile's random padding"
	if r.BytesStored > 2*r.BytesRead+1<<20 {
		what = fmt.Sprintf("mostly random padding: Kloset adds %s to each packfile on average, up to %s, so that its size says nothing of its content; the rest is the snapshot's index and the new data",
			ibytes(pad), ibytes(2*pad))
	}
	a.sayf("snapshot %s of %s: %s files, %s; read %s, stored %s in %d packfile(s) and %d state(s) (%s) in %s",
		r.ShortID(), r.Root, humanize.Comma(int64(r.Files)), ibytes(int64(r.Size)),
		ibytes(r.BytesRead), ibytes(r.BytesStored), r.Packfiles, r.States, what, formatDuration(r.Duration))
	if r.NumErrors > 0 {
		return exitError{code: exitPartial, err: fmt.Errorf("snapshot %s was saved without %d path(s) that could not be read", r.ShortID(), r.NumErrors)}
	}
	return nil
}

// storeFailed puts the store's error first when an operation failed
// because of it, then what, and retry when the registry did not answer.
// Kloset's words around the store's error ("committing the snapshot:
// failed to flush packer: ...") say what it was doing, which the store's
// message says already.
func storeFailed(err error, what, retry string) error {
	var se *host.Error
	if !errors.As(err, &se) || errors.Is(err, vault.ErrCommitted) {
		return err
	}
	msg := fmt.Sprintf("%s; %s", strings.Replace(se.Message, "; try again", "", 1), what)
	// A registry that did not answer: again once it does. One that
	// answered said what to do (try again later, or once its disk is
	// fixed), and the store's message says it.
	if errors.Is(se, host.ErrTransient) && se.Status == 0 {
		msg += ": " + retry + " once the registry answers"
	}
	return displayedError{err: err, msg: msg}
}

// printErrors prints the first per-path errors of an operation.
func (a *app) printErrors(what string, errs []string, n int64) {
	for i, e := range errs {
		if i == maxErrorsShown {
			break
		}
		a.con.Printf("ocibackup: %s %s", what, oneLine(e))
	}
	if n > int64(min(len(errs), maxErrorsShown)) {
		a.con.Printf("ocibackup: ... and %d more", n-int64(min(len(errs), maxErrorsShown)))
	}
}

// splitRef splits SNAP[:PATH].
func splitRef(arg string) (ref, path string) {
	ref, path, _ = strings.Cut(arg, ":")
	return ref, path
}

// snapArg is the snapshot and the path in it that SNAP[:PATH] names, a
// path with a leading slash taken from the directory backed up unless it
// is that directory's full path (see vault.UserPath); the snapshot comes
// back as its full identifier, so that latest means one snapshot.
func snapArg(v *vault.Vault, arg string) (ref, path string, err error) {
	ref, path = splitRef(arg)
	if !strings.HasPrefix(path, "/") {
		return ref, path, nil
	}
	info, err := v.Snapshot(ref)
	if err != nil {
		return "", "", err
	}
	return hex.EncodeToString(info.ID[:]), vault.UserPath(info.Root, path), nil
}

func cmdLs(a *app, args []string) error {
	fs := a.flagSet("ls")
	recursive := fs.Bool("r", false, "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 1 {
		return usagef("ls [SNAP[:PATH]]: one snapshot at a time")
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	if len(rest) == 0 {
		if *recursive {
			return usagef("ls -r lists the files of a snapshot: ls -r SNAP[:PATH]")
		}
		list, err := v.Snapshots()
		if err != nil {
			return a.displayError(err)
		}
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.ShortID(), s.Timestamp.Local().Format("2006-01-02 15:04:05"), ibytes(int64(s.Size)), s.Root)
		}
		return tw.Flush()
	}
	ref, path, err := snapArg(v, rest[0])
	if err != nil {
		return a.displayError(err)
	}
	files, err := v.Files(ref, path, *recursive)
	if err != nil {
		return a.displayError(err)
	}
	for _, f := range files {
		name := f.Path
		if !*recursive {
			name = filepath.Base(f.Path)
		}
		if f.Target != "" {
			name += " -> " + f.Target
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", f.Mode, f.User, f.Group, f.Size, f.ModTime.Local().Format("2006-01-02 15:04"), name)
	}
	return tw.Flush()
}

func cmdCat(a *app, args []string) error {
	fs := a.flagSet("cat")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) != 1 || !strings.Contains(rest[0], ":") {
		return usagef("cat SNAP:PATH: one file of a snapshot")
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	ref, path, err := snapArg(v, rest[0])
	if err != nil {
		return a.displayError(err)
	}
	if _, err := v.Cat(ref, path, a.stdout); err != nil {
		return a.displayError(err)
	}
	return nil
}

func cmdRestore(a *app, args []string) error {
	fs := a.flagSet("restore")
	force := fs.Bool("force", false, "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) < 1 || len(rest) > 2 {
		return usagef("restore SNAP[:PATH] [DIR]")
	}
	dest := ""
	if len(rest) == 2 {
		dest = rest[1]
		// Refused before the store is even opened.
		if err := vault.CheckRestoreTarget(dest, *force); err != nil {
			if errors.Is(err, vault.ErrTargetNotEmpty) {
				return fmt.Errorf("%w: restore into an empty or new directory, or add -force to write over it", err)
			}
			return err
		}
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	ref, path, err := snapArg(v, rest[0])
	if err != nil {
		return a.displayError(err)
	}
	if dest == "" {
		id, err := v.Resolve(ref)
		if err != nil {
			return a.displayError(err)
		}
		dest = fmt.Sprintf("ocibackup-restore-%x", id[:4])
		if err := vault.CheckRestoreTarget(dest, *force); err != nil {
			return fmt.Errorf("%w: give a directory to restore into", err)
		}
	}
	a.doing = "the restore was stopped; what was restored so far is in " + dest
	stop := a.startProgress(v)
	r, err := v.Restore(ref, path, dest, *force)
	stop()
	if err != nil {
		return a.displayError(err)
	}
	a.printErrors("could not restore", r.Errors, r.NumErrors)
	a.sayf("restored %s files (%s) into %s in %s", humanize.Comma(r.Files), ibytes(r.Bytes), r.Target, formatDuration(r.Duration))
	if r.NumErrors > 0 {
		return exitError{code: exitPartial, err: fmt.Errorf("%d path(s) could not be restored (listed above); the rest is in %s", r.NumErrors, r.Target)}
	}
	return nil
}

func cmdCheck(a *app, args []string) error {
	fs := a.flagSet("check")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	refs := rest
	if len(refs) == 0 {
		list, err := v.Snapshots()
		if err != nil {
			return a.displayError(err)
		}
		if len(list) == 0 {
			if err := v.NoSnapshot(); err != nil {
				return a.displayError(err)
			}
			a.sayf("no snapshot to check: the store holds none")
			return nil
		}
		for _, s := range list {
			refs = append(refs, fmt.Sprintf("%x", s.ID))
		}
	}
	a.doing = "the check was stopped"
	failed := 0
	for _, ref := range refs {
		if strings.Contains(ref, ":") {
			return usagef("check SNAP: a snapshot checks whole")
		}
		stop := a.startProgress(v)
		r, err := v.Check(ref)
		stop()
		if r == nil {
			return a.displayError(err)
		}
		if err != nil {
			failed++
			a.printErrors(fmt.Sprintf("check %x:", r.ID[:4]), r.Errors, r.NumErrors)
			a.con.Printf("ocibackup: snapshot %x is damaged: %d problem(s)", r.ID[:4], r.NumErrors)
			continue
		}
		a.sayf("snapshot %x: ok: %s files, %s verified (%s read from the store) in %s",
			r.ID[:4], humanize.Comma(r.Files), ibytes(r.Bytes), ibytes(r.Fetched), formatDuration(r.Duration))
	}
	if failed > 0 {
		return fmt.Errorf("check failed for %d of %d snapshot(s)", failed, len(refs))
	}
	return nil
}

func cmdRm(a *app, args []string) error {
	fs := a.flagSet("rm")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("rm SNAP...: which snapshots?")
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	// Every identifier is resolved before anything is removed.
	for _, ref := range rest {
		if _, err := v.Resolve(ref); err != nil {
			return a.displayError(err)
		}
	}
	for _, ref := range rest {
		id, err := v.Remove(ref)
		if err != nil {
			return a.displayError(err)
		}
		a.sayf("removed snapshot %x", id[:4])
	}
	return nil
}

func cmdInfo(a *app, args []string) error {
	fs := a.flagSet("info")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("info takes no argument")
	}
	v, err := a.open()
	if err != nil {
		return err
	}
	info, err := v.Info()
	if err != nil {
		return a.displayError(err)
	}
	c := info.Configuration
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("Location", "%s", a.displayLocation(map[string]string{"location": info.Location}))
	row("Repository ID", "%s", c.RepositoryID)
	row("Created", "%s", c.Timestamp.Local().Format(time.RFC3339))
	row("Version", "%s", c.Version)
	if e := c.Encryption; e != nil {
		row("Encryption", "%s (subkeys %s), key derived from the passphrase with %s", e.DataAlgorithm, e.SubKeyAlgorithm, e.KDFParams.KDF)
	} else {
		row("Encryption", "off")
	}
	if z := c.Compression; z != nil {
		row("Compression", "%s (level %d)", z.Algorithm, z.Level)
	} else {
		row("Compression", "off")
	}
	row("Hashing", "%s (%d bits)", c.Hashing.Algorithm, c.Hashing.Bits)
	row("Chunking", "%s: min %s, average %s, max %s", c.Chunking.Algorithm,
		ibytes(int64(c.Chunking.MinSize)), ibytes(int64(c.Chunking.NormalSize)), ibytes(int64(c.Chunking.MaxSize)))
	row("Packfiles", "up to %s", ibytes(int64(c.Packfile.MaxSize)))
	row("Snapshots", "%d (%s of files in all)", info.Snapshots, ibytes(info.LogicalSize))
	var objs []string
	for _, k := range vault.Kinds {
		n, ok := info.Objects[k]
		if !ok || (n == 0 && (k == storage.StorageResourceECCPackfile || k == storage.StorageResourceECCState)) {
			continue
		}
		objs = append(objs, fmt.Sprintf("%d %s", n, kindName(k, n)))
	}
	row("Objects", "%s", strings.Join(objs, ", "))
	row("Stored", "%s (%d bytes)", ibytes(info.StoreSize), info.StoreSize)
	return tw.Flush()
}

func kindName(k storage.StorageResource, n int) string {
	name := strings.ToLower(k.String())
	if n != 1 {
		name += "s"
	}
	return name
}
