package host

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/plakar-oci/ocistore/host/session"
)

// Authentication to the registry happens here, in the host, and nowhere
// else: the guest sends its requests without credentials, and authTransport
// adds them to the requests for the store's registry only (same scheme, host
// and port), never to a redirect target. Tokens are obtained from the token
// service the registry names, by the host: the guest never talks to it.
//
// Credentials come from, in this order:
//
//  1. the store's configuration: username and password, or token;
//  2. the environment: OCISTORE_USERNAME and OCISTORE_PASSWORD, or
//     OCISTORE_TOKEN, used for whichever registry the store is on;
//  3. Docker's configuration, as go-containerregistry's
//     authn.DefaultKeychain reads it: ~/.docker/config.json or
//     $DOCKER_CONFIG/config.json with its credential helpers (credsStore,
//     credHelpers), else $REGISTRY_AUTH_FILE or the container tools'
//     containers/auth.json. It is read the first time the registry asks for
//     credentials, not before;
//  4. none: anonymous access (a registry's token service may still grant
//     pulls).
//
// The scheme is learned from the registry's challenge (WWW-Authenticate on a
// 401), so a registry that needs no credentials never sees them:
//
//   - Basic: username and password on every request once the registry asked
//     for them.
//   - Bearer (the distribution token flow): a token for
//     repository:<the store's repository>:pull,push (delete is added when the
//     registry asks for it) from the realm the challenge names, with the
//     credentials as basic authentication (or an identity token, OAuth2
//     refresh_token grant). Only scopes on the store's own repository are
//     ever requested, whatever the registry's challenges ask for: a guest
//     cannot borrow the credentials to reach other repositories. One token is
//     shared by every request of the store; one request fetches it while the
//     others wait. It is refreshed before it expires (expires_in, less a
//     margin), and when the registry rejects it (401) once it is more than a
//     second old.
//
// A 401 is answered by fetching a token (or sending basic credentials) and
// sending the request again, once, when its body can be sent again: none, a
// body with GetBody, or a streamed body of which not a byte was read yet
// (requests with a streamed body ask for "100-continue" while a token is in
// use, so that a registry that rejects an expired token does so before the
// body goes out).
//
// Credentials the token service refuses (401 or 403) are not offered again
// for rejectCooldown: requests meanwhile get a 401 at once, without a
// request to the registry or the token service, so that a wrong password
// costs one attempt, not one per request. Every 401 the guest gets says
// which credentials were refused, by name and source, never by value.

// Environment variables holding credentials, used when the store's
// configuration has none.
const (
	EnvUsername = "OCISTORE_USERNAME"
	EnvPassword = "OCISTORE_PASSWORD"
	EnvToken    = "OCISTORE_TOKEN"
)

const (
	// maxTokenResponse bounds what is read of a token service's answer.
	maxTokenResponse = 1 << 20
	// maxErrorBody bounds what is read of an error answer that is
	// rewritten for the guest.
	maxErrorBody = 64 << 10
	// rejectCooldown is how long refused credentials are not offered
	// again.
	rejectCooldown = 30 * time.Second
	// fetchFailCooldown is how long a token fetch that failed otherwise
	// (network, 5xx) is not made again: the requests waiting for it fail
	// with its error instead of each trying in turn.
	fetchFailCooldown = time.Second
	// minTokenAge is the age under which a token the registry rejects is
	// not replaced: a token service whose fresh tokens the registry
	// rejects is misconfigured, and fetching more would not help.
	minTokenAge = time.Second
	// maxRefreshMargin bounds how long before its expiry a token is
	// replaced (a quarter of its life for short-lived tokens).
	maxRefreshMargin = 30 * time.Second
	// defaultTokenLife is the life of a token whose answer has no
	// expires_in (the token specification's default).
	defaultTokenLife = 60 * time.Second
	// warnEvery bounds how often one kind of warning is logged.
	warnEvery = time.Minute

	clientID = "ocistore"
)

// Where credentials came from, for messages.
const (
	sourceConfig   = "the store's configuration"
	sourceEnv      = "$" + EnvUsername + " and $" + EnvPassword
	sourceEnvToken = "$" + EnvToken
	sourceDocker   = "Docker's config.json or credential helper"

	// noCredentials is kept short: the guest quotes at most 200 bytes of
	// a registry's error message.
	noCredentials = "no credentials were found: set username and password in the store's configuration or in " +
		sourceEnv + ", or run docker login"
)

