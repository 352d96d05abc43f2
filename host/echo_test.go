package host_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
)

// TestAuthEcho puts a registry double in front of a real registry that
// echoes the Authorization header it gets, decoded and URL-encoded, in
// the body and a header of a 500 answer to every tag list, for each
// source of credentials the host reads, or in the token service its
// challenge names. Neither the store's errors, nor
// its logs, nor what its transport hands over (headers, bodies that are
// not payload) may hold a credential in any form; payload that holds the
// same bytes comes back byte for byte.
func TestAuthEcho(t *testing.T) {
	const (
		user        = "echo-user"
		password    = "p@ss/w+rd&<echo> 42"
		staticToken = "static-tok/en+Zz9_echo"
		issuedToken = "issued-tok/en+Yy8_echo"
	)
	inner := registrytest.InProcess(t)
	innerURL, err := url.Parse(inner.URL)
	if err != nil {
		t.Fatal(err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	var mode atomic.Value // basic, token or bearer: what the double asks for
	proxy := httputil.NewSingleHostReverseProxy(innerURL)
	var front *httptest.Server
	front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if r.URL.Path == "/token" {
			if auth != basic {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"you sent `+auth+`"}]}`, http.StatusUnauthorized)
				return
			}
			fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, issuedToken)
			return
		}
		if mode.Load() == "realm" && auth == basic && strings.HasSuffix(r.URL.Path, "/tags/list") {
			// The echo in the challenge: a token service named after
			// what the registry was sent.
			decoded, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(auth, "Basic "))
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="you sent %s %s"`, decoded, auth))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		want, challenge := basic, `Basic realm="echo"`
		switch mode.Load() {
		case "token":
			want, challenge = "Bearer "+staticToken, `Bearer realm="`+front.URL+`/token",service="echo"`
		case "bearer":
			want, challenge = "Bearer "+issuedToken, `Bearer realm="`+front.URL+`/token",service="echo"`
		}
		if auth != want {
			w.Header().Set("WWW-Authenticate", challenge)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			var decoded []byte
			if b, ok := strings.CutPrefix(auth, "Basic "); ok {
				decoded, _ = base64.StdEncoding.DecodeString(b)
			}
			echo := fmt.Sprintf("you sent %s = %s = %s = %s", decoded, url.QueryEscape(string(decoded)), strings.TrimPrefix(auth, "Bearer "), auth)
			w.Header().Set("X-Echo", auth)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `{"errors":[{"code":"UNKNOWN","message":%q}]}`, echo)
			return
		}
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	location := "oci://" + strings.TrimPrefix(front.URL, "http://") + "/echo/repo"

	forms := func(secret string) []string {
		return []string{secret, url.QueryEscape(secret), base64.StdEncoding.EncodeToString([]byte(secret))}
	}
	secrets := append(append(append(forms(password), forms(user+":"+password)...), forms(staticToken)...), forms(issuedToken)...)

	for _, c := range []struct {
		name   string
		mode   string
		config map[string]string
		env    map[string]string
		docker bool
	}{
		{name: "configuration password", mode: "basic", config: map[string]string{"username": user, "password": password}},
		{name: "environment password", mode: "basic", env: map[string]string{host.EnvUsername: user, host.EnvPassword: password}},
		{name: "docker config.json", mode: "basic", docker: true},
		{name: "configuration token", mode: "token", config: map[string]string{"token": staticToken}},
		{name: "environment token", mode: "token", env: map[string]string{host.EnvToken: staticToken}},
		{name: "issued token", mode: "bearer", config: map[string]string{"username": user, "password": password}},
		{name: "challenge", mode: "realm", config: map[string]string{"username": user, "password": password}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := noAmbientCredentials(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			if c.docker {
				auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
				writeFile(t, filepath.Join(dir, ".docker", "config.json"),
					fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, strings.TrimPrefix(front.URL, "http://"), auth))
			}
			mode.Store(c.mode)
			config := map[string]string{"location": location}
			for k, v := range c.config {
				config[k] = v
			}
			var seen seenTexts
			logs := &logBuffer{}
			s := authStore(t, config, logs, host.WithTransport(seen.record))

			// Payload that holds the secrets comes back as it was.
			mac, data := randomMAC(), []byte(strings.Join(secrets, "\n"))
			put(t, s, storage.StorageResourcePackfile, mac, data)
			if got := get(t, s, storage.StorageResourcePackfile, mac, nil); !bytes.Equal(got, data) {
				t.Fatalf("the payload came back as %q", got)
			}

			_, err := s.List(context.Background(), storage.StorageResourcePackfile)
			if echoed := "you sent"; c.mode == "realm" {
				// The guest is told the credentials were refused; the
				// token service's name is in the log.
				if err == nil || !strings.Contains(logs.String(), echoed) {
					t.Fatalf("list against a registry whose challenge names a token service it made up: %v; want an error and the name in the log\n%s", err, logs.String())
				}
			} else if err == nil || !strings.Contains(err.Error(), echoed) {
				t.Fatalf("list against a registry that answers 500: %v; want its echo, scrubbed\n%s", err, seen.String())
			}
			noSecret(t, "the error", err.Error(), secrets...)
			noSecret(t, "the logs", logs.String(), secrets...)
			noSecret(t, "the plugin's logs", authPluginLog.String(), secrets...)
			noSecret(t, "what the transport handed over", seen.String(), secrets...)
			if c.mode != "realm" && !regexp.MustCompile(`X-Echo: (Basic|Bearer) \[redacted\]`).MatchString(seen.String()) {
				t.Errorf("the echoing header did not come through scrubbed:\n%s", seen.String())
			}
		})
	}
}

// seenTexts records the headers and the bodies of the answers a store's
// transport hands to the session (and through it to the guest), but for
// payload, which the session verifies.
type seenTexts struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *seenTexts) record(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(r)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			fmt.Fprintf(&s.buf, "%s %s: %v\n", r.Method, r.URL.Path, err)
			return resp, err
		}
		fmt.Fprintf(&s.buf, "%s %s: %d\n", r.Method, r.URL.Path, resp.StatusCode)
		resp.Header.Write(&s.buf)
		if resp.StatusCode/100 == 2 && (strings.Contains(r.URL.Path, "/blobs/sha256:") || strings.Contains(r.URL.Path, "/manifests/")) {
			return resp, nil
		}
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.TeeReader(resp.Body, lockedWriterTo{s}), resp.Body}
		return resp, nil
	})
}

type lockedWriterTo struct{ s *seenTexts }

func (w lockedWriterTo) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.buf.Write(p)
}

func (s *seenTexts) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
