package host

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"time"
)

// newClient builds the HTTP client that performs the guest's requests: TLS
// settings and credentials live here, never in the guest.
func newClient(c *Config) (*http.Client, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile != "" {
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
		tlsConfig.RootCAs = pool
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	// One connection per instance and a few spare: the pool bounds calls.
	transport.MaxIdleConnsPerHost = c.Concurrency + 2
	transport.ResponseHeaderTimeout = 2 * time.Minute
	var rt http.RoundTripper = transport
	if c.Username != "" {
		rt = &basicAuth{next: transport, host: c.Location.Registry, user: c.Username, password: c.Password}
	}
	return &http.Client{Transport: rt}, nil
}

// basicAuth adds credentials to requests for the store's registry only, so
// that a redirect to a blob host never carries them.
type basicAuth struct {
	next           http.RoundTripper
	host           string
	user, password string
}

func (b *basicAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host == b.host && req.Header.Get("Authorization") == "" {
		req = req.Clone(req.Context())
		req.SetBasicAuth(b.user, b.password)
	}
	return b.next.RoundTrip(req)
}
