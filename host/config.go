package host

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plakar-oci/ocistore/host/blobcache"
	"github.com/plakar-oci/ocistore/host/session"
	"github.com/plakar-oci/ocistore/internal/location"
)

// Config is a store's configuration, from Kloset's map of strings.
//
// Keys for reaching the registry (all handled by the host; the guest sees
// location and repository_prefix only):
//
//	username, password  credentials for the registry, used for HTTP basic
//	                    authentication or to obtain tokens from the token
//	                    service the registry names; set both or neither
//	token               a bearer token for the registry, sent as is
//	                    (instead of username and password)
//	use_tls             true or false; default true, except for a registry
//	                    on this machine (localhost or a loopback address:
//	                    a registry started for trying things out), where
//	                    plain HTTP is the default unless ca_file or
//	                    tls_insecure_no_verify asks for TLS
//	ca_file             PEM file of the CA certificates that sign the
//	                    registry's certificate, besides the system's
//	tls_insecure_no_verify
//	                    true skips the verification of the registry's
//	                    certificate (logged as a warning)
//	idle_timeout        a duration (default 30s): a request that waited
//	                    this long on the registry with no progress fails,
//	                    and is made again
//	stall_timeout       a duration (default 90s, at least idle_timeout):
//	                    a registry that sent nothing for this long while
//	                    requests waited is taken as stopped, and requests
//	                    fail at once for as long again
//
// Keys for reading (see RATIONALE.md, "Read-ahead windows"):
//
//	readahead_cache_size
//	                    the disk the read-ahead windows of blobs may use,
//	                    in bytes or with a unit (KiB, MiB, GiB, TiB;
//	                    default 2GiB); 0 turns read-ahead off, every
//	                    ranged read then costs a request
//	readahead_cache_dir where the windows are kept (default: readahead
//	                    in the host's cache root, <user cache
//	                    dir>/ocistore or $OCISTORE_CACHE_DIR, none when
//	                    that is "off"), shared by every store that names it
//
// Without credentials in the configuration, the host looks for them in the
// environment (OCISTORE_USERNAME and OCISTORE_PASSWORD, or OCISTORE_TOKEN),
// then in Docker's configuration and credential helpers (see auth.go).
//
// A Config prints and logs with its secrets redacted.
type Config struct {
	Location location.Location
	// Options passed to the guest: the non-secret keys.
	guestOptions [][2]string

	Username string
	Password string
	// Token is a bearer token for the registry, sent as is.
	Token string
	// UseTLS defaults to true, except for a loopback registry (a registry
	// started on this machine for trying things out), where plain HTTP is
	// the default unless CAFile or InsecureSkipVerify is set.
	UseTLS             bool
	InsecureSkipVerify bool
	CAFile             string
	// Concurrency bounds the plugin instances, hence the calls in flight.
	Concurrency int
	// IdleTimeout fails a request that waited this long on the registry
	// without progress; StallTimeout takes the registry as stopped when
	// nothing came from it for that long (session.Watchdog).
	IdleTimeout, StallTimeout time.Duration
	// ReadAheadSize bounds the disk of the read-ahead windows; 0 turns
	// read-ahead off. ReadAheadDir is where they are kept.
	ReadAheadSize int64
	ReadAheadDir  string
}

// DefaultConcurrency matches the parallelism Kloset uses for uploads on
// small machines while keeping the number of instances (each a few MiB of
// linear memory) modest.
const DefaultConcurrency = 8

// configKeys are the keys a store accepts; PluginKey is read by New before
// the rest is parsed here.
var configKeys = []string{
	"location", "username", "password", "token", "use_tls", "tls_insecure_no_verify",
	"ca_file", "repository_prefix", "concurrency", "idle_timeout", "stall_timeout", PluginKey,
	"readahead_cache_size", "readahead_cache_dir",
}

// ConfigKeys lists the keys a store configuration may hold, sorted: what
// plugin/schema.json must describe.
func ConfigKeys() []string {
	keys := slices.Clone(configKeys)
	slices.Sort(keys)
	return keys
}

