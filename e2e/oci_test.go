//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
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
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ociScenario makes machines from images served by a registry on
// loopback, in this test's own process: an image of the suite's Debian
// base (exported with nsbox export, wrapped as one layer, with a second
// layer over it) boots and takes a shell; a second image on the same base
// layer; a hostile image is refused with nothing left.
//
// Direct backend only: the machined test host runs with a network of its
// own (--private-network) and cannot reach this process's loopback.
func ociScenario(t *testing.T, e *env) {
	if e.name != "direct" {
		t.Skip("the machined test host has a private network: the registry on this host's loopback is out of its reach")
	}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	var gets []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gets = append(gets, r.Method+" "+r.URL.Path)
		mu.Unlock()
		reg.ServeHTTP(w, r)
	}))
	fetched := func(l v1.Layer) int {
		d, _ := l.Digest()
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, g := range gets {
			if strings.HasPrefix(g, "GET ") && strings.HasSuffix(g, "/blobs/"+d.String()) {
				n++
			}
		}
		return n
	}
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	work := "/var/tmp/e2e-oci-" + e.name
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work)
	defer e.sh(t, "rm -rf "+work)
	// The images' bases and layers in a cache of this test's own, gone
	// with it: the suite's cache is shared.
	ie := *e
	ie.cacheDir = work + "/cache"

	const src = "e2e-oci-src"
	e.mustNsb(t, "create", src, "--release", "bookworm", "--storage", "copy")
	e.mustNsb(t, "export", src, work+"/root.tar.gz")
	e.mustNsb(t, "remove", "--force", src)
	base, err := tarball.LayerFromFile(work + "/root.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	push := func(repo string, cfg v1.Config, layers ...v1.Layer) string {
		t.Helper()
		img, err := mutate.AppendLayers(empty.Image, layers...)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(host + "/" + repo)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		return "docker://" + ref.String()
	}
	// The base has /etc/issue.net; the top layer whites it out (a
	// whiteout hides only what the layers below have: OCI image spec).
	top := layer(t, map[string]string{"etc/motd": "from an image\n"}, map[string]string{"etc/.wh.issue.net": ""})
	ref := push("debian:test", v1.Config{Cmd: []string{"/bin/bash"}, Env: []string{"PATH=/usr/bin:/bin"}}, base, top)

	const name = "e2e-oci"
	defer e.nsb(t, "remove", "--force", name)
	ie.mustNsb(t, "create", name, "--from", ref)
	e.mustNsb(t, "boot", name)
	out := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /etc/motd /etc/hostname; test -e /etc/issue.net || echo whited-out").stdout
	if out != "from an image\n"+name+"\nwhited-out\n" {
		t.Errorf("inside the machine: %q", out)
	}
	e.mustNsb(t, "stop", name)
	if rec := e.mustSh(t, "cat /var/lib/nsbox/image/"+name+".json"); !strings.Contains(rec, `"cmd": [`) || !strings.Contains(rec, ref) {
		t.Errorf("image record: %s", rec)
	}

	// The same base under another image: only the new layer is fetched.
	ref2 := push("debian:two", v1.Config{}, base, layer(t, map[string]string{"two": "2"}, nil))
	ie.mustNsb(t, "create", name+"2", "--from", ref2)
	defer e.nsb(t, "remove", "--force", name+"2")
	if n := fetched(base); n != 1 {
		t.Errorf("the shared base layer was fetched %d times", n)
	}

	// A link in one layer and a write through it in the next.
	bad := push("hostile:1", v1.Config{}, base, layer(t, nil, map[string]string{}), layerLink(t, "evil", work), layer(t, map[string]string{"evil/pwned": "x"}, nil))
	wantFail(t, ie.nsb(t, "create", "e2e-oci-bad", "--from", bad), 1, "through the symbolic link")
	e.mustSh(t, "test ! -e "+work+"/pwned && test ! -e "+e.rootDir+"/e2e-oci-bad")
	e.mustSh(t, "! ls -a "+e.rootDir+"/.nsbox | grep -q '^\\.#e2e-oci-bad\\.'")
}

// layer is a gzipped layer of files (path: content) and whiteouts.
func layer(t *testing.T, files, more map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	w := tar.NewWriter(gz)
	for _, m := range []map[string]string{files, more} {
		for p, c := range m {
			w.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))})
			io.WriteString(w, c)
		}
	}
	w.Close()
	gz.Close()
	return static.NewLayer(buf.Bytes(), types.OCILayer)
}

// layerLink is a layer of one symbolic link.
func layerLink(t *testing.T, p, to string) v1.Layer {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	w := tar.NewWriter(gz)
	w.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeSymlink, Linkname: to})
	w.Close()
	gz.Close()
	return static.NewLayer(buf.Bytes(), types.OCILayer)
}
