package ocistore

import (
	"net/url"
	"strings"
)

// nextLink returns the target of the first link with relation "next" in
// the values of a response's Link headers (RFC 8288), or "". Registries
// differ: quoted or bare rel, several links in one header or several
// headers, extra parameters, commas inside quoted values.
func nextLink(values []string) string {
	for _, v := range values {
		rest := v
		for {
			lt := strings.IndexByte(rest, '<')
			if lt < 0 {
				break
			}
			gt := strings.IndexByte(rest[lt:], '>')
			if gt < 0 {
				break
			}
			target := strings.TrimSpace(rest[lt+1 : lt+gt])
			params, after := cutLinkParams(rest[lt+gt+1:])
			if target != "" && hasRel(params, "next") {
				return target
			}
			rest = after
		}
	}
	return ""
}

// cutLinkParams splits s at the first comma outside quotes: the parameters
// of the current link, and what follows (the next links).
func cutLinkParams(s string) (params, rest string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

// hasRel tells whether params (";rel=next; title=...") have a rel
// parameter listing rel among its space-separated relation types.
func hasRel(params, rel string) bool {
	for _, p := range splitOutsideQuotes(params, ';') {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "rel") {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		for _, r := range strings.Fields(v) {
			if strings.EqualFold(r, rel) {
				return true
			}
		}
	}
	return false
}

func splitOutsideQuotes(s string, sep byte) []string {
	var parts []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	if start <= len(s) {
		parts = append(parts, s[start:])
	}
	return parts
}

// resolveLink makes a link target usable as a request URL: absolute URLs
// and absolute paths go to the host unchanged (it checks they stay on the
// registry); a relative reference is resolved against the request that
// returned it.
func resolveLink(base, target string) string {
	if strings.HasPrefix(target, "/") || strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") {
		return target
	}
	b, err := url.Parse(base)
	if err != nil {
		return target
	}
	t, err := url.Parse(target)
	if err != nil {
		return target
	}
	return b.ResolveReference(t).String()
}
