package ocistore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/internal/location"
)

// maxErrorBody bounds what is read of an error answer: enough for any
// registry's JSON errors, not enough for a proxy's HTML page to matter.
const maxErrorBody = 64 << 10

// registryError is one entry of the OCI distribution error body,
// {"errors":[{"code":...,"message":...,"detail":...}]}. The message is
// often generic ("unknown error"); the detail, any JSON, is where a
// registry says why ("no space left on device").
type registryError struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Detail  json.RawMessage `json:"detail"`
}

// detail is the entry's detail as text: a string as it is, anything else
// as compact JSON; empty when absent, null, or the message again.
func (e registryError) detail() string {
	var s string
	if json.Unmarshal(e.Detail, &s) != nil {
		s = string(e.Detail)
		if s == "null" || s == "{}" || s == "[]" || s == `""` {
			s = ""
		}
	}
	s = strings.Join(strings.Fields(s), " ")
	if strings.EqualFold(s, strings.TrimSpace(e.Message)) {
		return ""
	}
	return s
}

// parseRegistryErrors returns the errors of body, or nil if it is not an
// OCI error document.
func parseRegistryErrors(body []byte) []registryError {
	var doc struct {
		Errors []registryError `json:"errors"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return nil
	}
	return doc.Errors
}

func hasCode(errs []registryError, codes ...string) bool {
	for _, e := range errs {
		for _, c := range codes {
			if strings.EqualFold(e.Code, c) {
				return true
			}
		}
	}
	return false
}

// hasDetail tells whether a registry said more than its error's message.
func hasDetail(errs []registryError) bool {
	for _, e := range errs {
		if e.detail() != "" {
			return true
		}
	}
	return false
}

// statusText replaces net/http's, which wasip1 builds cannot import.
var statusText = map[int]string{
	400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
	405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
	413: "Payload Too Large", 416: "Range Not Satisfiable", 429: "Too Many Requests",
	500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
	504: "Gateway Timeout",
}

// describeStatus is how an answer is quoted in messages:
// "401 UNAUTHORIZED: authentication required", or "502 Bad Gateway" when
// the body carries no OCI error.
func describeStatus(status int, errs []registryError) string {
	s := strconv.Itoa(status)
	if len(errs) == 0 {
		if t := statusText[status]; t != "" {
			s += " " + t
		}
		return s
	}
	for i, e := range errs {
		if i > 0 {
			s += ";"
		}
		if e.Code != "" {
			s += " " + e.Code
		}
		if msg := strings.TrimSpace(e.Message); msg != "" {
			s += ": " + truncate(msg, 200)
		}
		if d := e.detail(); d != "" {
			s += " (" + truncate(d, 200) + ")"
		}
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// httpError maps a registry's error answer to the contract's errors. It is
// the one place statuses become error codes; callers that expect a status
// (a 404 meaning "no such object") handle it before calling.
func httpError(loc location.Location, action string, status int, body []byte) *abi.Error {
	errs := parseRegistryErrors(body)
	answer := describeStatus(status, errs)
	e := func(code abi.ErrorCode, format string, args ...any) *abi.Error {
		return &abi.Error{Code: code, Message: action + ": " + fmt.Sprintf(format, args...)}
	}
	switch {
	case status == 401:
		return e(abi.ErrPermissionDenied, "registry %s refused access to repository %s (%s): check username and password",
			loc.Registry, loc.Repository, answer)
	case status == 403 || hasCode(errs, "DENIED", "UNAUTHORIZED"):
		return e(abi.ErrPermissionDenied, "registry %s refused access to repository %s (%s): check that these credentials may read and write it",
			loc.Registry, loc.Repository, answer)
	case status == 405 || hasCode(errs, "UNSUPPORTED"):
		return e(abi.ErrUnsupported, "registry %s does not support this request (%s)", loc.Registry, answer)
	case status == 416:
		return e(abi.ErrRangeNotSatisfiable, "the range lies outside the object (%s)", answer)
	case status == 404:
		return e(abi.ErrNotFound, "not found in %s (%s)", loc, answer)
	case status == 400 && plainToHTTPS(body):
		return e(abi.ErrInvalidConfig, "registry %s speaks HTTPS, and was reached with plain HTTP (the default for a loopback registry): set use_tls=true, and ca_file=<PEM file of its CA> if a private CA signs its certificate",
			loc.Registry)
	case status >= 500 && hasDetail(errs):
		// The registry says why (a full disk): not a passing overload.
		err := e(abi.ErrTransient, "registry %s failed (%s): try again once that is fixed", loc.Registry, answer)
		err.Status = uint16(status)
		return err
	case status == 408 || status == 429 || status >= 500 || hasCode(errs, "TOOMANYREQUESTS"):
		err := e(abi.ErrTransient, "registry %s is unavailable or overloaded (%s): try again later", loc.Registry, answer)
		err.Status = uint16(status)
		return err
	default:
		return e(abi.ErrOther, "registry %s answered %s", loc.Registry, answer)
	}
}

// plainToHTTPS tells whether an answer's body says that the request was
// plain HTTP sent to an HTTPS port: Go's net/http (distribution, zot,
// olareg) and nginx (in front of Harbor, GitLab, Quay) answer it 400.
func plainToHTTPS(body []byte) bool {
	return bytes.Contains(body, []byte("HTTP request to an HTTPS server")) ||
		bytes.Contains(body, []byte("plain HTTP request was sent to HTTPS port"))
}

// networkError is a round trip that got no answer. The host's message
// already says why, which host (the registry, or one it redirected to)
// and what to do (DNS, TLS, refused connection, broken connection,
// allow-list, a failing upload source): it is kept whole and comes first,
// the action after it, so that a user reads the cause first.
func networkError(action string, err error) *abi.Error {
	if strings.Contains(err.Error(), abi.RefusedMarker) {
		return &abi.Error{Code: abi.ErrPermissionDenied, Message: fmt.Sprintf("%s: %v", action, err)}
	}
	return &abi.Error{Code: abi.ErrTransient, Message: fmt.Sprintf("%v (%s)", err, action)}
}

// codeOf returns the contract's code of err, or ErrOther.
func codeOf(err error) abi.ErrorCode {
	if e, ok := err.(*abi.Error); ok {
		return e.Code
	}
	return abi.ErrOther
}

func errorf(code abi.ErrorCode, format string, args ...any) error {
	return abi.Errorf(code, format, args...)
}
