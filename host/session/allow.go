package session

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// RefusedError is the error for a destination outside the allow-list: the
// guest asked for it, or the registry redirected there.
type RefusedError struct {
	Dest     string // the destination, without its query
	Registry string // the store's registry
	Redirect bool   // whether the registry redirected there
}

func (e *RefusedError) Error() string {
	what := "request to " + e.Dest
	if e.Redirect {
		what = "the registry redirected to " + e.Dest + ", which"
	}
	return fmt.Sprintf("%s is outside the store's registry %s: refused; only the registry and the hosts allowed for it (token service, blob storage) may be reached", what, e.Registry)
}

// resolve turns the URL of a guest's request into an absolute URL, refusing
// destinations outside the allow-list.
func (e *Env) resolve(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("request URL %q is not a URL (%v): the guest built it wrong or the registry handed out a bad Location", raw, err)
	}
	if u.Scheme == "" && u.Host == "" {
		if !strings.HasPrefix(raw, "/") {
			return nil, fmt.Errorf("request URL %q must be a path starting with / or an absolute URL: the guest built it wrong", raw)
		}
		// The common case: a path on the registry, nothing to check.
		u.Scheme, u.Host = e.base.Scheme, e.base.Host
		return u, nil
	}
	if u.Scheme == "" {
		// "//host/path" is a network-path reference: it keeps the
		// registry's scheme but may name another host.
		u.Scheme = e.base.Scheme
	}
	return u, e.check(u, false)
}

// check tells whether u may be reached: the registry itself (same scheme,
// host and port), or an allowed host over https or the registry's scheme, so
// that a redirect cannot downgrade an https store to plain HTTP.
func (e *Env) check(u *url.URL, redirect bool) error {
	if u.Scheme == e.base.Scheme && sameHost(u, &e.base) {
		return nil
	}
	if (u.Scheme == "https" || u.Scheme == e.base.Scheme) && e.allowedExtra(u) {
		return nil
	}
	err := &RefusedError{Dest: where(u), Registry: e.registry, Redirect: redirect}
	e.log.Warn("refused a destination outside the store's registry",
		"destination", err.Dest, "registry", e.registry, "redirect", redirect)
	return err
}

func (e *Env) allowedExtra(u *url.URL) bool {
	m := *e.allowed.Load()
	if len(m) == 0 {
		return false
	}
	host, port := strings.ToLower(u.Hostname()), portOf(u)
	if m[joinHostPort(host, port)] {
		return true
	}
	return port == defaultPort(u.Scheme) && m[host]
}

func sameHost(a, b *url.URL) bool {
	return strings.EqualFold(a.Hostname(), b.Hostname()) && portOf(a) == portOf(b)
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	return defaultPort(u.Scheme)
}

func defaultPort(scheme string) string {
	switch scheme {
	case "https":
		return "443"
	case "http":
		return "80"
	}
	return ""
}

// hostKey is host:port in lower case with the port explicit.
func hostKey(u *url.URL) string {
	return joinHostPort(strings.ToLower(u.Hostname()), portOf(u))
}

func joinHostPort(host, port string) string {
	if port == "" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// where names a destination in messages and logs. The query is left out:
// upload locations carry session state and redirect targets carry
// signatures, neither of which belongs in a log.
func where(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
