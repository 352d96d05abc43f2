// Package location parses and validates a store location,
// oci://host[:port]/path, and the optional repository_prefix option, into
// the registry to talk to and the repository that holds the store.
//
// It is shared by the host (which needs the registry to scope credentials
// and the allow-list) and the guest (which needs the repository), so both
// read a location the same way. It compiles for wasip1: no net package.
package location

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Scheme is the only scheme a location may have.
const Scheme = "oci://"

// maxNameLength is the limit the OCI distribution spec puts on
// <registry>/<repository>; several registries refuse longer names.
const maxNameLength = 255

const example = "oci://registry.example.com/team/backups"

// Location is a parsed store location.
type Location struct {
	// Registry is host[:port], as given (IPv6 literals keep their brackets),
	// with the host lowercased: it is what the host dials and what
	// credentials are keyed on.
	Registry string
	// Repository is the OCI repository name: repository_prefix and the
	// location's path joined by "/", no leading or trailing slash.
	Repository string
}

// String is the canonical form of the location, oci://registry/repository.
func (l Location) String() string { return Scheme + l.Registry + "/" + l.Repository }

// Host is the registry without its port (and without IPv6 brackets).
func (l Location) Host() string {
	host, _, _ := splitHostPort(l.Registry)
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// IsLoopback tells whether the registry is on this machine (localhost or a
// loopback address), where plain HTTP is an acceptable default.
func (l Location) IsLoopback() bool {
	host := l.Host()
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

// Parse parses location with the optional repository prefix.
func Parse(location, prefix string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("location %q: %s", location, fmt.Sprintf(format, args...))
	}
	if location == "" {
		return bad("the location is empty: set it to oci://<registry>/<repository>, as in %s", example)
	}
	rest, ok := cutPrefixFold(location, Scheme)
	if !ok {
		return bad("the scheme must be oci://, as in %s", example)
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return bad("%q is not allowed: a location has no query or fragment, as in %s", rest[i:i+1], example)
	}
	registry, path, _ := strings.Cut(rest, "/")
	if strings.Contains(registry, "@") {
		return bad("credentials do not belong in the location: remove %q and give them as the store's username and password",
			registry[:strings.LastIndex(registry, "@")+1])
	}
	registry, err := checkRegistry(registry)
	if err != nil {
		return bad("%v", err)
	}

	prefix = strings.Trim(prefix, "/")
	path = strings.Trim(path, "/")
	if prefix != "" {
		if err := checkRepository(prefix); err != nil {
			return bad("repository_prefix %q %v", prefix, err)
		}
	}
	repo := path
	if prefix != "" && path != "" {
		repo = prefix + "/" + path
	} else if prefix != "" {
		repo = prefix
	}
	if repo == "" {
		return bad("a repository path is required after the registry, as in %s", example)
	}
	if path != "" {
		if err := checkRepository(path); err != nil {
			return bad("repository %q %v", path, err)
		}
	}
	if n := len(registry) + 1 + len(repo); n > maxNameLength {
		return bad("%s/%s is %d characters long; the OCI distribution spec allows %d: use a shorter path or prefix",
			registry, repo, n, maxNameLength)
	}
	return Location{Registry: registry, Repository: repo}, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// checkRegistry validates host[:port] and returns it with the host
// lowercased.
func checkRegistry(registry string) (string, error) {
	if registry == "" {
		return "", fmt.Errorf("the registry host is missing, as in %s", example)
	}
	host, port, hasPort := splitHostPort(registry)
	if strings.HasPrefix(host, "[") {
		end := strings.Index(host, "]")
		if end < 0 {
			return "", fmt.Errorf("IPv6 address %q lacks its closing bracket, as in oci://[::1]:5000/team/backups", host)
		}
		if end != len(host)-1 {
			return "", fmt.Errorf("%q follows the IPv6 address %q: only :port may, as in oci://[::1]:5000/team/backups", host[end+1:], host[:end+1])
		}
		addr, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", fmt.Errorf("%q is not an IPv6 address: write it as in oci://[::1]:5000/team/backups", host)
		}
	} else if err := checkHostname(host); err != nil {
		return "", err
	}
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '0' || port[0] == '+' {
			return "", fmt.Errorf("port %q must be a number from 1 to 65535", port)
		}
		return strings.ToLower(host) + ":" + port, nil
	}
	return strings.ToLower(host), nil
}

