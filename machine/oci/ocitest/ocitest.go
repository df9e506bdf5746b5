// Package ocitest serves a registry on loopback and builds the images the
// tests of image pulls attack it with.
package ocitest

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
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is go-containerregistry's registry served on 127.0.0.1.
type Registry struct {
	Host string // 127.0.0.1:PORT
	Srv  *httptest.Server
	// Wrap, when set, is asked first about every request; it returns
	// true when it answered it.
	Wrap func(w http.ResponseWriter, r *http.Request) bool

	mu       sync.Mutex
	requests []string // "GET /v2/..."
}

// NewRegistry starts a registry for the test.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.Srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, req.Method+" "+req.URL.Path)
		wrap := r.Wrap
		r.mu.Unlock()
		if wrap != nil && wrap(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Srv.Close)
	r.Host = strings.TrimPrefix(r.Srv.URL, "http://")
	return r
}

// SetWrap sets Wrap.
func (r *Registry) SetWrap(f func(w http.ResponseWriter, r *http.Request) bool) {
	r.mu.Lock()
	r.Wrap = f
	r.mu.Unlock()
}

// BlobGets counts the GETs of blob digest since the start.
func (r *Registry) BlobGets(digest v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, q := range r.requests {
		if strings.HasPrefix(q, "GET ") && strings.HasSuffix(q, "/blobs/"+digest.String()) {
			n++
		}
	}
	return n
}

// Push puts img (a v1.Image or v1.ImageIndex) at repo:tag.
func (r *Registry) Push(t testing.TB, repoTag string, img any) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	switch v := img.(type) {
	case v1.Image:
		err = remote.Write(ref, v)
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, v)
	}
	if err != nil {
		t.Fatal(err)
	}
	return "docker://" + ref.String()
}

// Member is a tar member of a layer: a header, with a file's content.
type Member struct {
	tar.Header
	Data string
}

// Dir, File, Symlink, Hardlink make members.
func Dir(n string) Member {
	return Member{Header: tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func File(n, data string) Member {
	return Member{Header: tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644}, Data: data}
}
func Symlink(n, to string) Member {
	return Member{Header: tar.Header{Name: n, Typeflag: tar.TypeSymlink, Linkname: to}}
}
func Hardlink(n, to string) Member {
	return Member{Header: tar.Header{Name: n, Typeflag: tar.TypeLink, Linkname: to}}
}

// Tar is a tar stream of members.
func Tar(t testing.TB, members ...Member) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, m := range members {
		h := m.Header
		h.Size = int64(len(m.Data))
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, m.Data)
	}
	w.Close()
	return buf.Bytes()
}

// Layer is a gzipped layer of members.
func Layer(t testing.TB, members ...Member) v1.Layer {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(Tar(t, members...))
	zw.Close()
	return static.NewLayer(gz.Bytes(), types.OCILayer)
}

// Image is an image of layers for platform ("linux/amd64") with cfg.
func Image(t testing.TB, platform string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant, cf.Config = p.OS, p.Architecture, p.Variant, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Index is an index of images, each for its platform.
func Index(t testing.TB, imgs map[string]v1.Image) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for platform, img := range imgs {
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}