// credentials are what the host authenticates with. They format and log
// without their secrets.
type credentials struct {
	source        string
	username      string
	password      string
	identityToken string // an OAuth2 refresh token for the token service
	registryToken string // a bearer token sent to the registry as is
}

func (c *credentials) anonymous() bool {
	return c == nil || (c.username == "" && c.identityToken == "" && c.registryToken == "")
}

// who names the credentials in messages: by username and source, never by
// value.
func (c *credentials) who() string {
	switch {
	case c.anonymous():
		return "anonymous access"
	case c.registryToken != "":
		return "the token from " + c.source
	case c.identityToken != "":
		return "the identity token from " + c.source
	}
	return fmt.Sprintf("the username %q and password from %s", c.username, c.source)
}

func (c credentials) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "{source:%s username:%q}", c.source, c.username)
}

func (c credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("source", c.source), slog.String("username", c.username))
}

// staticCredentials returns the credentials of the configuration, else of
// the environment, or nil when neither has any.
func staticCredentials(c *Config) (*credentials, error) {
	switch {
	case c.Token != "":
		return &credentials{source: sourceConfig, registryToken: c.Token}, nil
	case c.Username != "":
		return &credentials{source: sourceConfig, username: c.Username, password: c.Password}, nil
	}
	user, password, token := os.Getenv(EnvUsername), os.Getenv(EnvPassword), os.Getenv(EnvToken)
	switch {
	case token != "" && (user != "" || password != ""):
		return nil, fmt.Errorf("%w: both %s and %s are set in the environment: unset one", ErrInvalidConfig, sourceEnvToken, sourceEnv)
	case token != "":
		return &credentials{source: sourceEnvToken, registryToken: token}, nil
	case (user == "") != (password == ""):
		return nil, fmt.Errorf("%w: %s go together: set both or neither", ErrInvalidConfig, sourceEnv)
	case user != "":
		return &credentials{source: sourceEnv, username: user, password: password}, nil
	}
	return nil, nil
}

// keychainResource is what authn.DefaultKeychain looks credentials up for:
// the repository, then the registry.
type keychainResource struct{ registry, repository string }

func (r keychainResource) String() string      { return r.registry + "/" + r.repository }
func (r keychainResource) RegistryStr() string { return r.registry }

// keychainCredentials reads the credentials Docker's configuration holds for
// the registry, or nil if it holds none.
func keychainCredentials(ctx context.Context, registry, repository string) (*credentials, error) {
	switch strings.ToLower(registry) {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		// Docker Hub's credentials are filed under its old name.
		registry = "index.docker.io"
	}
	a, err := authn.Resolve(ctx, authn.DefaultKeychain, keychainResource{registry, repository})
	if err != nil {
		return nil, fmt.Errorf("reading the credentials for %s from %s: %v", registry, sourceDocker, err)
	}
	cfg, err := authn.Authorization(ctx, a)
	if err != nil {
		return nil, fmt.Errorf("reading the credentials for %s from %s: %v", registry, sourceDocker, err)
	}
	c := &credentials{
		source:        sourceDocker,
		username:      cfg.Username,
		password:      cfg.Password,
		identityToken: cfg.IdentityToken,
		registryToken: cfg.RegistryToken,
	}
	if c.username == "" && cfg.Auth != "" {
		if b, err := base64.StdEncoding.DecodeString(cfg.Auth); err == nil {
			c.username, c.password, _ = strings.Cut(string(b), ":")
		}
	}
	if c.anonymous() {
		return nil, nil
	}
	return c, nil
}

// actions is a set of actions on the store's repository.
type actions uint8

const (
	actionPull actions = 1 << iota
	actionPush
	actionDelete
)

