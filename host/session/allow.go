package session

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plakar-oci/ocistore/abi"
)

// What the guest may reach, in three layers:
//
//   - A request the guest makes goes to the registry (same scheme, host and
//     port) or to a host allowed with Env.Allow, and nowhere else. A URL with
//     user information is refused: credentials belong to the host.
//   - A redirect the registry answers is followed to the registry itself, to
//     an allowed host, or, for a download (the request was a GET or a HEAD),
//     to any https URL whose address passes the address policy: registries
//     send blob downloads to object storage or a CDN they choose. The client
//     checks every hop.
//   - Every connection the store's transport opens is checked once its name
//     is resolved, at dial time (Guard), so that a name that resolves (or
//     rebinds) to a forbidden address is caught where it matters: the
//     address actually dialled.
//
// The address policy refuses, for any destination but a registry whose
// location names that very address: link-local addresses (169.254.0.0/16,
// fe80::/10: cloud metadata services answer at 169.254.169.254), the other
// metadata addresses (fd00:ec2::254, 100.100.100.200), unspecified,
// multicast and broadcast addresses; and, for any destination but the
// registry, addresses of this machine (loopback) unless the registry itself
// is on this machine.

// RefusedError is the error for a destination outside the allow-list: the
// guest asked for it, or the registry redirected there.
type RefusedError struct {
	Dest     string // the destination, without its query
	Registry string // the store's registry
	Redirect bool   // whether the registry redirected there
	// Reason says why the destination is refused, when more than its host
	// is at stake: a scheme, a method, an address.
	Reason string
}

func (e *RefusedError) Error() string {
	what := "request to " + e.Dest
	if e.Redirect {
		what = "the registry redirected to " + e.Dest + ", which"
	}
	reason := e.Reason
	if reason == "" {
		reason = "only the registry and the hosts allowed for it may be reached"
	}
	// abi.RefusedMarker tells the guest not to try again.
	return fmt.Sprintf("%s is %s %s: refused (%s)", what, abi.RefusedMarker, e.Registry, reason)
}

// Reasons of refusals, shared by the checks of URLs and of addresses.
const (
	reasonUserinfo = "a URL with user information: credentials belong to the host, not in URLs"
	reasonPlain    = "a redirect may leave the registry for an https URL only"
	reasonMethod   = "only downloads (GET and HEAD) may be redirected away from the registry"
)

// resolve turns the URL of a guest's request into an absolute URL, refusing
// destinations outside the allow-list.
func (e *Env) resolve(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("request URL %q is not a URL (%v): the guest built it wrong or the registry handed out a bad Location", raw, err)
	}
	if u.Scheme == "" && u.Host == "" && u.User == nil {
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
	return u, e.check(u, false, "")
}

// check tells whether u may be reached: the registry itself (same scheme,
// host and port), an allowed host over https or the registry's scheme (so
// that a redirect cannot downgrade an https store to plain HTTP), or, for
// a redirect of a download (method is the method of the first request), an
// https URL whose host is not an address the policy refuses.
func (e *Env) check(u *url.URL, redirect bool, method string) error {
	reason := ""
	switch {
	case u.User != nil:
		reason = reasonUserinfo
	case u.Scheme == e.base.Scheme && sameHost(u, &e.base):
		return nil
	case (u.Scheme == "https" || u.Scheme == e.base.Scheme) && e.allowedExtra(u):
		return nil
	case !redirect:
	case u.Scheme != "https":
		reason = reasonPlain
	case method != http.MethodGet && method != http.MethodHead:
		reason = reasonMethod
	default:
		if reason = e.hostReason(u.Hostname()); reason == "" {
			// The address the name resolves to is checked when the
			// connection is made (Guard).
			return nil
		}
	}
	err := &RefusedError{Dest: where(u), Registry: e.registry, Redirect: redirect, Reason: reason}
	e.log.Warn("refused a destination outside the store's registry",
		"destination", err.Dest, "registry", e.registry, "redirect", redirect, "reason", err.Error())
	return err
}

