package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/term"

	"github.com/plakar-oci/ocistore/internal/embedreg"
)

// globals are the options every command takes, before or after its name.
type globals struct {
	at      string
	opts    keyValues
	silent  bool
	keyfile string
}

// keyValues is a repeatable key=value flag.
type keyValues []string

func (kv *keyValues) String() string { return strings.Join(*kv, " ") }

func (kv *keyValues) Set(s string) error {
	if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	*kv = append(*kv, s)
	return nil
}

// strList is a repeatable string flag.
type strList []string

func (l *strList) String() string     { return strings.Join(*l, ",") }
func (l *strList) Set(s string) error { *l = append(*l, s); return nil }

type app struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	con    *console
	g      globals

	// closers run when the command is over, last first: the vault, then
	// the embedded registry.
	closers []func()
	// what is running, for the message on interruption.
	doing string
	// command is the name of the command being run: what snapshots record
	// of the command line, which may hold a password.
	command string
	// The local registry's address in messages is shown as oci://local.
	localFrom, localTo string

	mu          sync.Mutex
	klosetLines []string // klosetLog's
	// later are warnings shown after the command's error, if any: what
	// closing found (a lock left behind) follows from the failure.
	later []string
	// The local registry: the one this process runs, or the address of
	// the 'ocibackup registry' that serves it.
	localReg    *embedreg.Registry
	localServer string
}

func (a *app) onClose(f func()) { a.closers = append(a.closers, f) }

func (a *app) closeAll() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

func (a *app) interruptedWhat() string {
	if a.doing == "" {
		return "stopped"
	}
	return a.doing
}

// command is a subcommand.
type command struct {
	name    string
	args    string // synopsis of the arguments
	summary string
	run     func(a *app, args []string) error
	help    string // the options and arguments, in detail
}

var commands []*command

const snapHelp = `SNAP is a snapshot's identifier as ls shows it (or any prefix of it that
only it has), or latest. PATH is taken from the directory the snapshot was
made of (/notes.txt and notes.txt are a file in it, / is the directory
itself), or is a full path below it, as ls -r shows it.`

