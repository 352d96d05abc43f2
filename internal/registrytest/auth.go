package registrytest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Registries that require authentication, over TLS: distribution v3 with
// htpasswd (basic authentication) or with token authentication, and the
// pieces they need: a certificate authority made for the test and a token
// server that issues real JWTs.

// CA is a certificate authority made for one test. Its certificate is in
// the file CertPath, for a store's ca_file.
type CA struct {
	CertPath string
	CertPEM  []byte

	cert *x509.Certificate
	key  crypto.Signer
	dir  string
}

// NewCA makes a certificate authority valid for the next day.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := certTemplate(t, "registrytest CA "+t.Name())
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{cert: cert, key: key, dir: t.TempDir()}
	ca.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	ca.CertPath = filepath.Join(ca.dir, "ca.pem")
	if err := os.WriteFile(ca.CertPath, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// newKey makes an ECDSA P-256 key.
func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// certTemplate is the template of a certificate named cn, with a random
// serial number, valid from an hour ago for the next day.
func certTemplate(t testing.TB, cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Pool is a certificate pool with the CA only.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Client is an HTTP client that trusts the CA only.
func (ca *CA) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}}
}

// Issue makes a server certificate for hosts (IP addresses or names) and
// returns it with the files that hold it and its key, in PEM.
func (ca *CA) Issue(t testing.TB, hosts ...string) (cert tls.Certificate, certPath, keyPath string) {
	t.Helper()
	key := newKey(t)
	tmpl := certTemplate(t, hosts[0])
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certPath, keyPath
}

// StartTLS starts srv (made with httptest.NewUnstartedServer) over TLS with
// a certificate of the CA for its listener's address.
func (ca *CA) StartTLS(t testing.TB, srv *httptest.Server) {
	t.Helper()
	host, _, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cert, _, _ := ca.Issue(t, host)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
}

// TokenServer issues registry tokens as the distribution token
// specification describes: GET <URL>?service=...&scope=..., with the user's
// credentials as basic authentication, answered with a JWT signed by its
// key, whose certificate distribution is configured to trust. It serves
// over TLS with a certificate of the CA it was made with.
type TokenServer struct {
	// URL is the realm, https://127.0.0.1:PORT/token.
	URL string
	// Service and Issuer are what the tokens say and the registry checks.
	Service, Issuer string
	// CertPath holds the certificate of the signing key, for the
	// registry's rootcertbundle.
	CertPath string

	key  ed25519.PrivateKey
	cert []byte // DER

	mu        sync.Mutex
	users     map[string]string
	actions   []string
	expiresIn time.Duration
	valid     time.Duration
	requests  int
	refused   int
	issued    []string
	scopes    []string
}

// NewTokenServer starts a token server for users (username to password).
// Tokens grant every action asked for (pull, push, delete) on any
// repository, say they expire in 5 minutes and are valid that long.
func NewTokenServer(t testing.TB, ca *CA, users map[string]string) *TokenServer {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := certTemplate(t, "registrytest token signer")
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	s := &TokenServer{
		Service:   "registrytest",
		Issuer:    "registrytest-token-server",
		key:       key,
		cert:      der,
		users:     users,
		actions:   []string{"pull", "push", "delete"},
		expiresIn: 5 * time.Minute,
		valid:     5 * time.Minute,
	}
	s.CertPath = filepath.Join(t.TempDir(), "token-signer.pem")
	if err := os.WriteFile(s.CertPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	ca.StartTLS(t, srv)
	t.Cleanup(srv.Close)
	s.URL = srv.URL + "/token"
	return s
}

// SetLifetime sets what the tokens issued from now on say in expires_in,
// and how long the registry accepts them, which may differ: a token the
// client believes valid that the registry rejects is a revoked token.
func (s *TokenServer) SetLifetime(expiresIn, valid time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expiresIn, s.valid = expiresIn, valid
}

// SetActions sets the actions tokens grant, of those asked for.
func (s *TokenServer) SetActions(actions ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.actions = actions
}

// Requests is the number of requests the server got, Refused the number it
// answered 401.
func (s *TokenServer) Requests() (requests, refused int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.refused
}

// Issued returns the tokens issued so far.
func (s *TokenServer) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.issued)
}