// splitHostPort splits at the port's colon, minding IPv6 brackets. A bare
// IPv6 address without brackets comes back whole as the host, for
// checkHostname to refuse with a hint.
func splitHostPort(registry string) (host, port string, hasPort bool) {
	if strings.HasPrefix(registry, "[") {
		if i := strings.Index(registry, "]"); i >= 0 {
			if rest, ok := strings.CutPrefix(registry[i+1:], ":"); ok {
				return registry[:i+1], rest, true
			}
			if i+1 < len(registry) {
				// Junk after the bracket: keep it in the host so it is reported.
				return registry, "", false
			}
			return registry[:i+1], "", false
		}
		return registry, "", false
	}
	if strings.Count(registry, ":") == 1 {
		host, port, _ := strings.Cut(registry, ":")
		return host, port, true
	}
	return registry, "", false
}

// checkHostname accepts DNS names (labels of letters, digits and inner
// hyphens) and IPv4 addresses.
func checkHostname(host string) error {
	if host == "" {
		return fmt.Errorf("the registry host is missing, as in %s", example)
	}
	if strings.Count(host, ":") > 1 {
		return fmt.Errorf("IPv6 address %q must be in brackets, as in oci://[::1]:5000/team/backups", host)
	}
	if len(host) > 253 {
		return fmt.Errorf("host %q is longer than 253 characters", host)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q is not a valid host name: each dot-separated part must be 1 to 63 letters, digits or inner hyphens", host)
		}
		for _, c := range []byte(label) {
			if !isAlnum(c) && c != '-' && !(c >= 'A' && c <= 'Z') {
				return fmt.Errorf("host %q has the character %q, which a host name cannot have", host, c)
			}
		}
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// isAlnumFold is isAlnum for letters of either case.
func isAlnumFold(c byte) bool { return isAlnum(c) || c >= 'A' && c <= 'Z' }

// checkRepository validates a repository name (or a part of one) against
// the OCI distribution spec: components matching
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by "/". The error completes a
// sentence that starts with the name.
func checkRepository(name string) error {
	// The other rules first, letters of either case: the hint below is a
	// path to paste back, which must then be valid.
	for _, comp := range strings.Split(name, "/") {
		if err := checkComponent(comp); err != nil {
			return err
		}
	}
	if lower := strings.ToLower(name); lower != name {
		// The whole path, corrected, so that it can be pasted back.
		return fmt.Errorf("must be lowercase: use %q", lower)
	}
	return nil
}

func checkComponent(comp string) error {
	const rule = "each part between slashes must be lowercase letters and digits, separated by one '.', one or two '_', or '-'"
	if comp == "" {
		return fmt.Errorf("has an empty part (two slashes in a row): %s", rule)
	}
	for i := 0; i < len(comp); i++ {
		if c := comp[i]; !isAlnumFold(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("has the character %q, which is not allowed: %s", c, rule)
		}
	}
	if !isAlnumFold(comp[0]) || !isAlnumFold(comp[len(comp)-1]) {
		return fmt.Errorf("has part %q, which must start and end with a letter or digit: %s", comp, rule)
	}
	for i := 0; i < len(comp); {
		if isAlnumFold(comp[i]) {
			i++
			continue
		}
		j := i
		for j < len(comp) && !isAlnumFold(comp[j]) {
			j++
		}
		if sep := comp[i:j]; sep != "." && sep != "_" && sep != "__" && strings.Trim(sep, "-") != "" {
			return fmt.Errorf("has %q in part %q: %s", sep, comp, rule)
		}
		i = j
	}
	return nil
}
