//go:build e2e

package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// imageBaseScenario: two machines from one image share one base. The
// second create fetches no layer and applies none (its own report, the
// registry's log, cache list); both boot and take a shell; diff shows a
// file written in one, and only there; once both are removed, prune
// removes the base and the layers. A layer the registry serves with bytes
// that do not match its digest is refused, with nothing left.
//
// On the direct backend the image comes from a registry on loopback, in
// this test's process. The machined test host cannot reach that (it has a
// network of its own): there the image is an OCI layout in the suite's
// cache, which the test host shares.
func imageBaseScenario(t *testing.T, e *env) {
	work := "/var/tmp/e2e-imgbase-" + e.name
	pe := *e
	pe.cacheDir = work + "/cache"
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work)
	defer e.sh(t, "rm -rf "+work)

	// The image: the suite's Debian base as one layer, a small one over it.
	const src = "e2e-imgbase-src"
	hostDir, guestDir := suiteCache+"/e2e-imgbase", cacheDirOf(e)+"/e2e-imgbase"
	e.mustSh(t, "rm -rf "+guestDir+" && mkdir -p "+guestDir)
	defer e.sh(t, "rm -rf "+guestDir)
	e.mustNsb(t, "create", src, "--release", "bookworm", "--storage", "copy")
	e.mustNsb(t, "export", src, guestDir+"/root.tar.gz")
	e.mustNsb(t, "remove", "--force", src)
	base, err := tarball.LayerFromFile(hostDir + "/root.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	top := layer(t, map[string]string{"etc/e2e-image": "top layer\n"}, nil)
	img := imageOf(t, base, top)

	var ref string
	fetches := func() int { return -1 } // blob GETs; -1: not counted
	var reg *countingRegistry
	if e.name == "direct" {
		reg = newCountingRegistry(t)
		defer reg.Close()
		ref = reg.push(t, "shared:1", img)
		fetches = func() int { return reg.blobGets(base) + reg.blobGets(top) }
	} else {
		p, err := layout.Write(hostDir+"/layout", empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AppendImage(img); err != nil {
			t.Fatal(err)
		}
		ref = "oci:" + guestDir + "/layout"
	}

	const a, b = "e2e-imgbase-a", "e2e-imgbase-b"
	defer pe.nsb(t, "remove", "--force", a)
	defer pe.nsb(t, "remove", "--force", b)
	pe.mustNsb(t, "create", a, "--from", ref)
	before := fetches()
	r := pe.mustNsb(t, "--verbose", "create", b, "--from", ref)
	if strings.Contains(r.stderr, "applying layer") || !strings.Contains(r.stderr, "0 B fetched, 2 were cached") || !strings.Contains(r.stderr, "over the cached base") {
		t.Errorf("the second create from one image:\n%s", r)
	}
	if after := fetches(); after != before {
		t.Errorf("the second create fetched %d layers", after-before)
	}
	bases := cacheBases(t, &pe)
	if len(bases) != 1 || bases[0].Image == nil || len(bases[0].Image.Layers) != 2 || strings.Join(bases[0].Machines, ",") != a+","+b {
		t.Fatalf("cache list -o json: %+v", bases)
	}
	key := bases[0].Key
	for _, l := range cacheLayers(t, &pe) {
		if strings.Join(l.Machines, ",") != a+","+b || strings.Join(l.Bases, ",") != key {
			t.Errorf("layer %+v", l)
		}
	}
	for _, n := range []string{a, b} {
		if i := status(t, &pe, n); i.Storage != "overlay" {
			t.Errorf("%s: storage %q, want overlay (the default)", n, i.Storage)
		}
	}
	wantFail(t, pe.nsb(t, "cache", "remove", key), 1, "base in use")

	for _, n := range []string{a, b} {
		pe.mustNsb(t, "boot", n, "--network", "none")
		if out := pe.mustNsb(t, "shell", n, "--", "sh", "-c", "hostname; cat /etc/e2e-image").stdout; out != n+"\ntop layer\n" {
			t.Errorf("%s inside: %q", n, out)
		}
	}
	pe.mustNsb(t, "shell", a, "--", "sh", "-c", "echo mine > /root/e2e-written")
	if out := pe.mustNsb(t, "diff", a).stdout; !strings.Contains("\n"+out, "\nA /root/e2e-written\n") {
		t.Errorf("diff %s:\n%s", a, out)
	}
	if out := pe.mustNsb(t, "diff", b).stdout; strings.Contains(out, "e2e-written") {
		t.Errorf("diff %s shows what %s wrote:\n%s", b, a, out)
	}
	for _, n := range []string{a, b} {
		pe.mustNsb(t, "stop", n)
	}
	layers := cacheLayers(t, &pe)
	wantFail(t, pe.nsb(t, "cache", "remove", layers[0].Digest), 1, "layer in use")

	// Gone with its machines: prune takes the base, then its layers.
	pe.mustNsb(t, "remove", a, b)
	var rep struct {
		Items []struct {
			Kind, Path string
			Removed    bool
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(pe.mustNsb(t, "prune", "-o", "json").stdout), &rep); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, it := range rep.Items {
		if it.Removed && (it.Kind == "base" && strings.HasSuffix(it.Path, "/bases/"+key) || it.Kind == "layers") {
			kinds[it.Kind]++
		}
	}
	if kinds["base"] != 1 || kinds["layers"] != 2 {
		t.Errorf("prune removed %v: %+v", kinds, rep.Items)
	}
	if bs, ls := cacheBases(t, &pe), cacheLayers(t, &pe); len(bs) != 0 || len(ls) != 0 {
		t.Errorf("after prune: bases %+v, layers %+v", bs, ls)
	}

	if reg == nil {
		return
	}
	// A layer whose bytes are not what its digest says: refused, no base,
	// no machine, no blob, no staging tree.
	bad := layer(t, map[string]string{"etc/e2e-bad": "x\n"}, nil)
	badRef := reg.push(t, "bad:1", imageOf(t, base, bad))
	reg.corrupt(bad)
	wantFail(t, pe.nsb(t, "create", "e2e-imgbase-bad", "--from", badRef), 1, "does not match its digest")
	if bs := cacheBases(t, &pe); len(bs) != 0 {
		t.Errorf("a base made of a bad layer: %+v", bs)
	}
	d, _ := bad.Digest()
	e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-imgbase-bad && test ! -e "+pe.cacheDir+"/oci/blobs/sha256/"+strings.TrimPrefix(d.String(), "sha256:"))
	if out := e.query(t, "ls -A "+pe.cacheDir+"/bases "+pe.cacheDir+"/oci/blobs/sha256 "+e.rootDir+"/.nsbox | grep '^\\.#' | grep -v '\\.lck$'"); out != "" {
		t.Errorf("left behind: %s", out)
	}
}

// cacheDirOf is e's cache directory as the test host sees it: the suite's
// cache is shared with it at guestCache.
func cacheDirOf(e *env) string {
	if e.name == "direct" {
		return suiteCache
	}
	return guestCache
}

// imageOf is an amd64 image of layers.
func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// imageBaseInfo is the part of cache list -o json this test reads.
type imageBaseInfo struct {
	Key      string   `json:"key"`
	Machines []string `json:"machines"`
	Image    *struct {
		Digest string `json:"digest"`
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	} `json:"image"`
}

func cacheBases(t *testing.T, e *env) []imageBaseInfo {
	t.Helper()
	var out []imageBaseInfo
	if err := json.Unmarshal([]byte(e.mustNsb(t, "cache", "list", "-o", "json").stdout), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// layerInfo is one entry of cache list --layers -o json.
type layerInfo struct {
	Digest   string   `json:"digest"`
	Size     int64    `json:"size_bytes"`
	Machines []string `json:"machines"`
	Bases    []string `json:"bases"`
}

func cacheLayers(t *testing.T, e *env) []layerInfo {
	t.Helper()
	var out []layerInfo
	if err := json.Unmarshal([]byte(e.mustNsb(t, "cache", "list", "--layers", "-o", "json").stdout), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// countingRegistry is go-containerregistry's registry on loopback, which
// counts the blob GETs and can serve a blob with bytes that do not match
// its digest.
type countingRegistry struct {
	*httptest.Server
	mu      sync.Mutex
	gets    map[string]int
	corrupt func(v1.Layer)
	bad     map[string]bool
}

func newCountingRegistry(t *testing.T) *countingRegistry {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	c := &countingRegistry{gets: map[string]int{}, bad: map[string]bool{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := strings.LastIndex(r.URL.Path, "/blobs/")
		if r.Method == http.MethodGet && i >= 0 {
			d := r.URL.Path[i+len("/blobs/"):]
			c.mu.Lock()
			c.gets[d]++
			bad := c.bad[d]
			c.mu.Unlock()
			if bad {
				// As long as the blob, other bytes.
				rec := httptest.NewRecorder()
				reg.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				for k := range body {
					body[k] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(body)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	c.corrupt = func(l v1.Layer) {
		d, _ := l.Digest()
		c.mu.Lock()
		c.bad[d.String()] = true
		c.mu.Unlock()
	}
	return c
}

func (c *countingRegistry) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(c.URL, "http://") + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return "docker://" + ref.String()
}

func (c *countingRegistry) blobGets(l v1.Layer) int {
	d, _ := l.Digest()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[d.String()]
}
