// Command ociplugin publishes the OCI store's guest module to an OCI
// registry and fetches it back, as a CNCF wasm artifact (see package
// host/artifact).
//
//	ociplugin push [flags] REGISTRY/REPOSITORY:TAG     pushes the module, prints REF@DIGEST
//	ociplugin pull [flags] -o FILE REF                  fetches and verifies it, prints the digest
//	ociplugin inspect [flags] REF                       prints the artifact's manifest digest and annotations
//
// push ships the guest built into this binary unless -module names a file.
// pull follows only references pinned by digest unless -allow-tag; it
// refuses a module of another ABI version than this host's unless -any-abi.
// Registries on loopback addresses are reached over plain HTTP, others over
// HTTPS (-use-tls overrides), with the system's roots plus -ca-file.
// Credentials: -username, with the password in $OCIPLUGIN_PASSWORD or on
// standard input (-password-stdin).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/artifact"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage:
  ociplugin push [flags] REGISTRY/REPOSITORY:TAG
  ociplugin pull [flags] -o FILE REGISTRY/REPOSITORY@sha256:DIGEST
  ociplugin inspect [flags] REF
Run "ociplugin COMMAND -h" for a command's flags.
`

// run is the command, with its streams, for tests. It returns the exit
// status: 0, 1 for a failure, 2 for a usage error.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("ociplugin "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var reg registryFlags
	reg.register(fs)
	var err error
	switch cmd {
	case "push":
		module := fs.String("module", "", "the module file to push (default: the guest built into ociplugin)")
		title := fs.String("title", artifact.DefaultTitle, "the module's file name (org.opencontainers.image.title)")
		var annotations annotationFlag
		fs.Var(&annotations, "annotation", "KEY=VALUE to add to the manifest (repeatable)")
		if code := parse(fs, args, 1); code >= 0 {
			return code
		}
		err = push(ctx, fs.Arg(0), *module, *title, annotations, reg, stdin, stdout)
	case "pull":
		out := fs.String("o", "", "the file to write the module to (required)")
		allowTag := fs.Bool("allow-tag", false, "follow a reference without a digest")
		anyABI := fs.Bool("any-abi", false, "accept a module of another ABI version than "+abi.Version)
		if code := parse(fs, args, 1); code >= 0 {
			return code
		}
		if *out == "" {
			fmt.Fprintln(stderr, "ociplugin pull: -o FILE is required")
			return 2
		}
		err = pull(ctx, fs.Arg(0), *out, *allowTag, *anyABI, reg, stdin, stdout)
	case "inspect":
		asJSON := fs.Bool("json", false, "print the manifest and config as JSON")
		if code := parse(fs, args, 1); code >= 0 {
			return code
		}
		err = inspect(ctx, fs.Arg(0), *asJSON, reg, stdin, stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ociplugin: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "ociplugin %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// parse parses flags and checks the number of arguments: it returns -1 to
// go on, or an exit status.
func parse(fs *flag.FlagSet, args []string, nargs int) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != nargs {
		fmt.Fprintf(fs.Output(), "%s: want %d argument(s), got %q\n", fs.Name(), nargs, fs.Args())
		fs.Usage()
		return 2
	}
	return -1
}

func push(ctx context.Context, ref, module, title string, annotations annotationFlag, reg registryFlags, stdin io.Reader, stdout io.Writer) error {
	wasm := host.EmbeddedGuest()
	if module != "" {
		var err error
		if wasm, err = os.ReadFile(module); err != nil {
			return err
		}
	}
	opts, err := reg.options(stdin)
	if err != nil {
		return err
	}
	opts.Title, opts.Annotations = title, annotations
	digest, err := artifact.Push(ctx, ref, wasm, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s@%s\n", repository(ref), digest)
	return nil
}

func pull(ctx context.Context, ref, out string, allowTag, anyABI bool, reg registryFlags, stdin io.Reader, stdout io.Writer) error {
	opts, err := reg.options(stdin)
	if err != nil {
		return err
	}
	opts.AllowTag = allowTag
	if !anyABI {
		opts.RequireABI = abi.Version
	}
	a, err := artifact.Pull(ctx, ref, opts)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, a.Module, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return err
	}
	fmt.Fprintln(stdout, a.Ref)
	return nil
}

func inspect(ctx context.Context, ref string, asJSON bool, reg registryFlags, stdin io.Reader, stdout io.Writer) error {
	opts, err := reg.options(stdin)
	if err != nil {
		return err
	}
	a, err := artifact.Inspect(ctx, ref, opts)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(struct {
			Ref      string          `json:"ref"`
			Digest   string          `json:"digest"`
			Manifest json.RawMessage `json:"manifest"`
			Config   json.RawMessage `json:"config"`
		}{a.Ref, a.Digest, a.Manifest, a.Config})
	}
	compatible := "yes"
	if a.ABIVersion != abi.Version {
		compatible = "no: this host speaks " + abi.World
	}
	fmt.Fprintf(stdout, "ref:         %s\ndigest:      %s\nmodule:      %s (%d bytes, %s)\nworld:       %s\nabi version: %s\ncompatible:  %s\n",
		a.Ref, a.Digest, a.ModuleDigest, a.ModuleSize, a.Title, a.World, a.ABIVersion, compatible)
	for _, k := range slices.Sorted(maps.Keys(a.Annotations)) {
		fmt.Fprintf(stdout, "annotation:  %s=%s\n", k, a.Annotations[k])
	}
	return nil
}

// repository is ref without its tag or digest.
func repository(ref string) string {
	ref = strings.TrimPrefix(ref, "oci://")
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}

// registryFlags say how to reach the registry, as the store's keys do.
type registryFlags struct {
	useTLS        string
	caFile        string
	insecure      bool
	username      string
	passwordStdin bool
}

func (r *registryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.useTLS, "use-tls", "", "true or false (default: false for loopback registries, true otherwise)")
	fs.StringVar(&r.caFile, "ca-file", "", "a PEM file of CA certificates to trust besides the system's")
	fs.BoolVar(&r.insecure, "tls-insecure-no-verify", false, "do not verify the registry's certificate (testing only)")
	fs.StringVar(&r.username, "username", "", "the registry user (password in $OCIPLUGIN_PASSWORD or -password-stdin)")
	fs.BoolVar(&r.passwordStdin, "password-stdin", false, "read the password from standard input")
}

func (r *registryFlags) options(stdin io.Reader) (artifact.Options, error) {
	var opts artifact.Options
	if r.useTLS != "" {
		b, err := strconv.ParseBool(r.useTLS)
		if err != nil {
			return opts, fmt.Errorf("-use-tls %q: want true or false", r.useTLS)
		}
		opts.UseTLS = &b
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: r.insecure}
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return opts, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return opts, fmt.Errorf("-ca-file %s holds no PEM certificate", r.caFile)
		}
		tlsConfig.RootCAs = pool
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tlsConfig
	opts.Transport = t
	if r.username != "" {
		password := os.Getenv("OCIPLUGIN_PASSWORD")
		if r.passwordStdin {
			line, err := bufio.NewReader(stdin).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return opts, err
			}
			password = strings.TrimRight(line, "\r\n")
		}
		opts.Auth = &authn.Basic{Username: r.username, Password: password}
	} else if r.passwordStdin {
		return opts, errors.New("-password-stdin needs -username")
	}
	return opts, nil
}

// annotationFlag collects KEY=VALUE pairs.
type annotationFlag map[string]string

func (a *annotationFlag) String() string { return fmt.Sprint(map[string]string(*a)) }

func (a *annotationFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	if *a == nil {
		*a = annotationFlag{}
	}
	(*a)[k] = v
	return nil
}