func (a actions) String() string {
	var s []string
	for _, x := range []struct {
		a    actions
		name string
	}{{actionPull, "pull"}, {actionPush, "push"}, {actionDelete, "delete"}} {
		if a&x.a != 0 {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, ",")
}

// Authentication schemes a registry asked for.
const (
	schemeUnknown = ""
	schemeNone    = "none"
	schemeBasic   = "basic"
	schemeBearer  = "bearer"
)

// authTransport adds the store's credentials to the requests for its
// registry. One is shared by every instance of a store.
type authTransport struct {
	next     http.RoundTripper
	base     *url.URL // the registry: scheme and host
	repo     string
	log      *slog.Logger
	static   *credentials                                // from the configuration or the environment
	keychain func(context.Context) (*credentials, error) // read when the registry first asks, if static is nil
	now      func() time.Time

	credsMu   sync.Mutex // held while the keychain is read
	creds     *credentials
	credsErr  error
	credsRead bool

	mu        sync.Mutex
	scheme    string
	realm     *url.URL
	realmErr  error // the realm the registry named is refused
	service   string
	wanted    actions // what tokens are asked for
	token     string
	tokenActs actions // what the token was asked for
	obtained  time.Time
	refreshAt time.Time
	fetching  chan struct{} // closed when the fetch in progress ends
	failErr   error
	failUntil time.Time
	rejected  string // why the credentials were refused
	rejUntil  time.Time

	warnMu sync.Mutex
	warned map[string]time.Time

	// scrub holds every credential the transport has used or obtained,
	// and takes them out of what the registry says (scrub.go).
	scrub *scrubber
}

func newAuthTransport(next http.RoundTripper, base *url.URL, repo string, static *credentials, logger *slog.Logger) *authTransport {
	scrub := &scrubber{public: base.Host + "/" + repo + " " + protocolWords}
	t := &authTransport{
		next: next,
		base: base,
		repo: repo,
		// Its lines may quote what a registry said (the token service a
		// challenge names): scrubbed as the answers are.
		log:    slog.New(&scrubHandler{next: logger.Handler(), s: scrub}).With("plugin", "oci"),
		static: static,
		now:    time.Now,
		wanted: actionPull | actionPush,
		warned: map[string]time.Time{},
		scrub:  scrub,
	}
	t.scrub.addCredentials(static)
	if static == nil {
		t.keychain = func(ctx context.Context) (*credentials, error) {
			return keychainCredentials(ctx, base.Host, repo)
		}
	}
	return t
}

func (t *authTransport) isRegistry(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, t.base.Scheme) && strings.EqualFold(u.Hostname(), t.base.Hostname()) &&
		portOrDefault(u) == portOrDefault(t.base)
}

func portOrDefault(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "http") {
		return "80"
	}
	return "443"
}

// urlText names a URL in messages and logs, without its query.
func urlText(u *url.URL) string { return u.Scheme + "://" + u.Host + u.EscapedPath() }

// RoundTrip performs req, and scrubs what comes back of every credential
// the transport holds: this is the one place where what a registry says
// enters the host.
func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.roundTrip(req)
	return t.scrub.Response(resp, t.isPayload(req, resp)), t.scrub.Error(err)
}

// payloadPath is the path of a blob or a manifest: what the store keeps,
// verified against its digest.
var payloadPath = regexp.MustCompile(`^/v2/.+/(?:blobs/[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+|manifests/[^/]+)$`)

// isPayload tells whether resp's body is content the store verifies (a blob
// or a manifest, from the registry or a host it redirected to), to be
// passed on byte for byte, rather than a text from the registry.
func (t *authTransport) isPayload(req *http.Request, resp *http.Response) bool {
	if resp == nil || resp.StatusCode/100 != 2 || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		return false
	}
	return !t.isRegistry(req.URL) || payloadPath.MatchString(req.URL.Path)
}

