package host_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/objects"

	"github.com/plakar-oci/ocistore/host"
	"github.com/plakar-oci/ocistore/internal/registrytest"
	"github.com/plakar-oci/ocistore/vault"
)

// upstreamRepo writes and reads a repository in the layout of Plakar's
// upstream oci plugin (PlakarKorp/integrations, oci/storage/oci.go), by
// hand, as that plugin does: the configuration tagged CONFIG, objects
// tagged packfiles-<hex>, state-<hex> and locks-<hex>, each an image
// manifest whose config is the blob {} and whose one layer is the object.
type upstreamRepo struct {
	t    *testing.T
	base string // http://host:port/v2/<repository>
}

// upstreamPrefixes are the upstream plugin's tag prefixes.
var upstreamPrefixes = map[storage.StorageResource]string{
	storage.StorageResourcePackfile: "packfiles-",
	storage.StorageResourceState:    "state-",
	storage.StorageResourceLock:     "locks-",
}

// upstreamManifest is the upstream plugin's manifest, as it encodes it.
type upstreamManifest struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	Config        upstreamDescriptor   `json:"config"`
	Layers        []upstreamDescriptor `json:"layers"`
}

type upstreamDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

func (u *upstreamRepo) do(method, target string, body []byte, header ...string) (*http.Response, []byte) {
	u.t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		u.t.Fatal(err)
	}
	for i := 0; i < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		u.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		u.t.Fatal(err)
	}
	return resp, b
}

// pushBlob uploads b as the upstream plugin does (POST, then PUT with the
// digest) and returns its digest.
func (u *upstreamRepo) pushBlob(b []byte) string {
	u.t.Helper()
	registryURL, repo, _ := strings.Cut(u.base, "/v2/")
	return registrytest.PushBlob(u.t, registryURL, repo, b)
}

// put stores b under tag, as the upstream plugin's putByTag does.
func (u *upstreamRepo) put(tag string, b []byte) {
	u.t.Helper()
	digest := u.pushBlob(b)
	m, err := json.Marshal(upstreamManifest{
		SchemaVersion: 2,
		MediaType:     "application/vnd.oci.image.manifest.v1+json",
		Config:        upstreamDescriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: u.pushBlob([]byte("{}")), Size: 2},
		Layers:        []upstreamDescriptor{{MediaType: "application/octet-stream", Digest: digest, Size: int64(len(b))}},
	})
	if err != nil {
		u.t.Fatal(err)
	}
	if resp, body := u.do("PUT", u.base+"/manifests/"+tag, m, "Content-Type", "application/vnd.oci.image.manifest.v1+json"); resp.StatusCode != 201 {
		u.t.Fatalf("tagging %s: %s %s", tag, resp.Status, body)
	}
}

// get reads the object tagged tag as the upstream plugin's getByTag
// does: the manifest's first layer.
func (u *upstreamRepo) get(tag string) []byte {
	u.t.Helper()
	resp, body := u.do("GET", u.base+"/manifests/"+tag, nil, "Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	if resp.StatusCode != 200 {
		u.t.Fatalf("the upstream plugin's read of %s: %s", tag, resp.Status)
	}
	var m upstreamManifest
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) < 1 {
		u.t.Fatalf("the upstream plugin's read of %s: manifest %s: %v", tag, body, err)
	}
	resp, blob := u.do("GET", u.base+"/blobs/"+m.Layers[0].Digest, nil)
	if resp.StatusCode != 200 {
		u.t.Fatalf("the upstream plugin's read of %s: blob %s", tag, resp.Status)
	}
	return blob
}

// tags is the repository's tag list, in one request, as the upstream
// plugin lists.
func (u *upstreamRepo) tags() []string {
	u.t.Helper()
	resp, body := u.do("GET", u.base+"/tags/list", nil)
	if resp.StatusCode == 404 {
		return nil
	}
	var l struct{ Tags []string }
	if err := json.Unmarshal(body, &l); err != nil {
		u.t.Fatalf("tag list %s: %v", body, err)
	}
	return l.Tags
}

// listUpstream is the upstream plugin's List of res.
func (u *upstreamRepo) list(res storage.StorageResource) []objects.MAC {
	var macs []objects.MAC
	for _, tag := range u.tags() {
		if h, ok := strings.CutPrefix(tag, upstreamPrefixes[res]); ok {
			var mac objects.MAC
			if n, err := hex.Decode(mac[:], []byte(h)); err == nil && n == len(mac) {
				macs = append(macs, mac)
			}
		}
	}
	return macs
}

// copyToUpstream copies the configuration, packfiles and states of the
// store at from into repository u, in the upstream layout, as if the
// upstream plugin had made them.
func copyToUpstream(t *testing.T, from map[string]string, u *upstreamRepo) {
	t.Helper()
	ctx := context.Background()
	st, err := host.New(ctx, "oci", from)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(ctx)
	config, err := st.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u.put("CONFIG", config)
	for _, res := range []storage.StorageResource{storage.StorageResourcePackfile, storage.StorageResourceState} {
		macs, err := st.List(ctx, res)
		if err != nil {
			t.Fatal(err)
		}
		for _, mac := range macs {
			rd, err := st.Get(ctx, res, mac, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rd)
			rd.Close()
			if err != nil {
				t.Fatal(err)
			}
			u.put(fmt.Sprintf("%s%x", upstreamPrefixes[res], mac), b)
		}
	}
}

