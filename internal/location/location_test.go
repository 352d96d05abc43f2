package location

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		location, prefix string
		registry, repo   string
	}{
		{"oci://registry.example.com/team/backups", "", "registry.example.com", "team/backups"},
		{"oci://127.0.0.1:5000/backups", "", "127.0.0.1:5000", "backups"},
		{"oci://localhost:5000/a/b/c", "", "localhost:5000", "a/b/c"},
		{"oci://[::1]:5000/backups", "", "[::1]:5000", "backups"},
		{"oci://[2001:db8::1]/backups", "", "[2001:db8::1]", "backups"},
		{"OCI://Registry.Example.COM/x", "", "registry.example.com", "x"},
		{"oci://reg/team/backups/", "", "reg", "team/backups"},
		{"oci://reg/backups", "plakar", "reg", "plakar/backups"},
		{"oci://reg/backups", "/org/plakar/", "reg", "org/plakar/backups"},
		{"oci://reg", "team/backups", "reg", "team/backups"},
		{"oci://reg/", "team", "reg", "team"},
		{"oci://reg/a.b_c__d---e", "", "reg", "a.b_c__d---e"},
		{"oci://reg/0/9z", "", "reg", "0/9z"},
		{"oci://my-reg.io:65535/x", "", "my-reg.io:65535", "x"},
		{"oci://reg/" + strings.Repeat("a", 251), "", "reg", strings.Repeat("a", 251)},
	}
	for _, tt := range tests {
		l, err := Parse(tt.location, tt.prefix)
		if err != nil {
			t.Errorf("Parse(%q, %q): %v", tt.location, tt.prefix, err)
			continue
		}
		if l.Registry != tt.registry || l.Repository != tt.repo {
			t.Errorf("Parse(%q, %q) = %+v, want registry %q repository %q", tt.location, tt.prefix, l, tt.registry, tt.repo)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		location, prefix string
		want             []string // substrings of the message
	}{
		{"", "", []string{`location ""`, "empty", "oci://"}},
		{"http://x/y", "", []string{`location "http://x/y": the scheme must be oci://, as in oci://registry.example.com/team/backups`}},
		{"reg/y", "", []string{"scheme must be oci://"}},
		{"oci:///team", "", []string{"registry host is missing"}},
		{"oci://reg", "", []string{"repository path is required"}},
		{"oci://reg/", "", []string{"repository path is required"}},
		{"oci://reg/My_Repo", "", []string{`location "oci://reg/My_Repo": repository "My_Repo" must be lowercase`, `"my_repo"`}},
		{"oci://reg/team/Backups", "", []string{`repository "team/Backups" must be lowercase: use "team/backups"`}},
		{"oci://reg/x", "Team", []string{`repository_prefix "Team" must be lowercase`}},
		// A hint is a path that would be accepted: nothing else is wrong.
		{"oci://reg/Team//Backups", "", []string{"empty part"}},
		{"oci://reg/Team/My Backups", "", []string{`' '`, "not allowed"}},
		{"oci://reg/a..b", "", []string{`repository "a..b"`, `".."`}},
		{"oci://reg/a___b", "", []string{`"___"`}},
		{"oci://reg/a._b", "", []string{`"._"`}},
		{"oci://reg/-a", "", []string{"start and end with a letter or digit"}},
		{"oci://reg/a-", "", []string{"start and end"}},
		{"oci://reg/a//b", "", []string{"empty part"}},
		{"oci://reg/a b", "", []string{`' '`, "not allowed"}},
		{"oci://reg/a/b?x=1", "", []string{"no query"}},
		{"oci://reg/a#frag", "", []string{"no query or fragment"}},
		{"oci://user:pw@reg/a", "", []string{"credentials do not belong", "username and password"}},
		{"oci://reg:0/a", "", []string{`port "0"`, "1 to 65535"}},
		{"oci://reg:65536/a", "", []string{`port "65536"`}},
		{"oci://reg:/a", "", []string{`port ""`}},
		{"oci://reg:http/a", "", []string{`port "http"`}},
		{"oci://::1/a", "", []string{"must be in brackets"}},
		{"oci://[::1/a", "", []string{"closing bracket"}},
		{"oci://[zz]/a", "", []string{"not an IPv6 address"}},
		{"oci://[::1]x/a", "", []string{`"x" follows the IPv6 address "[::1]"`}},
		{"oci://re_g/a", "", []string{`host "re_g"`}},
		{"oci://-reg/a", "", []string{"not a valid host name"}},
		{"oci://reg./a", "", []string{"not a valid host name"}},
		{"oci://reg/" + strings.Repeat("a", 252), "", []string{"256 characters long", "255"}},
		{"oci://reg/a", strings.Repeat("b", 250), []string{"characters long"}},
	}
	for _, tt := range tests {
		_, err := Parse(tt.location, tt.prefix)
		if err == nil {
			t.Errorf("Parse(%q, %q): no error", tt.location, tt.prefix)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q, %q): %q lacks %q", tt.location, tt.prefix, err, w)
			}
		}
	}
}

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		location string
		want     bool
	}{
		{"oci://localhost/x", true},
		{"oci://localhost:5000/x", true},
		{"oci://registry.localhost:5000/x", true},
		{"oci://127.0.0.1:5000/x", true},
		{"oci://127.1.2.3/x", true},
		{"oci://[::1]:5000/x", true},
		{"oci://[::ffff:127.0.0.1]/x", true},
		{"oci://10.0.0.1/x", false},
		{"oci://registry.example.com/x", false},
		{"oci://localhost.example.com/x", false},
		{"oci://[2001:db8::1]/x", false},
	}
	for _, tt := range tests {
		l, err := Parse(tt.location, "")
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.location, err)
		}
		if got := l.IsLoopback(); got != tt.want {
			t.Errorf("%q.IsLoopback() = %v, want %v", tt.location, got, tt.want)
		}
	}
}

func TestString(t *testing.T) {
	l, err := Parse("oci://Reg:5000/b", "a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.String(), "oci://reg:5000/a/b"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := l.Host(); got != "reg" {
		t.Errorf("Host() = %q", got)
	}
}
