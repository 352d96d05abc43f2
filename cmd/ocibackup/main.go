// Command ocibackup backs directories up to an OCI registry and restores
// them, through Kloset (Plakar's backup engine) and the sandboxed oci
// store: encrypted, deduplicated, compressed snapshots kept whole in one
// repository of any OCI registry.
//
//	ocibackup -at oci://localhost:5000/my-org/backups create
//	ocibackup -at oci://localhost:5000/my-org/backups backup ~/src
//	ocibackup -at oci://localhost:5000/my-org/backups ls
//	ocibackup -at oci://localhost:5000/my-org/backups restore 1a2b3c4d /tmp/src
//
// oci://local/PATH needs no registry: ocibackup runs one in-process, with
// its storage in the user's data directory. See docs/cli.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitPartial     = 3 // a backup was committed, or a restore done, without some paths
	exitInterrupted = 130
)

// errInterrupted is the cause of the cancellation on SIGINT or SIGTERM.
var errInterrupted = errors.New("interrupted")

// usageError is a mistake on the command line: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitError carries an exit code other than 1 with its message (which may
// be empty: already said).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the program; it returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	con := newConsole(stderr)
	// The guest's and the host's logs: warnings and errors only, through
	// the console so that they do not tear the progress line.
	slog.SetDefault(slog.New(slog.NewTextHandler(con, &slog.HandlerOptions{Level: slog.LevelWarn})))

	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)
	go func() {
		if _, ok := <-signals; !ok {
			return
		}
		con.Printf("ocibackup: interrupted: stopping and cleaning up (interrupt again to quit at once)")
		cancel(errInterrupted)
		if _, ok := <-signals; ok {
			con.Printf("ocibackup: interrupted again: quitting")
			os.Exit(exitInterrupted)
		}
	}()

	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, con: con}
	err := a.main(args)
	a.closeAll()
	con.Clear()

	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		for _, l := range append(a.klosetLines, a.later...) {
			con.Printf("%s", l)
		}
		return exitOK
	}
	defer func() {
		for _, l := range a.later {
			fmt.Fprintln(stderr, l)
		}
	}()
	code := exitFailure
	var ue usageError
	var ee exitError
	switch {
	case errors.As(err, &ue):
		code = exitUsage
	case errors.As(err, &ee):
		code = ee.code
	}
	if errors.Is(context.Cause(ctx), errInterrupted) {
		code = exitInterrupted
		if errors.Is(err, context.Canceled) {
			err = fmt.Errorf("interrupted: %s", a.interruptedWhat())
		}
	}
	if msg := oneLine(err.Error()); msg != "" {
		fmt.Fprintf(stderr, "ocibackup: %s\n", msg)
	}
	if ue != (usageError{}) {
		fmt.Fprintf(stderr, "Run 'ocibackup help' for usage.\n")
	}
	return code
}

// oneLine makes an error message fit on one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", "")
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