// Scopes returns the scope parameters of every request.
func (s *TokenServer) Scopes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.scopes)
}

// leeway is how long distribution accepts a token after its exp claim
// (registry/auth/token.Leeway): tokens are made to expire that much
// earlier, so that the registry stops accepting them when they should.
const leeway = 60 * time.Second

func (s *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	q := r.URL.Query()
	s.scopes = append(s.scopes, q["scope"]...)
	user, password, ok := r.BasicAuth()
	if want, known := s.users[user]; !ok || !known || want != password || r.Method != http.MethodGet {
		s.refused++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	grants := []access{}
	for _, scope := range q["scope"] {
		for _, sc := range strings.Fields(scope) {
			parts := strings.Split(sc, ":")
			if len(parts) != 3 || parts[0] != "repository" {
				continue
			}
			a := access{Type: "repository", Name: parts[1], Actions: []string{}}
			for _, act := range strings.Split(parts[2], ",") {
				if slices.Contains(s.actions, act) {
					a.Actions = append(a.Actions, act)
				}
			}
			grants = append(grants, a)
		}
	}
	now := time.Now()
	expires := now.Add(s.valid).Add(time.Second - 1).Truncate(time.Second)
	claims := map[string]any{
		"iss":    s.Issuer,
		"sub":    user,
		"aud":    q.Get("service"),
		"exp":    expires.Add(-leeway).Unix(),
		"nbf":    now.Add(-time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    randomSecret()[:16],
		"access": grants,
	}
	header := map[string]any{"alg": "EdDSA", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(s.cert)}}
	token := s.sign(header, claims)
	s.issued = append(s.issued, token)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token":      token,
		"expires_in": int(s.expiresIn / time.Second),
		"issued_at":  now.UTC().Format(time.RFC3339),
	})
}

func (s *TokenServer) sign(header, claims map[string]any) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	return input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(s.key, []byte(input)))
}

// AuthOptions configure DistributionAuth.
type AuthOptions struct {
	Options
	// CA makes the registry serve TLS with a certificate for 127.0.0.1;
	// nil means plain HTTP.
	CA *CA
	// Users (username to password) turn on htpasswd authentication.
	Users map[string]string
	// Token turns on token authentication with this server instead.
	Token *TokenServer
	// LogLevel is distribution's log level (default warn).
	LogLevel string
}

// DistributionAuth starts the distribution v3 binary with TLS and
// htpasswd or token authentication. Its URL is https://127.0.0.1:PORT
// with a CA.
func DistributionAuth(t testing.TB, opts AuthOptions) *Registry {
	t.Helper()
	bin := distributionBinary(t)
	if (opts.Users == nil) == (opts.Token == nil) {
		t.Fatal("registrytest.DistributionAuth: give Users or Token")
	}
	name := "distribution-htpasswd"
	if opts.Token != nil {
		name = "distribution-token"
	}
	r, dir := newBinaryRegistry(t, name, opts.Options)
	// Ready is GET /v2/ answered 200 or 401 (authentication required).
	r.readyAuth = true

	c := configOptions{logLevel: opts.LogLevel}
	if opts.Users != nil {
		var b bytes.Buffer
		for user, password := range opts.Users {
			hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s:%s\n", user, hash)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		c.auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: registrytest\n    path: %q\n", htpasswd)
	} else {
		tk := opts.Token
		c.auth = fmt.Sprintf("auth:\n  token:\n    realm: %q\n    service: %q\n    issuer: %q\n    rootcertbundle: %q\n",
			tk.URL, tk.Service, tk.Issuer, tk.CertPath)
	}
	if opts.CA != nil {
		_, c.tlsCert, c.tlsKey = opts.CA.Issue(t, "127.0.0.1")
		r.readyClient = opts.CA.Client()
	}
	serveBinary(t, r, bin, dir, opts.Options, c)
	return r
}
