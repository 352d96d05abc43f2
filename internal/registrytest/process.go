package registrytest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// StartDistribution starts the distribution v3 binary for a program rather
// than a test (the benchmarks): as Distribution does, on a free port of
// 127.0.0.1, but keeping its storage and log under dir, which must exist,
// and returning errors instead of failing a test. The caller stops it with
// Close. The binary is found as for Distribution ($OCISTORE_REGISTRY_V3,
// or build/bin/registry-v3.1.2 under the repository root, which `make
// tools` builds).
func StartDistribution(dir string, opts Options) (*Registry, error) {
	bin, err := findDistribution()
	if err != nil {
		return nil, err
	}
	storage := filepath.Join(dir, "storage")
	if err := os.Mkdir(storage, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := createLog(logPath)
	if err != nil {
		return nil, err
	}
	name := NameDistributionNoDelete
	if opts.Delete {
		name = NameDistributionDelete
	}
	r := &Registry{Name: name, Dir: storage, Delete: opts.Delete, LogPath: logPath, logFile: logFile, instance: randomSecret()}
	cfgPath := filepath.Join(dir, "config.yml")
	r.start = func() error { return startProcess(r, bin, cfgPath) }
	// As startBinary: another process may take the port first.
	for i := 1; ; i++ {
		host, err := freeAddr()
		if err == nil {
			r.Host, r.URL = host, "http://"+host
			err = os.WriteFile(cfgPath, []byte(distributionConfig(host, storage, r.instance, opts)), 0o600)
		}
		if err == nil {
			err = r.Restart()
		}
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, errAddrInUse) || i == 5 {
			r.Close()
			return nil, fmt.Errorf("%w\nregistry log (%s):\n%s", err, r.LogPath, r.logTail())
		}
	}
}

// Close stops a registry started by StartDistribution and closes its log.
func (r *Registry) Close() error {
	err := r.Stop()
	if cerr := r.logFile.Close(); err == nil {
		err = cerr
	}
	return err
}

// findDistribution is distributionBinary for programs.
func findDistribution() (string, error) {
	path := os.Getenv(EnvDistribution)
	if path == "" {
		root, err := repoRoot()
		if err != nil {
			return "", fmt.Errorf("distribution %s: %v", DistributionVersion, err)
		}
		path = filepath.Join(root, "build", "bin", "registry-"+DistributionVersion)
	}
	st, err := os.Stat(path)
	if err == nil && (!st.Mode().IsRegular() || st.Mode()&0o111 == 0) {
		err = errors.New("not an executable file")
	}
	if err != nil {
		return "", fmt.Errorf("distribution %s is missing at %s (%v): run `make tools`", DistributionVersion, path, err)
	}
	return path, nil
}
