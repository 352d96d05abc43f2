package ocistore

import (
	"errors"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/internal/location"
)

func TestHTTPError(t *testing.T) {
	loc := location.Location{Registry: "127.0.0.1:5000", Repository: "team/backups"}
	body := func(code, msg string) string {
		return `{"errors":[{"code":"` + code + `","message":"` + msg + `","detail":null}]}`
	}
	tests := []struct {
		status int
		body   string
		code   abi.ErrorCode
		want   []string
	}{
		{401, body("UNAUTHORIZED", "authentication required"), abi.ErrPermissionDenied,
			[]string{"put x: registry 127.0.0.1:5000 refused access to repository team/backups (401 UNAUTHORIZED: authentication required): check username and password"}},
		{403, "", abi.ErrPermissionDenied, []string{"(403 Forbidden)", "may read and write"}},
		{400, body("DENIED", "no"), abi.ErrPermissionDenied, []string{"400 DENIED: no"}},
		{404, body("MANIFEST_UNKNOWN", "manifest unknown"), abi.ErrNotFound, []string{"oci://127.0.0.1:5000/team/backups", "404 MANIFEST_UNKNOWN"}},
		{404, "", abi.ErrNotFound, []string{"404 Not Found"}},
		{405, body("UNSUPPORTED", "The operation is unsupported."), abi.ErrUnsupported, []string{"does not support", "405 UNSUPPORTED"}},
		{405, "", abi.ErrUnsupported, []string{"405 Method Not Allowed"}},
		{400, body("UNSUPPORTED", "x"), abi.ErrUnsupported, nil},
		{416, body("BLOB_UNKNOWN", "range"), abi.ErrRangeNotSatisfiable, []string{"416 BLOB_UNKNOWN"}},
		{408, "", abi.ErrTransient, []string{"try again later"}},
		{429, body("TOOMANYREQUESTS", "slow down"), abi.ErrTransient, []string{"429 TOOMANYREQUESTS: slow down"}},
		{503, "<html>down</html>", abi.ErrTransient, []string{"503 Service Unavailable"}},
		{500, body("UNKNOWN", "boom"), abi.ErrTransient, []string{"500 UNKNOWN: boom"}},
		{400, body("DIGEST_INVALID", "bad"), abi.ErrOther, []string{"answered 400 DIGEST_INVALID: bad"}},
		{409, "", abi.ErrOther, []string{"409 Conflict"}},
		{418, "", abi.ErrOther, []string{"answered 418"}},
		{400, `{"errors":[{"code":"A","message":"one"},{"code":"B"}]}`, abi.ErrOther, []string{"400 A: one; B"}},
		// A registry whose disk is full says so in the detail, behind a
		// generic message (distribution's UNKNOWN).
		{500, `{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"write /var/lib/registry/x: no space left on device"}]}`, abi.ErrTransient,
			[]string{"registry 127.0.0.1:5000 failed (500 UNKNOWN: unknown error (write /var/lib/registry/x: no space left on device)): try again once that is fixed"}},
		{400, `{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{"reason":"bad layer"}}]}`, abi.ErrOther,
			[]string{`400 MANIFEST_INVALID: manifest invalid ({"reason":"bad layer"})`}},
		{500, `{"errors":[{"code":"UNKNOWN","message":"boom","detail":"boom"}]}`, abi.ErrTransient, []string{"(500 UNKNOWN: boom): try again later"}},
		// Plain HTTP to an HTTPS port: Go's net/http, then nginx.
		{400, "Client sent an HTTP request to an HTTPS server.\n", abi.ErrInvalidConfig,
			[]string{"registry 127.0.0.1:5000 speaks HTTPS, and was reached with plain HTTP", "set use_tls=true, and ca_file="}},
		{400, "<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head></html>", abi.ErrInvalidConfig, []string{"speaks HTTPS", "use_tls=true"}},
	}
	for _, tt := range tests {
		e := httpError(loc, "put x", tt.status, []byte(tt.body))
		if e.Code != tt.code {
			t.Errorf("%d %s: code %v, want %v (%s)", tt.status, tt.body, e.Code, tt.code, e.Message)
		}
		if tt.code == abi.ErrTransient && int(e.Status) != tt.status {
			t.Errorf("%d: Status %d", tt.status, e.Status)
		}
		if !strings.HasPrefix(e.Message, "put x: ") {
			t.Errorf("%d: message %q lacks the action", tt.status, e.Message)
		}
		for _, w := range tt.want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("%d %s: %q lacks %q", tt.status, tt.body, e.Message, w)
			}
		}
	}
}

func TestNetworkError(t *testing.T) {
	e := networkError("get x", errors.New("cannot reach registry reg:5000: connection refused"))
	if e.Code != abi.ErrTransient || e.Status != 0 || e.Message != "cannot reach registry reg:5000: connection refused (get x)" {
		t.Errorf("networkError = %+v, want the host's cause first, then the action", e)
	}
}
