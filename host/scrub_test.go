package host

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestScrubReader scrubs bodies read in pieces of every size, with secrets
// across the pieces' boundaries, overlapping and at both ends.
func TestScrubReader(t *testing.T) {
	s := &scrubber{}
	s.addCredentials(&credentials{username: "me", password: "pa55-word"})
	s.addToken("tok-tok-tok")
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"nothing here", "nothing here"},
		{"pa55-word", redacted},
		{"xpa55-wordx", "x" + redacted + "x"},
		{"pa55-pa55-word", "pa55-" + redacted},
		{"me:pa55-word and bWU6cGE1NS13b3Jk", redacted + " and " + redacted},
		{"pa55%2Dword? tok-tok-tok-tok", "pa55%2Dword? " + redacted + "-tok"},
		{`{"message":"you sent pa55-word"}`, `{"message":"you sent ` + redacted + `"}`},
		{strings.Repeat("a", 70_000) + "pa55-word" + strings.Repeat("b", 10), strings.Repeat("a", 70_000) + redacted + strings.Repeat("b", 10)},
	} {
		for _, wrap := range []func(io.Reader) io.Reader{
			func(r io.Reader) io.Reader { return r },
			iotest.OneByteReader,
			iotest.HalfReader,
			iotest.DataErrReader,
		} {
			r := &scrubReader{rc: io.NopCloser(wrap(strings.NewReader(c.in))), r: s.replace, forms: s.forms, keep: s.maxLen - 1}
			got, err := io.ReadAll(iotest.OneByteReader(r))
			if err != nil || string(got) != c.want {
				t.Errorf("scrubbing %.40q: %.60q, %v; want %.60q", c.in, got, err, c.want)
			}
		}
	}

	// A password that is the repository's name is public already: hiding
	// it would break the upload locations that hold it.
	weak := &scrubber{public: "registry.example.com/team/backups " + protocolWords}
	weak.addCredentials(&credentials{username: "me", password: "backups"})
	loc := "/v2/team/backups/blobs/uploads/0e6c?_state=x"
	if got := weak.String(loc); got != loc {
		t.Errorf("a weak password scrubbed from %q: %q", loc, got)
	}
	if got := weak.String("me:backups"); got != redacted {
		t.Errorf("user:password with a weak password: %q, want it scrubbed", got)
	}
}