func (t *authTransport) roundTrip(req *http.Request) (*http.Response, error) {
	if !t.isRegistry(req.URL) {
		// A redirect hop (blob storage): no credentials, ever, nor any
		// the guest may have set.
		if req.Header.Get("Authorization") != "" || req.Header.Get("Proxy-Authorization") != "" {
			req = req.Clone(req.Context())
			req.Header.Del("Authorization")
			req.Header.Del("Proxy-Authorization")
		}
		return t.next.RoundTrip(req)
	}
	ctx := req.Context()
	body := &retryBody{req: req}
	if !body.replayable() {
		t.learnScheme(ctx)
	}
	for attempt := 1; ; attempt++ {
		auth, failure, err := t.authorization(ctx, req)
		if err != nil || failure != nil {
			body.finish()
			return failure, err
		}
		r := req.Clone(ctx)
		r.Header.Del("Authorization")
		r.Header.Del("Proxy-Authorization")
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if !body.replayable() && strings.HasPrefix(auth, "Bearer ") && r.Header.Get("Expect") == "" {
			// Tokens expire: a registry that rejects one answers
			// before the body goes out, and the request can be made
			// again.
			r.Header.Set("Expect", "100-continue")
		}
		if r.Body, err = body.next(); err != nil {
			body.finish()
			return nil, err
		}
		resp, err := t.next.RoundTrip(r)
		if err != nil {
			body.finish()
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized {
			body.finish()
			return resp, nil
		}
		if attempt == 1 && t.challenged(ctx, resp, auth) && body.rewind() {
			drain(resp)
			continue
		}
		body.finish()
		return t.final401(resp, auth), nil
	}
}

// learnScheme asks the registry for its challenge before a request whose
// body cannot be sent twice, so that it goes out with credentials.
func (t *authTransport) learnScheme(ctx context.Context) {
	t.mu.Lock()
	known := t.scheme != schemeUnknown
	t.mu.Unlock()
	if known || (t.static != nil && t.static.registryToken != "") {
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base.String()+"/v2/", nil)
	if err != nil {
		return
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return // the request itself will tell
	}
	if resp.StatusCode == http.StatusUnauthorized {
		t.challenged(ctx, resp, "")
	} else if resp.StatusCode < 300 {
		t.mu.Lock()
		if t.scheme == schemeUnknown {
			t.scheme = schemeNone
		}
		t.mu.Unlock()
	}
	drain(resp)
}

// authorization is the Authorization header for a request to the registry,
// "" for none. failure is an answer to give the guest instead of making the
// request: the credentials were refused.
func (t *authTransport) authorization(ctx context.Context, req *http.Request) (string, *http.Response, error) {
	if t.static != nil && t.static.registryToken != "" {
		return "Bearer " + t.static.registryToken, nil, nil
	}
	t.mu.Lock()
	scheme := t.scheme
	t.mu.Unlock()
	if scheme != schemeBasic && scheme != schemeBearer {
		return "", nil, nil
	}
	c, err := t.credentials(ctx)
	switch {
	case err != nil && scheme == schemeBasic:
		return "", t.unauthorized(req, t.redact(err.Error())), nil
	case err == nil && c != nil && c.registryToken != "":
		// A registry token is sent as is, whatever the scheme.
		return "Bearer " + c.registryToken, nil, nil
	case scheme == schemeBearer:
		return t.bearer(ctx, req)
	case c != nil && c.username != "":
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.username+":"+c.password)), nil, nil
	}
	return "", nil, nil
}

// credentials returns the credentials to use, reading the keychain the
// first time.
func (t *authTransport) credentials(ctx context.Context) (*credentials, error) {
	if t.static != nil || t.keychain == nil {
		return t.static, nil
	}
	t.credsMu.Lock()
	defer t.credsMu.Unlock()
	if !t.credsRead {
		t.creds, t.credsErr = t.keychain(ctx)
		if ctx.Err() != nil && t.credsErr != nil {
			return nil, t.credsErr // cancelled: read again next time
		}
		t.credsRead = true
		t.scrub.addCredentials(t.creds)
		if t.credsErr == nil {
			t.log.Debug("credentials for the registry", "registry", t.base.Host, "credentials", t.creds.who())
		}
	}
	return t.creds, t.credsErr
}

// forgetKeychain makes the next request read the keychain again: the
// credentials it gave were refused, and may have been replaced since.
func (t *authTransport) forgetKeychain() {
	t.credsMu.Lock()
	t.credsRead = false
	t.credsMu.Unlock()
}