// TestUpstreamLayout opens a repository made by Plakar's upstream oci
// plugin as it is: a snapshot it holds is listed and restored, a backup
// to it is restored, what this store writes there stays in the upstream
// layout and readable by that plugin, a fresh process that lists before
// it opens finds the layout, and create refuses to write there.
func TestUpstreamLayout(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	pass := []byte("passphrase of a store made by the upstream plugin")

	// A snapshot made in a store of ours, copied into the upstream layout.
	made := map[string]string{"location": "oci://" + reg.Host + "/made/here"}
	if _, err := vault.Create(ctx, made, pass, nil); err != nil {
		t.Fatal(err)
	}
	src1 := reliabilitySource(t, 221, 5)
	v := openVault(t, made, pass, nil)
	id1, err := v.backup(src1)
	if err != nil {
		t.Fatal(err)
	}
	u := &upstreamRepo{t: t, base: reg.URL + "/v2/upstream/repo"}
	copyToUpstream(t, made, u)
	cfg := map[string]string{"location": "oci://" + reg.Host + "/upstream/repo"}
	before := u.tags()

	// Create refuses it: it is a store already.
	if _, err := vault.Create(ctx, cfg, []byte("another passphrase"), nil); !errors.Is(err, vault.ErrStoreExists) {
		t.Errorf("vault.Create in the upstream repository: %v, want %v", err, vault.ErrStoreExists)
	}
	st, err := host.New(ctx, "oci", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Create(ctx, []byte("a configuration")); err == nil || !strings.Contains(err.Error(), "upstream oci plugin is already at") {
		t.Errorf("Create in the upstream repository: %v, want it refused as a store of the upstream plugin", err)
	}
	st.Close(ctx)
	if after := u.tags(); !slices.Equal(before, after) {
		t.Fatalf("the refused creates changed the tags from %q to %q", before, after)
	}

	// Opened as it is: ls, restore, back up, restore.
	up := openVault(t, cfg, pass, nil)
	if ids := up.snapshotIDs(t); !slices.Equal(ids, []objects.MAC{id1}) {
		t.Fatalf("snapshots in the upstream repository: %x, want [%x]", ids, id1)
	}
	up.restoreSame(t, id1, src1)
	src2 := reliabilitySource(t, 222, 5)
	id2, err := up.backup(src2)
	if err != nil {
		t.Fatalf("backing up to the upstream repository: %v", err)
	}
	up.restoreSame(t, id2, src2)
	up.check(t, id1, id2)

	// Every tag is the upstream plugin's, and every object it lists reads
	// the same through it as through this store. A fresh store, whose
	// cache is empty, lists before it opens: it learns the layout itself.
	fresh, err := host.New(ctx, "oci", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close(ctx)
	for _, tag := range u.tags() {
		ok := tag == "CONFIG"
		for _, p := range upstreamPrefixes {
			ok = ok || strings.HasPrefix(tag, p)
		}
		if !ok {
			t.Errorf("tag %q in the upstream repository is not of its layout", tag)
		}
	}
	// Locks are left out: Kloset releases the last backup's in the
	// background, and the two lists could see it at different times.
	for _, res := range []storage.StorageResource{storage.StorageResourcePackfile, storage.StorageResourceState} {
		ours, err := fresh.List(ctx, res)
		if err != nil {
			t.Fatalf("listing %s before opening: %v", res, err)
		}
		theirs := u.list(res)
		slices.SortFunc(theirs, func(a, b objects.MAC) int { return bytes.Compare(a[:], b[:]) })
		if !slices.Equal(ours, theirs) {
			t.Errorf("%s: this store lists %d, the upstream plugin %d", res, len(ours), len(theirs))
		}
		if res == storage.StorageResourceState && len(theirs) < 2 {
			t.Errorf("%d states, want those of both snapshots", len(theirs))
		}
		for _, mac := range theirs {
			rd, err := fresh.Get(ctx, res, mac, nil)
			if err != nil {
				t.Fatalf("get %s %x: %v", res, mac[:4], err)
			}
			b, err := io.ReadAll(rd)
			rd.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, u.get(fmt.Sprintf("%s%x", upstreamPrefixes[res], mac))) {
				t.Errorf("%s %x reads differently through the upstream plugin", res, mac[:4])
			}
		}
	}
	if _, err := fresh.List(ctx, storage.StorageResourceECCPackfile); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("listing ECC packfiles in the upstream layout: %v, want %v", err, errors.ErrUnsupported)
	}
}

// TestCreateForeignRepository: create never writes into a repository
// that holds what no create wrote, and says what it found.
func TestCreateForeignRepository(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Distribution(t, registrytest.Options{Delete: true})
	u := &upstreamRepo{t: t, base: reg.URL + "/v2/team/app"}
	u.put("latest", []byte("an image, say"))
	cfg := map[string]string{"location": "oci://" + reg.Host + "/team/app"}
	_, err := vault.Create(ctx, cfg, []byte("a passphrase"), nil)
	if err == nil || !strings.Contains(err.Error(), `already holds tags that no create of a store wrote ("latest")`) {
		t.Errorf("create in a repository of another tool: %v, want it refused, naming the tag", err)
	}
	if tags := u.tags(); !slices.Equal(tags, []string{"latest"}) {
		t.Errorf("tags after the refused create: %q", tags)
	}
}
