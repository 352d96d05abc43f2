package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/plakar-oci/ocistore/internal/embedreg"
)

// localHost is the host of the locations served by the local registry:
// oci://local/PATH.
const localHost = "local"

// isLocal tells whether loc is oci://local/...
func isLocal(loc string) bool {
	rest, ok := strings.CutPrefix(strings.ToLower(loc), "oci://")
	if !ok {
		return false
	}
	host, _, _ := strings.Cut(rest, "/")
	return host == localHost
}

// localAlias is oci://local/PATH with the registry at addr.
func localAlias(loc, addr string) string {
	_, path, _ := strings.Cut(loc[len("oci://"):], "/")
	return "oci://" + addr + "/" + path
}

// localWait bounds the wait for another command that uses the local
// registry.
const localWait = 10 * time.Minute

// useLocalRegistry points cfg, an oci://local location, at the local
// registry: the one an 'ocibackup registry' serves on the same storage if
// there is one, else one started in this process for the command's
// duration, on a free loopback port. Another command holding the storage
// is waited for.
func (a *app) useLocalRegistry(cfg map[string]string) error {
	loc := cfg["location"]
	dir := localRegistryDir()
	deadline := time.Now().Add(localWait)
	said := false
	for {
		reg, err := embedreg.Start(embedreg.Options{Dir: dir})
		if err == nil {
			a.onClose(func() {
				if err := reg.Close(); err != nil {
					a.con.Printf("ocibackup: stopping the local registry: %v", err)
				}
			})
			a.localReg = reg
			a.setLocal(loc, reg.Addr)
			cfg["location"] = localAlias(loc, reg.Addr)
			return nil
		}
		var inUse *embedreg.InUseError
		if !errors.As(err, &inUse) {
			return fmt.Errorf("the local registry (%s): %w", displayPath(dir), err)
		}
		if inUse.Server && inUse.Addr != "" && reachable(inUse.Addr) {
			a.localServer = inUse.Addr
			a.setLocal(loc, inUse.Addr)
			cfg["location"] = localAlias(loc, inUse.Addr)
			return nil
		}
		if !said {
			a.con.Printf("ocibackup: another ocibackup command is using the local registry (%s): waiting for it", displayPath(dir))
			said = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the local registry (%s) stayed busy for %v", displayPath(dir), localWait)
		}
		select {
		case <-a.ctx.Done():
			return a.ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// setLocal remembers that loc is served at addr, to show oci://local in
// messages rather than the port of the moment.
func (a *app) setLocal(loc, addr string) {
	a.localFrom = "oci://" + addr + "/"
	a.localTo = "oci://" + localHost + "/"
}

// displayError rewrites the local registry's address in err's message.
func (a *app) displayError(err error) error {
	if err == nil || a.localFrom == "" {
		return err
	}
	return displayedError{err: err, msg: strings.ReplaceAll(err.Error(), a.localFrom, a.localTo)}
}

type displayedError struct {
	err error
	msg string
}

func (e displayedError) Error() string { return e.msg }
func (e displayedError) Unwrap() error { return e.err }

func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// cmdRegistry runs a registry until interrupted.
func cmdRegistry(a *app, args []string) error {
	fs := a.flagSet("registry")
	addr := fs.String("addr", "127.0.0.1:5000", "")
	dir := fs.String("dir", "", "")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("registry takes no argument (-addr HOST:PORT, -dir DIR)")
	}
	if *dir == "" {
		*dir = localRegistryDir()
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return usagef("registry: -addr %q: %v (as in 127.0.0.1:5000)", *addr, err)
	}
	reg, err := embedreg.Start(embedreg.Options{Addr: *addr, Dir: *dir, Server: true})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer reg.Close()
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		a.con.Printf("ocibackup: warning: %s is not a loopback address: anyone who reaches it can read and write this registry (plain HTTP, no authentication)", reg.Addr)
	}
	a.sayf("OCI registry listening on http://%s, storage in %s (log: %s)", reg.Addr, reg.Dir, displayPath(reg.Dir+string(os.PathSeparator)+"registry.log"))
	a.sayf("Try: %s", tryCommand(reg.Addr))
	select {
	case <-a.ctx.Done():
		return nil
	case <-reg.Done():
		return fmt.Errorf("registry: %v", reg.Err())
	}
}

// tryCommand is the command that 'ocibackup registry' suggests, with a
// location that reaches the registry at addr. A wildcard address (0.0.0.0,
// [::]) listens everywhere but is no address to dial: this machine reaches
// it on 127.0.0.1, other machines by its name. Plain HTTP is the default
// for a loopback registry only.
func tryCommand(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("ocibackup -at oci://%s/my/backups create (Ctrl-C stops the registry)", addr)
	}
	ip := net.ParseIP(host)
	switch {
	case ip != nil && ip.IsUnspecified():
		other := "this machine's name"
		if name, err := os.Hostname(); err == nil && name != "" {
			other = name
		}
		return fmt.Sprintf("ocibackup -at oci://%s/my/backups create (Ctrl-C stops the registry; from other machines: -at oci://%s/my/backups -o use_tls=false)",
			net.JoinHostPort("127.0.0.1", port), net.JoinHostPort(other, port))
	case host == "localhost" || ip != nil && ip.IsLoopback():
		return fmt.Sprintf("ocibackup -at oci://%s/my/backups create (Ctrl-C stops the registry)", addr)
	}
	return fmt.Sprintf("ocibackup -at oci://%s/my/backups -o use_tls=false create (Ctrl-C stops the registry)", addr)
}
