package host

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/plakar-oci/ocistore/host/session"
)

// maxResponseHeader bounds the headers of an answer: they are copied into
// the guest's memory.
const maxResponseHeader = 1 << 20

// newClient builds the HTTP client that performs the guest's requests: TLS
// settings, credentials and the address policy live here, never in the
// guest. Its transport adds credentials to the registry's requests only
// (authTransport), and its dialer refuses addresses the policy forbids
// (session.Guard). Insecure settings are logged to logger as warnings.
func newClient(c *Config, logger *slog.Logger) (*http.Client, error) {
	if logger == nil {
		logger = slog.Default()
	}
	transport, err := newTLSTransport(c)
	if err != nil {
		return nil, err
	}
	base := c.registryURL()
	guard, err := session.NewGuard(base.String(), logger)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	transport.DialContext = session.AnswerFirst(guard.DialContext)
	transport.Proxy = guard.Proxy(transport.Proxy)
	// The watchdog bounds waits on the registry, headers included.
	transport.ResponseHeaderTimeout = 0
	watched := session.NewWatchdog(c.IdleTimeout, c.StallTimeout).Transport(transport)

	static, err := staticCredentials(c)
	if err != nil {
		return nil, err
	}
	log := logger.With("plugin", "oci")
	if !c.UseTLS && !c.Location.IsLoopback() {
		log.Warn("plain HTTP to the registry (use_tls=false): credentials, tokens and the store's metadata cross the network unencrypted",
			"registry", c.Location.Registry)
	}
	if c.UseTLS && c.InsecureSkipVerify {
		log.Warn("TLS certificate verification is off (tls_insecure_no_verify=true): anyone on the network path can pose as the registry and take the credentials",
			"registry", c.Location.Registry)
	}
	if static != nil {
		log.Debug("credentials for the registry", "registry", c.Location.Registry, "credentials", static.who())
	}
	return &http.Client{Transport: newAuthTransport(watched, base, c.Location.Repository, static, logger)}, nil
}

// newTLSTransport is a transport with the store's TLS settings and nothing
// else: no credentials, no address policy. It is for the host's own
// requests, such as fetching a plugin module, which authenticate as they
// see fit.
func newTLSTransport(c *Config) (*http.Transport, error) {
	tlsConfig, err := tlsConfig(c)
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	// One connection per instance and a few spare: the pool bounds calls.
	transport.MaxIdleConnsPerHost = c.Concurrency + 2
	transport.ResponseHeaderTimeout = 2 * time.Minute
	transport.MaxResponseHeaderBytes = maxResponseHeader
	return transport, nil
}

// tlsConfig verifies certificates against the system's CAs and those of
// ca_file, unless tls_insecure_no_verify.
func tlsConfig(c *Config) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile == "" {
		return config, nil
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: ca_file: %v", ErrInvalidConfig, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: ca_file %s holds no PEM certificate", ErrInvalidConfig, c.CAFile)
	}
	config.RootCAs = pool
	return config, nil
}

// registryURL is the registry's base URL: scheme and host.
func (c *Config) registryURL() *url.URL {
	scheme := "https"
	if !c.UseTLS {
		scheme = "http"
	}
	return &url.URL{Scheme: scheme, Host: c.Location.Registry}
}
