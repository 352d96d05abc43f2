package host

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/internal/location"
)

// Config is a store's configuration, from Kloset's map of strings.
type Config struct {
	Location location.Location
	// Options passed to the guest: the non-secret keys.
	guestOptions [][2]string

	Username string
	Password string
	// UseTLS defaults to true, except for a loopback registry (a registry
	// started on this machine for trying things out), where plain HTTP is
	// the default.
	UseTLS             bool
	InsecureSkipVerify bool
	CAFile             string
	// Concurrency bounds the plugin instances, hence the calls in flight.
	Concurrency int
}

// DefaultConcurrency matches the parallelism Kloset uses for uploads on
// small machines while keeping the number of instances (each a few MiB of
// linear memory) modest.
const DefaultConcurrency = 8

var configKeys = []string{
	"location", "username", "password", "use_tls", "tls_insecure_no_verify",
	"ca_file", "repository_prefix", "concurrency",
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
		return nil, fmt.Errorf("%w: unknown key(s) %s; the oci store knows %s",
			ErrInvalidConfig, strings.Join(unknown, ", "), strings.Join(configKeys, ", "))
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
		CAFile:      m["ca_file"],
		Concurrency: DefaultConcurrency,
	}
	for _, k := range []string{"location", "repository_prefix"} {
		if v, ok := m[k]; ok {
			c.guestOptions = append(c.guestOptions, [2]string{k, v})
		}
	}
	if c.UseTLS, err = boolKey(m, "use_tls", !loc.IsLoopback()); err != nil {
		return nil, err
	}
	if c.InsecureSkipVerify, err = boolKey(m, "tls_insecure_no_verify", false); err != nil {
		return nil, err
	}
	if (c.Username == "") != (c.Password == "") {
		return nil, fmt.Errorf("%w: username and password go together: set both or neither", ErrInvalidConfig)
	}
	if v, ok := m["concurrency"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 256 {
			return nil, fmt.Errorf("%w: concurrency %q must be a whole number from 1 to 256", ErrInvalidConfig, v)
		}
		c.Concurrency = n
	}
	return c, nil
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
