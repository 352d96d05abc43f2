package ocistore

import "testing"

func TestNextLink(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   string
	}{
		{"none", nil, ""},
		{"empty", []string{""}, ""},
		{"distribution", []string{`</v2/team/backups/tags/list?last=packfile-ab&n=1000>; rel="next"`}, "/v2/team/backups/tags/list?last=packfile-ab&n=1000"},
		{"bare rel", []string{`</v2/r/tags/list?n=2&last=b>; rel=next`}, "/v2/r/tags/list?n=2&last=b"},
		{"no space", []string{`</next>;rel="next"`}, "/next"},
		{"upper case", []string{`</next>; REL="Next"`}, "/next"},
		{"absolute", []string{`<https://reg.example.com/v2/r/tags/list?n=2&last=b>; rel="next"`}, "https://reg.example.com/v2/r/tags/list?n=2&last=b"},
		{"relative", []string{`<list?n=2&last=b>; rel="next"`}, "list?n=2&last=b"},
		{"prev then next", []string{`</prev>; rel="prev", </next>; rel="next"`}, "/next"},
		{"next first", []string{`</next>; rel="next", </prev>; rel="prev"`}, "/next"},
		{"several headers", []string{`</prev>; rel="prev"`, `</next>; rel="next"`}, "/next"},
		{"several rels", []string{`</both>; rel="last next"`}, "/both"},
		{"other params", []string{`</next>; type="application/json"; rel="next"; title="page 2"`}, "/next"},
		{"comma in quotes", []string{`</a>; title="a, </b>; rel=next"; rel="prev", </c>; rel="next"`}, "/c"},
		{"escaped quote", []string{`</a>; title="say \"hi\", </b>"; rel="prev", </c>; rel="next"`}, "/c"},
		{"not next", []string{`</a>; rel="nextpage"`}, ""},
		{"no rel", []string{`</a>; title="next"`}, ""},
		{"empty target", []string{`<>; rel="next", </b>; rel="next"`}, "/b"},
		{"unterminated", []string{`</a; rel="next"`}, ""},
		{"rel with spaces", []string{`</a> ; rel = "next"`}, "/a"},
	}
	for _, tt := range tests {
		if got := nextLink(tt.values); got != tt.want {
			t.Errorf("%s: nextLink(%q) = %q, want %q", tt.name, tt.values, got, tt.want)
		}
	}
}

func TestResolveLink(t *testing.T) {
	base := "/v2/team/backups/tags/list?n=2&last=packfile-"
	tests := []struct{ target, want string }{
		{"/v2/team/backups/tags/list?n=2&last=b", "/v2/team/backups/tags/list?n=2&last=b"},
		{"https://reg.example.com/v2/x?last=b", "https://reg.example.com/v2/x?last=b"},
		{"http://127.0.0.1:5000/v2/x", "http://127.0.0.1:5000/v2/x"},
		{"list?n=2&last=b", "/v2/team/backups/tags/list?n=2&last=b"},
		{"?n=2&last=c", "/v2/team/backups/tags/list?n=2&last=c"},
		{"../tags/list?last=d", "/v2/team/backups/tags/list?last=d"},
	}
	for _, tt := range tests {
		if got := resolveLink(base, tt.target); got != tt.want {
			t.Errorf("resolveLink(%q, %q) = %q, want %q", base, tt.target, got, tt.want)
		}
	}
}