// bearer returns the Authorization header with a valid token, fetching one
// if need be; one request fetches while the others wait for it.
func (t *authTransport) bearer(ctx context.Context, req *http.Request) (string, *http.Response, error) {
	for {
		now := t.now()
		t.mu.Lock()
		if now.Before(t.rejUntil) {
			msg := t.rejected
			t.mu.Unlock()
			return "", t.unauthorized(req, msg), nil
		}
		if t.realmErr != nil {
			err := t.realmErr
			t.mu.Unlock()
			return "", nil, err
		}
		if t.token != "" && t.tokenActs&t.wanted == t.wanted && now.Before(t.refreshAt) {
			tok := t.token
			t.mu.Unlock()
			return "Bearer " + tok, nil, nil
		}
		if ch := t.fetching; ch != nil {
			t.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return "", nil, ctx.Err()
			}
		}
		if now.Before(t.failUntil) {
			err := t.failErr
			t.mu.Unlock()
			return "", nil, err
		}
		ch := make(chan struct{})
		t.fetching = ch
		realm, service, want := *t.realm, t.service, t.wanted
		t.mu.Unlock()

		c, err := t.credentials(ctx)
		var tok string
		var life time.Duration
		if err != nil {
			err = &rejectedError{msg: t.redact(err.Error())}
		} else {
			tok, life, err = t.fetchToken(ctx, &realm, service, want, c)
		}

		t.mu.Lock()
		t.fetching = nil
		close(ch)
		var rej *rejectedError
		switch {
		case err == nil:
			t.scrub.addToken(tok)
			margin := min(life/4, maxRefreshMargin)
			t.token, t.tokenActs, t.obtained, t.refreshAt = tok, want, now, now.Add(life-margin)
		case errors.As(err, &rej):
			t.token, t.rejected, t.rejUntil = "", rej.msg, t.now().Add(rejectCooldown)
		case ctx.Err() != nil:
			// This request gave up: the next one fetches.
		default:
			t.failErr, t.failUntil = err, t.now().Add(fetchFailCooldown)
		}
		t.mu.Unlock()

		switch {
		case err == nil:
			t.log.Debug("obtained a registry token", "registry", t.base.Host, "token_service", urlText(&realm),
				"scope", "repository:"+t.repo+":"+want.String(), "expires_in", life)
			return "Bearer " + tok, nil, nil
		case rej != nil:
			t.forgetKeychain()
			t.log.Warn("the registry's token service refused the credentials; not trying them again for a while",
				"registry", t.base.Host, "token_service", urlText(&realm), "error", rej.msg, "retry_after", rejectCooldown)
			return "", t.unauthorized(req, rej.msg), nil
		}
		return "", nil, err
	}
}

// rejectedError is a token service's refusal of the credentials.
type rejectedError struct{ msg string }

func (e *rejectedError) Error() string { return e.msg }

// tokenAnswer is a token service's answer (the distribution token
// specification, and OAuth2's for the POST flow).
type tokenAnswer struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

// fetchToken asks the token service for a token for want on the store's
// repository.
func (t *authTransport) fetchToken(ctx context.Context, realm *url.URL, service string, want actions, c *credentials) (string, time.Duration, error) {
	scope := "repository:" + t.repo + ":" + want.String()
	var req *http.Request
	var err error
	if c != nil && c.identityToken != "" {
		form := url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {c.identityToken},
			"client_id":     {clientID},
			"scope":         {scope},
		}
		if service != "" {
			form.Set("service", service)
		}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		u := *realm
		q := u.Query()
		if service != "" {
			q.Set("service", service)
		}
		q.Add("scope", scope)
		if c != nil && c.username != "" {
			q.Set("account", c.username)
		}
		u.RawQuery = q.Encode()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err == nil && c != nil && c.username != "" {
			req.SetBasicAuth(c.username, c.password)
		}
	}
	if err != nil {
		return "", 0, fmt.Errorf("cannot ask %s, the token service of registry %s, for a token: %v", urlText(realm), t.base.Host, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		var refused *session.RefusedError
		if errors.As(err, &refused) {
			return "", 0, refused
		}
		return "", 0, fmt.Errorf("cannot reach %s, the token service of registry %s: %v", urlText(realm), t.base.Host, t.redact(err.Error()))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	switch {
	case (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) && c.anonymous():
		return "", 0, &rejectedError{fmt.Sprintf("token service %s refused anonymous access: %s", urlText(realm), noCredentials)}
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", 0, &rejectedError{fmt.Sprintf("token service %s refused %s (%s)",
			urlText(realm), c.who(), t.redact(describeAnswer(resp.StatusCode, body)))}
	case resp.StatusCode != http.StatusOK:
		return "", 0, fmt.Errorf("%s, the token service of registry %s, answered %s: try again later",
			urlText(realm), t.base.Host, t.redact(describeAnswer(resp.StatusCode, body)))
	case err != nil:
		return "", 0, fmt.Errorf("reading the answer of %s, the token service of registry %s: %v", urlText(realm), t.base.Host, err)
	case len(body) > maxTokenResponse:
		return "", 0, fmt.Errorf("%s, the token service of registry %s, answered more than %d bytes: that is no token", urlText(realm), t.base.Host, maxTokenResponse)
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return "", 0, fmt.Errorf("%s, the token service of registry %s, answered something that is not JSON: is the realm right?", urlText(realm), t.base.Host)
	}
	tok := a.Token
	if tok == "" {
		tok = a.AccessToken
	}
	if tok == "" {
		return "", 0, fmt.Errorf("%s, the token service of registry %s, answered without a token", urlText(realm), t.base.Host)
	}
	life := defaultTokenLife
	if a.ExpiresIn > 0 {
		life = time.Duration(min(a.ExpiresIn, 1<<31)) * time.Second
	}
	return tok, life, nil
}

