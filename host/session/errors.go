package session

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
)

// hostError is a failure explained for the user, keeping the original error
// for errors.Is and errors.As.
type hostError struct {
	msg string
	err error
}

func (e *hostError) Error() string { return e.msg }
func (e *hostError) Unwrap() error { return e.err }

// explain turns what http.Client.Do returned into an error that says what
// went wrong and what to do about it. Go's messages are precise but name
// neither the store nor its settings.
func (s *Session) explain(req *http.Request, err error, body *requestBody) error {
	var refused *RefusedError
	if errors.As(err, &refused) {
		return refused
	}
	if body != nil && body.err != nil {
		// The upload's source failed (or its verification): not the
		// registry's fault, and retrying will not help by itself.
		return &hostError{fmt.Sprintf("sending the body of %s %s failed: %v", req.Method, where(req.URL), body.err), body.err}
	}
	if cerr := s.ctx.Err(); cerr != nil {
		return &hostError{fmt.Sprintf("%s %s was abandoned: %v", req.Method, where(req.URL), cerr), cerr}
	}
	var stalled *StalledError
	if errors.As(err, &stalled) {
		return &hostError{fmt.Sprintf("%s %s: %v", req.Method, where(req.URL), stalled), err}
	}

	// The hop that failed: the registry, or a host it redirected to.
	hop, inner := req.URL, err
	var ue *url.Error
	if errors.As(err, &ue) {
		inner = ue.Err
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			hop = u
		}
	}
	// What to check: the store's location, or, when the hop is where the
	// registry redirected to (object storage, a CDN), the registry's
	// redirect, which the location has no say in.
	name := hostKey(hop)
	checkName := "check the host name in the store's location"
	checkRunning := "is the registry running and is the location right?"
	if sameHost(hop, &s.env.base) {
		name = "registry " + name
	} else {
		checkName = fmt.Sprintf("registry %s redirected %s %s there: the host it sends downloads to must be reachable from this machine, which the registry's storage settings decide", hostKey(&s.env.base), req.Method, where(req.URL))
		checkRunning = checkName
	}

	var (
		dnsErr  *net.DNSError
		opErr   *net.OpError
		certErr *tls.CertificateVerificationError
		uaErr   x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invErr  x509.CertificateInvalidError
		recErr  tls.RecordHeaderError
		alert   tls.AlertError
	)
	switch {
	case body != nil && strings.Contains(inner.Error(), "ContentLength="):
		return &hostError{fmt.Sprintf("the body of %s %s does not have the length its Content-Length header announced (%v): the guest announced a wrong length", req.Method, where(req.URL), inner), err}
	case strings.Contains(inner.Error(), "server gave HTTP response to HTTPS client"):
		return &hostError{fmt.Sprintf("%s answered in plain HTTP on a TLS connection: set use_tls=false for a plain-HTTP registry, or check the port in the location", name), err}
	case errors.As(err, &certErr), errors.As(err, &uaErr), errors.As(err, &hostErr),
		errors.As(err, &invErr), errors.As(err, &recErr), errors.As(err, &alert),
		strings.HasPrefix(inner.Error(), "tls: "):
		return &hostError{fmt.Sprintf("TLS handshake with %s failed: %v; set ca_file for a private CA or use_tls=false for a plain-HTTP registry", name, inner), err}
	case errors.As(err, &dnsErr):
		return &hostError{fmt.Sprintf("cannot resolve %s: %v: %s", name, dnsErr, checkName), err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &hostError{fmt.Sprintf("cannot reach %s: connection refused: %s", name, checkRunning), err}
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return &hostError{fmt.Sprintf("cannot reach %s: %v: %s", name, opErr.Err, checkRunning), err}
	case ue != nil && ue.Timeout():
		return &hostError{fmt.Sprintf("%s did not answer %s %s in time (%v): check the network and that the registry is up", name, req.Method, where(req.URL), inner), err}
	}
	return &hostError{fmt.Sprintf("the connection to %s broke during %s %s: %v; try again", name, req.Method, where(req.URL), inner), err}
}