func init() {
	commands = []*command{
		{"create", "[-no-encryption] [-no-compression]", "create a store at the location", cmdCreate, `
The store is encrypted with a key derived from the passphrase
($OCIBACKUP_PASSPHRASE, -keyfile FILE, or asked twice on a terminal).
  -no-encryption   store in plaintext: no passphrase
  -no-compression  do not compress`},
		{"backup", "[-name NAME] [-tag TAG]... [-exclude PATTERN]... DIR", "back DIR up as a new snapshot", cmdBackup, `
Files that did not change since the last snapshot of DIR are not read
again; data already in the store is not stored again.
  -name NAME         the snapshot's name (default: DIR's base name)
  -tag TAG           a tag (repeatable)
  -exclude PATTERN   leave out what matches (gitignore syntax; repeatable)
Exit status 3: the snapshot was saved without some paths that could not be
read (they are listed).`},
		{"ls", "[-r] [SNAP[:PATH]]", "list the snapshots, or the files of SNAP under PATH", cmdLs, `
Without SNAP: the snapshots, oldest first: id, date, size, directory.
With SNAP: the entries of PATH (default: the directory backed up).
  -r   every entry below PATH, with its full path
` + snapHelp},
		{"cat", "SNAP:PATH", "write the content of a file of a snapshot to stdout", cmdCat, "\n" + snapHelp},
		{"restore", "[-force] SNAP[:PATH] [DIR]", "restore a snapshot (or PATH of it) into DIR", cmdRestore, `
A directory's content goes into DIR; a file goes into DIR under its name.
DIR (default ./ocibackup-restore-ID) must be new or empty.
  -force   restore into a directory that is not empty, replacing what is
           in the way
Nothing is written outside DIR. Exit status 3: some paths could not be
restored (they are listed; device files cannot be).
` + snapHelp},
		{"check", "[SNAP...]", "read back and verify every chunk of the snapshots (all by default)", cmdCheck, `
Every chunk of every file is read from the store and checked against its
MAC, and every file against its own.`},
		{"rm", "SNAP...", "remove snapshots", cmdRm, `
The snapshots are no longer listed; the data only they used stay in the
registry until maintenance removes them.`},
		{"maintenance", "[-dry-run] [-grace DURATION]", "give back the space of removed snapshots, unfinished backups and stale locks", cmdMaintenance, maintenanceHelp},
		{"info", "", "describe the store: configuration, objects, size", cmdInfo, ""},
		{"store", "add NAME LOCATION [key=value...] | ls | rm NAME", "manage named stores, used as -at @NAME", cmdStore, `
Named stores are kept in the user's configuration directory
(ocibackup/stores.json, mode 0600: a password may be there, in clear).
The keys are the store options of -o.`},
		{"registry", "[-addr HOST:PORT] [-dir DIR]", "run an OCI registry on this machine", cmdRegistry, `
Serves an OCI registry (distribution, built in) over plain HTTP without
authentication, until interrupted; its data stay in DIR across restarts.
oci://local locations use it while it runs on the default DIR.
  -addr HOST:PORT   where to listen (default 127.0.0.1:5000; port 0: any)
  -dir DIR          the storage (default: the local registry's, in the
                    user's data directory)`},
		{"help", "[COMMAND]", "show this help", nil, ""},
	}
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const usageHeader = `ocibackup backs directories up to an OCI registry: encrypted, deduplicated,
compressed snapshots kept whole in one repository of any OCI registry.

Usage: ocibackup [global options] COMMAND [options] [arguments]

Global options (before or after the command):
  -at LOCATION   the store: oci://HOST[:PORT]/PATH, oci://local/PATH (a registry
                 run by ocibackup itself, data in %s), or @NAME
                 (a store saved with 'store add'); default $OCIBACKUP_LOCATION
  -o KEY=VALUE   a store option: username, password, token, use_tls,
                 tls_insecure_no_verify, ca_file, repository_prefix, concurrency,
                 idle_timeout, stall_timeout, readahead_cache_size,
                 readahead_cache_dir (repeatable)
  -keyfile FILE  read the passphrase from FILE (default $OCIBACKUP_PASSPHRASE,
                 or a prompt on a terminal)
  -silent        no progress and no summaries; errors only

Commands:
`

func (a *app) usage(w io.Writer) {
	fmt.Fprintf(w, usageHeader, displayPath(localRegistryDir()))
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'ocibackup help COMMAND' for a command's synopsis. Guide: docs/cli.md\n")
}

func (a *app) main(args []string) error {
	fs := a.flagSet("ocibackup")
	rest, err := parseFlags(fs, args, true)
	if errors.Is(err, errHelp) {
		a.usage(a.stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		a.usage(a.stderr)
		return exitError{code: exitUsage}
	}
	name, args := rest[0], rest[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 0 {
			c := findCommand(args[0])
			if c == nil {
				return usagef("unknown command %q", args[0])
			}
			a.commandHelp(c)
			return nil
		}
		a.usage(a.stdout)
		return nil
	}
	c := findCommand(name)
	if c == nil || c.run == nil {
		return usagef("unknown command %q", name)
	}
	a.command = c.name
	if err := c.run(a, args); errors.Is(err, errHelp) {
		a.commandHelp(c)
		return nil
	} else {
		return err
	}
}

// errHelp is -h, -help or --help among a command's options: its help is
// shown instead of running it.
var errHelp = errors.New("help requested")

// commandHelp shows c's synopsis and options on stdout.
func (a *app) commandHelp(c *command) {
	fmt.Fprintf(a.stdout, "Usage: ocibackup [global options] %s %s\n\n%s.\n%s\n", c.name, c.args, strings.ToUpper(c.summary[:1])+c.summary[1:], c.help)
}

// flagSet makes a command's flag set, with the global options.
func (a *app) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&a.g.at, "at", a.g.at, "")
	fs.Var(&a.g.opts, "o", "")
	fs.BoolVar(&a.g.silent, "silent", a.g.silent, "")
	fs.StringVar(&a.g.keyfile, "keyfile", a.g.keyfile, "")
	return fs
}

// parseFlags parses flags anywhere among args (a command's options may
// follow its arguments) and returns the other arguments; everything after
// "--" is an argument. With stopAtFirst, it stops at the first argument
// (the command's name).
func parseFlags(fs *flag.FlagSet, args []string, stopAtFirst bool) ([]string, error) {
	var tail []string
	if !stopAtFirst {
		if i := slices.Index(args, "--"); i >= 0 {
			args, tail = args[:i], args[i+1:]
		}
	}
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			if fs.Name() == "ocibackup" {
				// main prefixes every message with the program's name.
				return nil, usageError{err.Error()}
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if stopAtFirst {
			rest = append(rest, args...)
			break
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
	return append(rest, tail...), nil
}

// progressOn tells whether progress may be drawn: on a terminal, without
// -silent.
func (a *app) progressOn() bool {
	if a.g.silent {
		return false
	}
	f, ok := a.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// sayf prints an informational line on stdout, unless -silent.
func (a *app) sayf(format string, args ...any) {
	if a.g.silent {
		return
	}
	a.con.Stdout(a.stdout, fmt.Sprintf(format, args...))
}

// sortedKeys returns m's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