// challenged reads the challenge of a 401 the registry answered to a
// request sent with auth, and tells whether the request may succeed if made
// again.
func (t *authTransport) challenged(ctx context.Context, resp *http.Response, auth string) bool {
	var bearer, basic map[string]string
	for _, c := range parseChallenges(resp.Header.Values("WWW-Authenticate")) {
		switch {
		case c.scheme == "bearer" && bearer == nil:
			bearer = c.params
		case c.scheme == "basic" && basic == nil:
			basic = c.params
		}
	}
	switch {
	case bearer != nil:
		return t.bearerChallenge(ctx, bearer, auth)
	case basic != nil:
		t.mu.Lock()
		t.scheme = schemeBasic
		t.mu.Unlock()
		if auth != "" {
			return false // the credentials were refused
		}
		c, err := t.credentials(ctx)
		return err != nil || !c.anonymous()
	}
	return false
}

func (t *authTransport) bearerChallenge(ctx context.Context, params map[string]string, auth string) bool {
	realm, realmErr := t.checkRealm(params["realm"])
	want := t.scopeActions(params["scope"])
	c, _ := t.credentials(ctx)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scheme = schemeBearer
	if realmErr != nil {
		t.realm, t.realmErr = nil, realmErr
		return false
	}
	if t.realm == nil || *t.realm != *realm || t.service != params["service"] {
		t.realm, t.realmErr, t.service, t.token = realm, nil, params["service"], ""
	}
	grew := want&^t.wanted != 0
	t.wanted |= want
	sent := strings.TrimPrefix(auth, "Bearer ")
	switch {
	case auth == "":
		return true
	case !strings.HasPrefix(auth, "Bearer "):
		return true // basic credentials, before the registry said it wants tokens
	case c != nil && c.registryToken != "":
		return false // a token given as is cannot be renewed
	case sent != t.token:
		return true // renewed meanwhile
	case grew:
		t.token = ""
		return true
	case params["error"] == "insufficient_scope":
		return false // asked for, not granted
	case t.now().Sub(t.obtained) < minTokenAge:
		t.warn("fresh-token", "the registry rejected a token its token service had just issued: check the token service's configuration (issuer, service, signing certificate)",
			"registry", t.base.Host, "token_service", urlText(t.realm))
		return false
	}
	t.token = "" // expired or revoked
	return true
}

// checkRealm checks the token service a registry named: https, or plain
// HTTP for a plain-HTTP registry (credentials are sent there).
func (t *authTransport) checkRealm(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || (u.Scheme != "https" && u.Scheme != "http") {
		err := fmt.Errorf("registry %s named %q as its token service, which is not an http(s) URL: the registry's auth configuration is wrong", t.base.Host, raw)
		t.warn("realm", err.Error())
		return nil, err
	}
	if u.Scheme == "http" && t.base.Scheme != "http" {
		err := &session.RefusedError{Dest: urlText(u), Registry: t.base.String(),
			Reason: "the registry named a plain-HTTP token service; credentials go to https token services only"}
		t.warn("realm", "refused the registry's token service", "registry", t.base.Host, "reason", err.Error())
		return nil, err
	}
	return u, nil
}

// scopeActions returns the actions a challenge's scope asks for on the
// store's repository; scopes on anything else are ignored.
func (t *authTransport) scopeActions(scope string) actions {
	var a actions
	for _, s := range strings.Fields(scope) {
		typ, rest, ok := strings.Cut(s, ":")
		i := strings.LastIndexByte(rest, ':')
		if !ok || i < 0 || (typ != "repository" && !strings.HasPrefix(typ, "repository(")) {
			continue
		}
		if rest[:i] != t.repo {
			t.warn("scope", "ignored a challenge for another repository than the store's", "registry", t.base.Host, "scope", s)
			continue
		}
		for _, act := range strings.Split(rest[i+1:], ",") {
			switch act {
			case "pull":
				a |= actionPull
			case "push":
				a |= actionPush
			case "delete":
				a |= actionDelete
			}
		}
	}
	return a
}