// hostReason is why the address policy refuses host, a name or an address
// in a URL, or "" when it does not (a name may still resolve to an address
// the Guard refuses).
func (e *Env) hostReason(host string) string {
	if isLocalhostName(host) {
		if e.loopback {
			return ""
		}
		return host + " is this machine, and the store's registry is not on this machine"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	return addrReason(ip.Unmap(), e.loopback)
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

// The address policy.

var (
	// metadataAddrs are the cloud metadata services outside the
	// link-local range: AWS over IPv6 and Alibaba Cloud.
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("fd00:ec2::254"),
		netip.MustParseAddr("100.100.100.200"),
	}
	broadcast = netip.MustParseAddr("255.255.255.255")
	// nat64 is the well-known NAT64 prefix (RFC 6052): its addresses
	// reach the IPv4 address in their last 32 bits.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

// addrReason is why the address policy refuses ip for a destination other
// than the registry ("" if it does not): forbidden addresses, and this
// machine's unless registryLoopback.
func addrReason(ip netip.Addr, registryLoopback bool) string {
	if nat64.Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	if r := forbiddenReason(ip); r != "" {
		return r
	}
	if ip.IsLoopback() && !registryLoopback {
		return ip.String() + " is an address of this machine, and the store's registry is not on this machine"
	}
	return ""
}

// forbiddenReason is why ip may never be reached, but as the address a
// registry's location names.
func forbiddenReason(ip netip.Addr) string {
	for _, m := range metadataAddrs {
		if ip == m {
			return ip.String() + " is a cloud metadata service"
		}
	}
	switch {
	case ip.IsLinkLocalUnicast():
		return ip.String() + " is a link-local address, where cloud metadata services answer"
	case ip.IsUnspecified():
		return ip.String() + " is the unspecified address, which reaches this machine"
	case ip.IsMulticast(), ip == broadcast:
		return ip.String() + " is a multicast or broadcast address"
	}
	return ""
}

func isLocalhostName(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// isLoopbackHost tells whether a host of a URL is this machine: localhost
// or a loopback address.
func isLoopbackHost(host string) bool {
	if isLocalhostName(host) {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Guard checks the address of every connection of a store's transport at
// dial time, after name resolution, so that DNS cannot steer a connection
// where a URL check would not let it go (a name that resolves, or rebinds
// between two lookups, to the metadata service or to this machine). Its
// DialContext goes in the transport, and its Proxy around the transport's
// proxy function: connections to a proxy the process is configured with
// are not checked (the proxy then decides where connections go).
//
// The registry's connections pass whatever address its name resolves to,
// but for the forbidden ones (link-local, metadata, unspecified, multicast)
// unless the location names that very address; a registry found on this
// machine lets redirects and the token service be on this machine too.
type Guard struct {
	registry   string     // host:port of the registry, lower case
	registryIP netip.Addr // the address the location names, if it names one
	regURL     string     // for messages
	loopback   atomic.Bool
	proxies    sync.Map // host:port of proxies the transport was sent to
	log        *slog.Logger
	dialer     net.Dialer
}

// NewGuard makes the Guard of a store whose registry is the base URL
// registry (as in Config.Registry). Refusals are logged to logger (nil
// means slog.Default()).
func NewGuard(registry string, logger *slog.Logger) (*Guard, error) {
	base, err := parseRegistry(registry)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	g := &Guard{
		registry: hostKey(base),
		regURL:   base.String(),
		log:      logger.With("plugin", "oci"),
		// http.DefaultTransport's dialer.
		dialer: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
	}
	if ip, err := netip.ParseAddr(base.Hostname()); err == nil {
		g.registryIP = ip.Unmap()
	}
	g.loopback.Store(isLoopbackHost(base.Hostname()))
	return g, nil
}

// DialContext dials addr ("host:port") if the address it resolves to passes
// the policy, and fails with a *RefusedError otherwise.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	key := strings.ToLower(addr)
	if _, ok := g.proxies.Load(key); ok {
		return g.dialer.DialContext(ctx, network, addr)
	}
	registry := key == g.registry
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil {
			// An address: refused before any socket is made.
			if reason := g.reason(ip.Unmap(), registry); reason != "" {
				return nil, g.refuse(addr, ip.Unmap().String(), reason)
			}
		}
	}
	d := g.dialer
	// Control runs for each address the name resolved to, just before
	// connecting: what it accepts is what is dialled.
	d.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return g.refuse(addr, address, "its address cannot be checked")
		}
		ip := ap.Addr().Unmap()
		if reason := g.reason(ip, registry); reason != "" {
			return g.refuse(addr, ip.String(), reason)
		}
		if registry && ip.IsLoopback() {
			g.loopback.Store(true)
		}
		return nil
	}
	return d.DialContext(ctx, network, addr)
}

func (g *Guard) reason(ip netip.Addr, registry bool) string {
	switch {
	case registry && g.registryIP.IsValid() && ip == g.registryIP:
		return "" // the location names it
	case registry:
		return forbiddenReason(ip)
	}
	return addrReason(ip, g.loopback.Load())
}

func (g *Guard) refuse(addr, ip, reason string) error {
	err := &RefusedError{Dest: addr + " (" + ip + ")", Registry: g.regURL, Reason: reason}
	g.log.Warn("refused a connection outside the store's registry",
		"destination", addr, "address", ip, "registry", g.regURL, "reason", err.Error())
	return err
}

// Proxy wraps a transport's proxy function (such as
// http.ProxyFromEnvironment) so that the proxies it names are dialled
// without checks: the user configured them.
func (g *Guard) Proxy(next func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	if next == nil {
		return nil
	}
	return func(req *http.Request) (*url.URL, error) {
		u, err := next(req)
		if u != nil && err == nil {
			key := hostKey(u)
			if u.Port() == "" && strings.HasPrefix(u.Scheme, "socks5") {
				key = joinHostPort(strings.ToLower(u.Hostname()), "1080")
			}
			g.proxies.Store(key, true)
		}
		return u, err
	}
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
