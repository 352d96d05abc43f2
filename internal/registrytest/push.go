package registrytest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// PushBlob uploads b to repository repo of the registry at registryURL
// (POST, then PUT with the digest, as most clients do) and returns its
// digest. Tests use it to write what the store would find written by
// others, by hand.
func PushBlob(t testing.TB, registryURL, repo string, b []byte) string {
	t.Helper()
	sum := sha256.Sum256(b)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	resp, _ := send(t, "POST", registryURL+"/v2/"+repo+"/blobs/uploads/", nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting an upload to %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	loc = resp.Request.URL.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	if resp, body := send(t, "PUT", loc.String(), b, "application/octet-stream"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("committing an upload to %s: %s %s", repo, resp.Status, body)
	}
	return digest
}

// PushArtifact tags as tag, in repository repo, an artifact of type
// artifactType whose one layer (of that media type) is layer, with the
// empty config: the shape of the store's own lists (graveyard, released
// locks).
func PushArtifact(t testing.TB, registryURL, repo, tag, artifactType string, layer []byte) {
	t.Helper()
	digest := PushBlob(t, registryURL, repo, layer)
	empty := PushBlob(t, registryURL, repo, []byte("{}"))
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},`+
		`"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`, artifactType, empty, artifactType, digest, len(layer))
	if resp, body := send(t, "PUT", registryURL+"/v2/"+repo+"/manifests/"+tag, []byte(manifest), "application/vnd.oci.image.manifest.v1+json"); resp.StatusCode != http.StatusCreated {
		t.Fatalf("tagging %s in %s: %s %s", tag, repo, resp.Status, body)
	}
}

func send(t testing.TB, method, target string, body []byte, contentType string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}