// final401 is the 401 the guest gets, with a message that says what was
// refused when the host knows it.
func (t *authTransport) final401(resp *http.Response, auth string) *http.Response {
	params := map[string]string{}
	for _, c := range parseChallenges(resp.Header.Values("WWW-Authenticate")) {
		if c.scheme == "bearer" {
			params = c.params
			break
		}
	}
	c, err := t.credentials(resp.Request.Context())
	switch {
	case err != nil:
		return rewrite(resp, http.StatusUnauthorized, "UNAUTHORIZED", t.redact(err.Error()))
	case strings.HasPrefix(auth, "Bearer ") && params["error"] == "insufficient_scope":
		t.mu.Lock()
		want := t.wanted
		t.mu.Unlock()
		return rewrite(resp, http.StatusForbidden, "DENIED", fmt.Sprintf("the token service did not grant %s on repository %s to %s",
			want, t.repo, c.who()))
	case strings.HasPrefix(auth, "Basic "):
		t.warn("basic", "the registry refused the credentials", "registry", t.base.Host, "credentials", c.who())
		return rewrite(resp, http.StatusUnauthorized, "UNAUTHORIZED", c.who()+" were refused")
	case auth == "" && c.anonymous():
		return rewrite(resp, http.StatusUnauthorized, "UNAUTHORIZED", "the registry requires credentials; "+noCredentials)
	case strings.HasPrefix(auth, "Bearer ") && c != nil && c.registryToken != "":
		return rewrite(resp, http.StatusUnauthorized, "UNAUTHORIZED", c.who()+" was refused")
	case strings.HasPrefix(auth, "Bearer "):
		return rewrite(resp, http.StatusUnauthorized, "UNAUTHORIZED", "the registry rejected the token obtained with "+c.who())
	}
	return resp
}

// unauthorized is a 401 made by the host, as the registry would answer it.
func (t *authTransport) unauthorized(req *http.Request, msg string) *http.Response {
	return rewrite(&http.Response{
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{},
		Body:    http.NoBody,
		Request: req,
	}, http.StatusUnauthorized, "UNAUTHORIZED", msg)
}

// rewrite replaces the status and the body of resp with an OCI error
// document holding msg.
func rewrite(resp *http.Response, status int, code, msg string) *http.Response {
	drain(resp)
	doc, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	out := *resp
	out.Header = resp.Header.Clone()
	out.Header.Del("Content-Encoding")
	out.Header.Set("Content-Type", "application/json")
	out.Header.Set("Content-Length", strconv.Itoa(len(doc)))
	out.StatusCode, out.Status = status, fmt.Sprintf("%d %s", status, http.StatusText(status))
	out.Body, out.ContentLength = io.NopCloser(strings.NewReader(string(doc))), int64(len(doc))
	out.Uncompressed = false
	return &out
}

// drain reads a little of a body that is not used, so that the connection
// can be reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}

