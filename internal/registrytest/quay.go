package registrytest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// NameQuay is the Quay double: distribution v3 with deletion, behind
// QuayTags.
const NameQuay = "quay-double"

// quayMaxPage is Quay's largest page (endpoints/v2/__init__.py,
// _MAX_RESULTS_PER_PAGE: V2_PAGINATION_SIZE, at least 100).
const quayMaxPage = 100

// QuayTags answers tag lists as Quay's paginate decorator does
// (quay/quay, endpoints/v2/__init__.py and endpoints/v2/tag.py) and passes
// every other request to next:
//
//   - n is capped at 100 (and is at least 1; a number that does not parse
//     is 1);
//   - last (or next_page) is an opaque page token: anything else, such as
//     a tag, starts the list at its beginning;
//   - tags come in the order of the database's ids, not sorted: here, in
//     the order of their names' sha256, which is stable as tags are added;
//   - a Link to the next page, with its token in next_page, is sent while
//     tags are left;
//   - an unknown repository is 404 NAME_UNKNOWN.
func QuayTags(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list")
		if r.Method != http.MethodGet || !ok || !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
			return
		}
		q := r.URL.Query()
		n := quayMaxPage
		if s := q.Get("n"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil {
				v = 0
			}
			n = max(min(v, quayMaxPage), 1)
		}
		token := q.Get("next_page")
		if token == "" {
			token = q.Get("last")
		}
		after, isToken := strings.CutPrefix(token, "quay-token-")
		if _, err := hex.DecodeString(after); !isToken || err != nil || len(after) != 2*sha256.Size {
			after = ""
		}
		rec := subRequest(next, r, "GET", "/v2/"+name+"/tags/list")
		switch {
		case rec.Code == http.StatusNotFound:
			writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository not found", nil)
			return
		case rec.Code != http.StatusOK:
			copyRecorded(w, rec)
			return
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			http.Error(w, "quay double: "+err.Error(), http.StatusInternalServerError)
			return
		}
		type idTag struct{ id, tag string }
		var tags []idTag
		for _, t := range page.Tags {
			sum := sha256.Sum256([]byte(t))
			if id := hex.EncodeToString(sum[:]); id > after {
				tags = append(tags, idTag{id, t})
			}
		}
		slices.SortFunc(tags, func(a, b idTag) int { return strings.Compare(a.id, b.id) })
		if len(tags) > n {
			tags = tags[:n]
			link := fmt.Sprintf("/v2/%s/tags/list?%s", name, url.Values{"n": {strconv.Itoa(n)}, "next_page": {"quay-token-" + tags[n-1].id}}.Encode())
			w.Header().Set("Link", "<http://"+r.Host+link+`>; rel="next"`)
		}
		names := make([]string, len(tags))
		for i, t := range tags {
			names[i] = t.tag
		}
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "tags": names})
	})
}

// Quay starts the Quay double: distribution v3 with deletion, behind
// QuayTags.
func Quay(t testing.TB) *Registry { return startDouble(t, NameQuay, true, QuayTags) }