// ParseConfig validates a store configuration. Every error names the key
// and what is expected.
func ParseConfig(m map[string]string) (*Config, error) {
	var unknown []string
	for k := range maps.Keys(m) {
		if !slices.Contains(configKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		hint := ""
		if slices.Contains(unknown, "insecure") {
			// Stores of Plakar's upstream oci plugin have it.
			hint = " (insecure is the key of Plakar's upstream oci plugin: here use_tls=false means plain HTTP, use_tls=true HTTPS)"
		}
		return nil, fmt.Errorf("%w: unknown key(s) %s; the oci store knows %s%s",
			ErrInvalidConfig, strings.Join(unknown, ", "), strings.Join(configKeys, ", "), hint)
	}
	if m["location"] == "" {
		return nil, fmt.Errorf("%w: location is required, as in oci://registry.example.com/team/backups", ErrInvalidConfig)
	}
	loc, err := location.Parse(m["location"], m["repository_prefix"])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	c := &Config{
		Location:    loc,
		Username:    m["username"],
		Password:    m["password"],
		Token:       m["token"],
		CAFile:      m["ca_file"],
		Concurrency: DefaultConcurrency,
	}
	for _, k := range []string{"location", "repository_prefix"} {
		if v, ok := m[k]; ok {
			c.guestOptions = append(c.guestOptions, [2]string{k, v})
		}
	}
	if c.InsecureSkipVerify, err = boolKey(m, "tls_insecure_no_verify", false); err != nil {
		return nil, err
	}
	// Plain HTTP is the default on this machine only; there, asking for a
	// CA or for no verification means TLS.
	wantTLS := c.CAFile != "" || c.InsecureSkipVerify
	if c.UseTLS, err = boolKey(m, "use_tls", !loc.IsLoopback() || wantTLS); err != nil {
		return nil, err
	}
	if !c.UseTLS && wantTLS {
		return nil, fmt.Errorf("%w: ca_file and tls_insecure_no_verify are TLS settings, but use_tls is false: remove them or set use_tls=true", ErrInvalidConfig)
	}
	if (c.Username == "") != (c.Password == "") {
		return nil, fmt.Errorf("%w: username and password go together: set both or neither", ErrInvalidConfig)
	}
	if c.Token != "" && c.Username != "" {
		return nil, fmt.Errorf("%w: token replaces username and password: set one or the other", ErrInvalidConfig)
	}
	if v, ok := m["concurrency"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 256 {
			return nil, fmt.Errorf("%w: concurrency %q must be a whole number from 1 to 256", ErrInvalidConfig, v)
		}
		c.Concurrency = n
	}
	if c.IdleTimeout, err = durationKey(m, "idle_timeout", session.DefaultIdleTimeout); err != nil {
		return nil, err
	}
	if c.StallTimeout, err = durationKey(m, "stall_timeout", session.DefaultStallTimeout); err != nil {
		return nil, err
	}
	if c.StallTimeout < c.IdleTimeout {
		return nil, fmt.Errorf("%w: stall_timeout %v is shorter than idle_timeout %v: it must be at least as long", ErrInvalidConfig, c.StallTimeout, c.IdleTimeout)
	}
	c.ReadAheadSize = blobcache.DefaultLimit
	if v, ok := m["readahead_cache_size"]; ok {
		n, ok := parseSize(v)
		if !ok {
			return nil, fmt.Errorf("%w: readahead_cache_size %q must be a size in bytes, with an optional unit (KiB, MiB, GiB, TiB), as in 4GiB; 0 turns read-ahead off", ErrInvalidConfig, v)
		}
		c.ReadAheadSize = n
	}
	c.ReadAheadDir = m["readahead_cache_dir"]
	return c, nil
}

// durationKey reads a duration such as 30s or 2m: positive, at most a day.
func durationKey(m map[string]string, key string, def time.Duration) (time.Duration, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return 0, fmt.Errorf("%w: %s %q must be a duration such as 30s or 2m, above 0 and at most 24h", ErrInvalidConfig, key, v)
	}
	return d, nil
}

// parseSize reads "2GiB", "64 KiB", "512MiB" or a number of bytes: digits,
// then a unit after one space at most, as schema.json's pattern says; at
// most 4 EiB.
func parseSize(v string) (int64, bool) {
	units := []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}, {"B", 0}}
	shift := uint(0)
	for _, u := range units {
		if num, ok := strings.CutSuffix(v, u.suffix); ok {
			v, shift = strings.TrimSuffix(num, " "), u.shift
			break
		}
	}
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return 0, false // ParseInt would take a sign
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > (1<<62)>>shift {
		return 0, false
	}
	return n << shift, true
}

func boolKey(m map[string]string, key string, def bool) (bool, error) {
	v, ok := m[key]
	if !ok {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: %s %q must be true or false", ErrInvalidConfig, key, v)
	}
	return b, nil
}

// redacted stands for a secret in what a Config prints.
const redacted = "[redacted]"

// String describes c without its secrets.
func (c *Config) String() string {
	if c == nil {
		return "<nil>"
	}
	password, token := "", ""
	if c.Password != "" {
		password = redacted
	}
	if c.Token != "" {
		token = redacted
	}
	return fmt.Sprintf("{Location:%s Username:%q Password:%s Token:%s UseTLS:%t InsecureSkipVerify:%t CAFile:%q Concurrency:%d IdleTimeout:%v StallTimeout:%v}",
		c.Location, c.Username, password, token, c.UseTLS, c.InsecureSkipVerify, c.CAFile, c.Concurrency, c.IdleTimeout, c.StallTimeout)
}

// Format prints c as String does, whatever the verb: %#v and %+v would
// otherwise print the password.
func (c Config) Format(f fmt.State, _ rune) { fmt.Fprint(f, c.String()) }

// LogValue logs c as String does.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }
