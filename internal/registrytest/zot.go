package registrytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// NameZot is the zot double: distribution v3 with deletion, behind
// ZotTags.
const NameZot = "zot-double"

// ZotTags answers tag lists as zot does (project-zot/zot, pkg/api/routes.go,
// ListTags, since v2.0.0-rc7) and passes every other request to next, a
// registry that takes any last (distribution, go-containerregistry):
//
//   - an unknown repository is 404 with the JSON error NAME_UNKNOWN;
//   - n and last, if present, must be given once; n must be a number, 0 or
//     more, or the answer is 400 with an empty body;
//   - last must be one of the repository's tags, or the answer is 404 with
//     an empty body;
//   - the tags are sorted; n = 0 is an empty list; with n, a Link to the
//     next page (`</v2/<name>/tags/list?n=<n>&last=<tag>>; rel="next"`) is
//     sent only when tags are left after the page.
//
// It also refuses /v2/_catalog, so that nothing comes to rely on it.
func ZotTags(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/_catalog" {
			http.NotFound(w, r)
			return
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
		if r.Method != http.MethodGet || !ok || !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		n := -1
		if vs, ok := q["n"]; ok {
			v, err := strconv.ParseInt(strings.Join(vs, ""), 10, 0)
			if len(vs) != 1 || err != nil || v < 0 {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			n = int(v)
		}
		last := ""
		if vs, ok := q["last"]; ok {
			if len(vs) != 1 {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			last = vs[0]
		}
		// From next, last itself and every tag after it: whether last is
		// a tag, and whether tags are left after the page, in one
		// request. Without n, as the registry behind may clamp n
		// (distribution: to 1000) where zot honours any; distribution
		// reads every tag of the repository for any n anyway.
		sub := url.Values{}
		if last != "" {
			sub.Set("last", justBefore(last))
		}
		rec := subRequest(next, r, "GET", "/v2/"+name+"/tags/list?"+sub.Encode())
		switch {
		case rec.Code == http.StatusNotFound:
			writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry", map[string]string{"name": name})
			return
		case rec.Code != http.StatusOK:
			copyRecorded(w, rec)
			return
		}
		body, link, found, err := zotPage(rec.Body.Bytes(), name, last, n)
		if err != nil {
			http.Error(w, "zot double: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if !found {
			// Unknown to zot as well if the repository is (distribution
			// lists nothing after a last then): its first tag tells.
			if rec = subRequest(next, r, "GET", "/v2/"+name+"/tags/list?n=1"); rec.Code == http.StatusNotFound {
				writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry", map[string]string{"name": name})
				return
			}
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if link != "" {
			w.Header().Set("Link", link)
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Write(body)
	})
}

// justBefore is a string that sorts after every tag that sorts before
// tag, and before tag: tag's last byte one less, then more bytes above
// any a tag may hold than a tag has.
func justBefore(tag string) string {
	b := []byte(tag)
	b[len(b)-1]--
	return string(b) + strings.Repeat("\x7f", 128)
}

// zotPage makes zot's answer from the page of the registry behind, which
// holds the tags after justBefore(last), sorted: the page
// without last, cut to n tags, and the Link to the next one if tags are
// left. found is false if last is set and not the page's first tag. The
// page is cut as bytes (tags hold neither quotes nor commas), not decoded
// and encoded again, so that the double adds little to the benchmark's
// lists.
func zotPage(page []byte, name, last string, n int) (body []byte, link string, found bool, err error) {
	const open = `"tags":[`
	start := bytes.Index(page, []byte(open))
	end := bytes.LastIndexByte(page, ']')
	if start < 0 || end < start {
		// Not the compact form distribution and go-containerregistry
		// write: decoded, sorted and written again.
		var p struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(page, &p); err != nil {
			return nil, "", false, fmt.Errorf("the tag list of the registry behind is not JSON: %v", err)
		}
		sort.Strings(p.Tags)
		if last != "" {
			if len(p.Tags) == 0 || p.Tags[0] != last {
				return nil, "", false, nil
			}
			p.Tags = p.Tags[1:]
		}
		if p.Tags == nil {
			p.Tags = []string{}
		}
		if n >= 0 && len(p.Tags) > n {
			if n > 0 {
				link = fmt.Sprintf("</v2/%s/tags/list?n=%d&last=%s>; rel=\"next\"", name, n, p.Tags[n-1])
			}
			p.Tags = p.Tags[:n]
		}
		body, err = json.Marshal(map[string]any{"name": name, "tags": p.Tags})
		return body, link, true, err
	}
	tags := page[start+len(open) : end]
	if last != "" {
		first, rest, _ := bytes.Cut(tags, []byte(","))
		if string(first) != `"`+last+`"` {
			return nil, "", false, nil
		}
		tags = rest
	}
	// The end of the n-th tag, if another follows.
	cut := len(tags)
	if n >= 0 && len(tags) > 0 {
		cut = 0
		for i := 0; i < n; i++ {
			next := bytes.Index(tags[cut:], []byte(`","`))
			if next < 0 {
				cut = len(tags)
				break
			}
			cut += next + 1
		}
		if n > 0 && cut < len(tags) {
			first := bytes.LastIndexByte(tags[:cut-1], '"')
			link = fmt.Sprintf("</v2/%s/tags/list?n=%d&last=%s>; rel=\"next\"", name, n, tags[first+1:cut-1])
		}
	}
	body = append(append(append([]byte{}, page[:start+len(open)]...), tags[:cut]...), page[end:]...)
	return body, link, true, nil
}

// Zot starts the zot double: distribution v3 with deletion (zot deletes),
// behind ZotTags.
func Zot(t testing.TB) *Registry { return startDouble(t, NameZot, true, ZotTags) }