// describeAnswer quotes an error answer of a token service: its status and
// the message of its JSON error, if it has one.
func describeAnswer(status int, body []byte) string {
	s := fmt.Sprintf("%d %s", status, http.StatusText(status))
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
		Details     string `json:"details"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return s
	}
	var msgs []string
	for _, e := range doc.Errors {
		msgs = append(msgs, strings.TrimSpace(e.Code+" "+e.Message))
	}
	for _, m := range []string{doc.Error, doc.Description, doc.Details} {
		if m != "" {
			msgs = append(msgs, m)
		}
	}
	if m := strings.Join(msgs, "; "); m != "" {
		if len(m) > 200 {
			m = m[:200] + "…"
		}
		s += ": " + m
	}
	return s
}

// redact removes the secrets from a message built from what a server said:
// a server that echoes them must not get them into logs or errors.
func (t *authTransport) redact(s string) string { return t.scrub.String(s) }

// warn logs a warning of kind key, at most once every warnEvery. It may be
// called with t.mu held.
func (t *authTransport) warn(key, msg string, args ...any) {
	t.warnMu.Lock()
	last, ok := t.warned[key]
	now := t.now()
	if ok && now.Sub(last) < warnEvery {
		t.warnMu.Unlock()
		return
	}
	t.warned[key] = now
	t.warnMu.Unlock()
	t.log.Warn(msg, args...)
}

// retryBody hands out the body of each attempt of a request: the same one
// again when it has none or has GetBody, else the original behind a gate
// that tells whether the attempt read any of it.
type retryBody struct {
	req  *http.Request
	gate *gate
	used bool
}

func (b *retryBody) hasBody() bool { return b.req.Body != nil && b.req.Body != http.NoBody }

func (b *retryBody) replayable() bool { return !b.hasBody() || b.req.GetBody != nil }

func (b *retryBody) next() (io.ReadCloser, error) {
	switch {
	case !b.hasBody():
		return b.req.Body, nil
	case b.req.GetBody != nil && b.used:
		return b.req.GetBody()
	case b.req.GetBody != nil:
		b.used = true
		return b.req.Body, nil
	}
	b.gate = &gate{rc: b.req.Body}
	return b.gate, nil
}

// rewind tells whether the body can be sent again: a gated body only if the
// attempt read none of it, which the gate then guarantees it never will.
func (b *retryBody) rewind() bool { return b.gate == nil || b.gate.stop() == 0 }

// finish is called once the last attempt is made, or when none will be: the
// original body is closed, by the last attempt's gate if there is one.
func (b *retryBody) finish() {
	switch {
	case b.gate != nil:
		b.gate.finish()
	case b.hasBody() && !b.used:
		b.req.Body.Close()
	}
}

var errBodyReplaced = errors.New("the request is being sent again: this attempt's body is closed")

// gate reads a request body for one attempt, counting what it reads. Once
// stopped it reads no more, so that an attempt the transport goes on
// writing in the background cannot take bytes from the next one. The
// original body is closed once, by the last attempt. Close never waits for
// a read in progress.
type gate struct {
	mu      sync.Mutex // held by reads
	rc      io.ReadCloser
	n       int64
	stopped bool

	closeMu sync.Mutex
	closed  bool // the transport closed this attempt's body
	final   bool // this attempt is the last
	done    bool // rc is closed
}

func (g *gate) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return 0, errBodyReplaced
	}
	n, err := g.rc.Read(p)
	g.n += int64(n)
	return n, err
}

func (g *gate) Close() error {
	g.closeMu.Lock()
	g.closed = true
	closeNow := g.final && !g.done
	g.done = g.done || closeNow
	g.closeMu.Unlock()
	if closeNow {
		return g.rc.Close()
	}
	return nil
}

// stop ends the attempt's reads, waiting for one in progress, and returns
// how many bytes it read.
func (g *gate) stop() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	return g.n
}

func (g *gate) finish() {
	g.closeMu.Lock()
	g.final = true
	closeNow := g.closed && !g.done
	g.done = g.done || closeNow
	g.closeMu.Unlock()
	if closeNow {
		g.rc.Close()
	}
}

// A challenge of a WWW-Authenticate header (RFC 9110, section 11.6.1):
// a scheme, lower-cased, and its parameters, with lower-cased names.
type challenge struct {
	scheme string
	params map[string]string
}

// parseChallenges parses the values of WWW-Authenticate headers. It is
// lenient: what it cannot parse ends the value it is in.
func parseChallenges(values []string) []challenge {
	var out []challenge
	for _, v := range values {
		s := v
		for {
			s = strings.TrimLeft(s, " \t,")
			scheme, rest := cutToken(s)
			if scheme == "" {
				break
			}
			c := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
			s = rest
			for {
				s = strings.TrimLeft(s, " \t")
				name, rest := cutToken(s)
				rest = strings.TrimLeft(rest, " \t")
				if name == "" || !strings.HasPrefix(rest, "=") {
					break // a token68, or the next challenge's scheme
				}
				rest = strings.TrimLeft(rest[1:], " \t")
				var value string
				var ok bool
				if strings.HasPrefix(rest, `"`) {
					value, rest, ok = cutQuoted(rest)
				} else {
					value, rest = cutToken(rest)
					ok = true
				}
				if !ok {
					s = ""
					break
				}
				c.params[strings.ToLower(name)] = value
				s = strings.TrimLeft(rest, " \t")
				if !strings.HasPrefix(s, ",") {
					break
				}
				s = s[1:]
			}
			out = append(out, c)
		}
	}
	return out
}

// cutToken cuts an HTTP token off the start of s.
func cutToken(s string) (string, string) {
	i := strings.IndexFunc(s, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r)
	})
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// cutQuoted cuts a quoted string off the start of s, which starts with a
// double quote.
func cutQuoted(s string) (string, string, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '"':
			return b.String(), s[i+1:], true
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", false
}
