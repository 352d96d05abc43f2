package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/plakar-oci/ocistore/host"
)

// Environment variables.
const (
	envLocation   = "OCIBACKUP_LOCATION"
	envPassphrase = "OCIBACKUP_PASSPHRASE"
	envConfigDir  = "OCIBACKUP_CONFIG_DIR"
	envCacheDir   = "OCIBACKUP_CACHE_DIR"
	envDataDir    = "OCIBACKUP_DATA_DIR"
)

// storeEntry is a named store: a location and its options.
type storeEntry struct {
	Location string            `json:"location"`
	Options  map[string]string `json:"options,omitempty"`
}

type storesFile struct {
	Stores map[string]storeEntry `json:"stores"`
}

// configDir is where ocibackup keeps its configuration.
func configDir() (string, error) {
	if d := os.Getenv(envConfigDir); d != "" {
		return d, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory: %w (set $%s)", err, envConfigDir)
	}
	return filepath.Join(d, "ocibackup"), nil
}

// cacheDir is where Kloset keeps its local cache of each store.
func cacheDir() (string, error) {
	if d := os.Getenv(envCacheDir); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: %w (set $%s)", err, envCacheDir)
	}
	return filepath.Join(d, "ocibackup"), nil
}

// dataDir is where ocibackup keeps data: the local registry's storage.
func dataDir() string {
	if d := os.Getenv(envDataDir); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	switch runtime.GOOS {
	case "windows":
		if d := os.Getenv("LocalAppData"); d != "" {
			return filepath.Join(d, "ocibackup")
		}
	case "darwin", "ios":
		if home != "" {
			return filepath.Join(home, "Library", "Application Support", "ocibackup")
		}
	default:
		if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
			return filepath.Join(d, "ocibackup")
		}
		if home != "" {
			return filepath.Join(home, ".local", "share", "ocibackup")
		}
	}
	return filepath.Join(os.TempDir(), "ocibackup-data")
}

// localRegistryDir is the storage of the registry behind oci://local.
func localRegistryDir() string { return filepath.Join(dataDir(), "registry") }

// displayPath shortens a path under the home directory to ~/...
func displayPath(p string) string {
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		if rel, err := filepath.Rel(home, p); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join("~", rel)
		}
	}
	return p
}

func storesPath() (string, error) {
	d, err := configDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "stores.json"), nil
}

func loadStores() (map[string]storeEntry, string, error) {
	path, err := storesPath()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]storeEntry{}, path, nil
	}
	if err != nil {
		return nil, path, err
	}
	var f storesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	if f.Stores == nil {
		f.Stores = map[string]storeEntry{}
	}
	return f.Stores, path, nil
}

// saveStores writes the stores, readable by the user only: an entry may
// hold a password.
func saveStores(stores map[string]storeEntry, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(storesFile{Stores: stores}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".stores-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

var storeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

const locationExample = "oci://localhost:5000/my-org/backups"

// checkLocation refuses what is not an oci:// location before anything
// else is done.
func checkLocation(loc string) error {
	if !strings.HasPrefix(strings.ToLower(loc), "oci://") {
		return fmt.Errorf("location %q: it must start with oci://, as in %s (or oci://local/PATH, or @NAME for a saved store)", loc, locationExample)
	}
	return nil
}

// storeConfig is the configuration of the store the command works on:
// -at (or $OCIBACKUP_LOCATION), a named store's options, then -o. An
// oci://local location starts the local registry.
func (a *app) storeConfig() (map[string]string, error) {
	at := a.g.at
	if at == "" {
		at = os.Getenv(envLocation)
	}
	if at == "" {
		return nil, usagef("no store given: use -at %s (or -at oci://local/PATH, or -at @NAME), or set $%s", locationExample, envLocation)
	}
	cfg := map[string]string{}
	if name, ok := strings.CutPrefix(at, "@"); ok {
		stores, path, err := loadStores()
		if err != nil {
			return nil, err
		}
		e, ok := stores[name]
		if !ok {
			return nil, fmt.Errorf("no store named %q in %s: see 'ocibackup store ls'", name, path)
		}
		maps.Copy(cfg, e.Options)
		cfg["location"] = e.Location
	} else {
		cfg["location"] = at
	}
	for _, kv := range a.g.opts {
		k, v, _ := strings.Cut(kv, "=")
		if k == "location" {
			return nil, usagef("-o location=...: give the location with -at")
		}
		cfg[k] = v
	}
	// A location or option the store refuses is a bad command line (exit
	// 2), as docs/cli.md says, whether -at, -o or a saved store gave it.
	if err := checkLocation(cfg["location"]); err != nil {
		return nil, usageError{err.Error()}
	}
	if isLocal(cfg["location"]) {
		if err := a.useLocalRegistry(cfg); err != nil {
			return nil, err
		}
	}
	if _, err := host.ParseConfig(cfg); err != nil {
		return nil, usageError{a.displayError(err).Error()}
	}
	return cfg, nil
}

// cmdStore manages named stores.
func cmdStore(a *app, args []string) error {
	fs := a.flagSet("store")
	rest, err := parseFlags(fs, args, false)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("store: add, ls or rm?")
	}
	stores, path, err := loadStores()
	if err != nil {
		return err
	}
	switch rest[0] {
	case "add":
		if len(rest) < 3 {
			return usagef("store add NAME LOCATION [key=value...]")
		}
		name, loc := rest[1], rest[2]
		if !storeNameRE.MatchString(name) {
			return usagef("store add: the name %q must be letters, digits, '.', '_' or '-'", name)
		}
		if _, ok := stores[name]; ok {
			return fmt.Errorf("store add: %q already exists: 'ocibackup store rm %s' first", name, name)
		}
		if err := checkLocation(loc); err != nil {
			return usageError{err.Error()}
		}
		e := storeEntry{Location: loc, Options: map[string]string{}}
		for _, kv := range rest[3:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return usagef("store add: %q is not key=value", kv)
			}
			if k == "location" {
				return usagef("store add: the location is the second argument, not an option")
			}
			e.Options[k] = v
		}
		check := maps.Clone(e.Options)
		check["location"] = loc
		if isLocal(loc) {
			check["location"] = localAlias(loc, "127.0.0.1:1")
		}
		if _, err := host.ParseConfig(check); err != nil {
			return usagef("store add: %v", err)
		}
		if len(e.Options) == 0 {
			e.Options = nil
		}
		stores[name] = e
		if err := saveStores(stores, path); err != nil {
			return err
		}
		a.sayf("added store %s: %s (use -at @%s)", name, loc, name)
		if e.Options["password"] != "" {
			a.con.Printf("ocibackup: warning: the password of %s is kept in clear in %s (readable by you only, mode 0600)", name, path)
		}
		return nil
	case "ls":
		if len(rest) != 1 {
			return usagef("store ls takes no argument")
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		for _, name := range sortedKeys(stores) {
			e := stores[name]
			var opts []string
			for _, k := range sortedKeys(e.Options) {
				v := e.Options[k]
				if k == "password" {
					v = "********"
				}
				opts = append(opts, k+"="+v)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", name, e.Location, strings.Join(opts, " "))
		}
		return tw.Flush()
	case "rm":
		if len(rest) != 2 {
			return usagef("store rm NAME")
		}
		if _, ok := stores[rest[1]]; !ok {
			return fmt.Errorf("store rm: no store named %q", rest[1])
		}
		delete(stores, rest[1])
		if err := saveStores(stores, path); err != nil {
			return err
		}
		a.sayf("removed store %s (its data stay where they are)", rest[1])
		return nil
	}
	return usagef("store: unknown subcommand %q: add, ls or rm", rest[0])
}
