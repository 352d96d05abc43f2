package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/plakar-oci/ocistore/vault"
)

// passphrase is the passphrase given without a prompt: -keyfile, else
// $OCIBACKUP_PASSPHRASE; nil if neither.
func (a *app) passphrase() ([]byte, error) {
	if a.g.keyfile != "" {
		b, err := os.ReadFile(a.g.keyfile)
		if err != nil {
			return nil, fmt.Errorf("-keyfile: %w", err)
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			return nil, fmt.Errorf("-keyfile %s is empty", a.g.keyfile)
		}
		return b, nil
	}
	if p := os.Getenv(envPassphrase); p != "" {
		return []byte(p), nil
	}
	return nil, nil
}

// canPrompt tells whether the passphrase can be asked for.
func (a *app) canPrompt() bool {
	f, ok := a.stdin.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// prompt asks for the passphrase on the terminal, twice if confirm.
func (a *app) prompt(what string, confirm bool) ([]byte, error) {
	fd := int(a.stdin.(*os.File).Fd())
	for attempt := 0; attempt < 3; attempt++ {
		a.con.Clear()
		fmt.Fprintf(a.stderr, "%s: ", what)
		p, err := term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, fmt.Errorf("reading the passphrase: %w", err)
		}
		if len(p) == 0 {
			a.con.Printf("ocibackup: the passphrase cannot be empty")
			continue
		}
		if !confirm {
			return p, nil
		}
		fmt.Fprintf(a.stderr, "%s (again): ", what)
		p2, err := term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, fmt.Errorf("reading the passphrase: %w", err)
		}
		if bytes.Equal(p, p2) {
			return p, nil
		}
		a.con.Printf("ocibackup: the passphrases differ")
	}
	return nil, errors.New("no passphrase")
}

const passphraseHelp = "set $" + envPassphrase + ", use -keyfile FILE, or run on a terminal to be asked"

// open opens the store of the command, asking for the passphrase on a
// terminal if the store is encrypted and none was given. The vault is
// closed when the command is over.
func (a *app) open() (*vault.Vault, error) {
	cfg, err := a.storeConfig()
	if err != nil {
		return nil, err
	}
	pass, err := a.passphrase()
	if err != nil {
		return nil, err
	}
	opts, err := a.vaultOptions()
	if err != nil {
		return nil, err
	}
	v, err := vault.Open(a.ctx, cfg, pass, opts)
	if errors.Is(err, vault.ErrNeedPassphrase) && pass == nil {
		if !a.canPrompt() {
			return nil, a.displayError(fmt.Errorf("%w: %s", err, passphraseHelp))
		}
		if pass, err = a.prompt("Passphrase", false); err != nil {
			return nil, err
		}
		v, err = vault.Open(a.ctx, cfg, pass, opts)
	}
	if err != nil {
		return nil, a.displayError(err)
	}
	a.onClose(func() {
		if err := v.Close(); err != nil && !errors.Is(err, context.Canceled) {
			a.later = append(a.later, "ocibackup: warning: "+oneLine(a.displayError(err).Error()))
		}
	})
	return v, nil
}

func (a *app) vaultOptions() (*vault.Options, error) {
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	return &vault.Options{
		CacheDir:    dir,
		Client:      "ocibackup",
		CommandLine: "ocibackup " + a.command,
		Log:         klosetLog{a},
	}, nil
}

// klosetLog keeps Kloset's warnings and errors until the command is over,
// and run shows them only if it succeeded: when it fails, its error says
// why, and Kloset's lines are that failure (or the interruption) told
// again by each worker it stopped.
type klosetLog struct{ a *app }

// maxKlosetLines bounds the lines kept.
const maxKlosetLines = 100

func (l klosetLog) Write(p []byte) (int, error) {
	l.a.mu.Lock()
	defer l.a.mu.Unlock()
	if len(l.a.klosetLines) < maxKlosetLines {
		l.a.klosetLines = append(l.a.klosetLines, "kloset: "+strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
