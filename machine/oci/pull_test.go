package oci

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
)

var host = "linux/" + runtime.GOARCH

func pull(t *testing.T, c *Cache, ref string, o Options) (*Image, error) {
	t.Helper()
	src, err := ParseSource(ref)
	if err != nil {
		t.Fatal(err)
	}
	if o.Platform.OS == "" {
		o.Platform, _ = ParsePlatform("", "")
	}
	if o.Keychain == nil {
		o.Keychain = authn.NewMultiKeychain() // no credentials: not the host user's
	}
	return c.Pull(context.Background(), src, o)
}

// blobs lists the cache's blobs and whatever else is in its blob directory.
func blobs(t *testing.T, c *Cache) []string {
	ents, _ := os.ReadDir(filepath.Join(c.Dir, "blobs", "sha256"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestPullSharesLayers(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	base := ocitest.Layer(t, ocitest.Dir("etc/"), ocitest.File("etc/os-release", "ID=test\n"))
	one := ocitest.Layer(t, ocitest.File("one", "1"))
	two := ocitest.Layer(t, ocitest.File("two", "2"))
	cfg := v1.Config{Entrypoint: []string{"/bin/app"}, Cmd: []string{"-v"}, Env: []string{"A=1"}, WorkingDir: "/srv", User: "app"}
	r1 := reg.Push(t, "app/one:1", ocitest.Image(t, host, cfg, base, one))
	r2 := reg.Push(t, "app/two:1", ocitest.Image(t, host, v1.Config{}, base, two))
	c := &Cache{Dir: t.TempDir()}

	var seen []Progress
	img, err := pull(t, c, r1, Options{Progress: func(p Progress) { seen = append(seen, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(img.Config, Config{Entrypoint: []string{"/bin/app"}, Cmd: []string{"-v"}, Env: []string{"A=1"}, WorkingDir: "/srv", User: "app"}) {
		t.Errorf("config %+v", img.Config)
	}
	if len(img.Layers) != 2 || img.Layers[0].Cached || img.Downloaded == 0 || len(seen) < 2 || !seen[len(seen)-1].Finished {
		t.Errorf("first pull: %+v, progress %+v", img, seen)
	}
	img2, err := pull(t, c, r2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	bd, _ := base.Digest()
	td, _ := two.Digest()
	ts, _ := two.Size()
	if !img2.Layers[0].Cached || img2.Layers[1].Cached || img2.Downloaded != ts {
		t.Errorf("second pull: %+v", img2)
	}
	if n := reg.BlobGets(bd); n != 1 {
		t.Errorf("the shared layer was fetched %d times", n)
	}
	if n := reg.BlobGets(td); n != 1 {
		t.Errorf("the second image's own layer was fetched %d times", n)
	}
	f, err := c.Open(bd.String())
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := blobs(t, c); len(got) != 3 {
		t.Errorf("blobs: %v", got)
	}
	// Everything cached: no blob fetched again.
	if img, err := pull(t, c, r1, Options{}); err != nil || img.Downloaded != 0 || reg.BlobGets(bd) != 1 {
		t.Errorf("third pull: %+v %v", img, err)
	}
}

func TestPullPicksThePlatform(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	amd := ocitest.Image(t, "linux/amd64", v1.Config{Cmd: []string{"amd"}}, ocitest.Layer(t, ocitest.File("a", "amd")))
	arm := ocitest.Image(t, "linux/arm/v7", v1.Config{Cmd: []string{"arm"}}, ocitest.Layer(t, ocitest.File("a", "arm")))
	ref := reg.Push(t, "multi:1", ocitest.Index(t, map[string]v1.Image{"linux/amd64": amd, "linux/arm/v7": arm}))
	c := &Cache{Dir: t.TempDir()}
	for _, tc := range []struct{ platform, arch, cmd, err string }{
		{"linux/amd64", "", "amd", ""},
		{"", "armhf", "arm", ""},
		{"linux/arm/v7", "", "arm", ""},
		{"linux/arm64", "", "", "has no image for linux/arm64 (it has: linux/amd64, linux/arm/v7; pick one with --platform)"},
		{"", "s390x", "", "has no image for linux/s390x"},
	} {
		p, err := ParsePlatform(tc.platform, tc.arch)
		if err != nil {
			t.Fatal(err)
		}
		img, err := pull(t, c, ref, Options{Platform: p})
		switch {
		case tc.err != "":
			if !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s %s: %v, want %q", tc.platform, tc.arch, err, tc.err)
			}
		case err != nil || img.Config.Cmd[0] != tc.cmd:
			t.Errorf("%s %s: %+v %v", tc.platform, tc.arch, img, err)
		}
	}
	// A plain manifest for another architecture.
	other := reg.Push(t, "arm:1", arm)
	_, err := pull(t, c, other, Options{Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	if !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), "is an image for linux/arm/v7, not linux/amd64") {
		t.Errorf("another architecture: %v", err)
	}
}

func TestPullFailures(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	layer := ocitest.Layer(t, ocitest.File("a", "a"))
	ld, _ := layer.Digest()
	good := reg.Push(t, "good:1", ocitest.Image(t, host, v1.Config{}, layer))
	bad := reg.Push(t, "bad:1", ocitest.Image(t, host, v1.Config{}, ocitest.Layer(t, ocitest.File("b", "b"))))

	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		what string
		ref  string
		wrap func(w http.ResponseWriter, r *http.Request) bool
		o    Options
		err  error
		text string
	}{
		{what: "unknown image", ref: "docker://" + reg.Host + "/nope:1", err: ErrUnknownImage, text: "has none by that name"},
		{what: "unknown tag", ref: "docker://" + reg.Host + "/good:2", err: ErrUnknownImage},
		{what: "nobody listens", ref: "docker://" + gone + "/x:1", err: ErrNoAnswer},
		{what: "a layer that does not match its digest", ref: good, err: ErrDigest, text: "layer 1 (" + ld.String() + ")",
			wrap: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "GET" && strings.HasSuffix(r.URL.Path, ld.String()) {
					b, _ := layer.Compressed()
					defer b.Close()
					buf := make([]byte, 1<<20)
					n, _ := b.Read(buf)
					buf[n-1] ^= 0xff
					w.Write(buf[:n])
					return true
				}
				return false
			}},
		{what: "a layer longer than its manifest says", ref: good, err: ErrDigest,
			wrap: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "GET" && strings.HasSuffix(r.URL.Path, ld.String()) {
					w.Write(make([]byte, 64<<10))
					return true
				}
				return false
			}},
		{what: "a registry that stops sending", ref: good, err: ErrNoAnswer, text: "sent nothing for 300ms", o: Options{Stall: 300 * time.Millisecond},
			wrap: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/") {
					w.WriteHeader(200)
					w.Write([]byte{0x1f})
					w.(http.Flusher).Flush()
					<-r.Context().Done()
					return true
				}
				return false
			}},
		{what: "no credentials", ref: bad, err: ErrRefused, text: "does not exist or needs credentials", wrap: basicAuth("u", "p")},
		{what: "refused credentials", ref: bad, err: ErrRefused, text: "refused the credentials", wrap: basicAuth("u", "p"),
			o: Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "u", Password: "wrong"})}}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			reg.SetWrap(tc.wrap)
			defer reg.SetWrap(nil)
			c := &Cache{Dir: t.TempDir()}
			start := time.Now()
			_, err := pull(t, c, tc.ref, tc.o)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line: %v ... %s", err, tc.err, tc.text)
			}
			t.Log(err)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s", d)
			}
			if got := blobs(t, c); len(got) != 0 {
				t.Errorf("left in the cache: %v", got)
			}
		})
	}
	// The right credentials pass.
	reg.SetWrap(basicAuth("u", "p"))
	defer reg.SetWrap(nil)
	if _, err := pull(t, &Cache{Dir: t.TempDir()}, bad, Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "u", Password: "p"})}}); err != nil {
		t.Errorf("with credentials: %v", err)
	}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

// basicAuth refuses requests without user:pass.
func basicAuth(user, pass string) func(w http.ResponseWriter, r *http.Request) bool {
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == want {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return true
	}
}

func TestPullFromLayoutAndArchive(t *testing.T) {
	img := ocitest.Image(t, host, v1.Config{Cmd: []string{"x"}}, ocitest.Layer(t, ocitest.File("a", "a")))
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("example/img:v1")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: t.TempDir()}
	want, _ := img.Digest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	for _, ref := range []string{"oci:" + dir + ":v1", "oci:" + dir, "docker-archive:" + archive} {
		got, err := pull(t, c, ref, Options{})
		// docker save writes a manifest of its own: the same layer.
		if err != nil || (got.Digest != want.String()) != strings.HasPrefix(ref, "docker-archive:") ||
			len(got.Layers) != 1 || got.Layers[0].Digest != ld.String() || got.Config.Cmd[0] != "x" {
			t.Errorf("%s: %+v %v", ref, got, err)
		}
	}
	if _, err := pull(t, c, "oci:"+dir+":v2", Options{}); !errors.Is(err, ErrUnknownImage) || !strings.Contains(err.Error(), "no image tagged v2 (it has: v1)") {
		t.Errorf("unknown tag: %v", err)
	}
	if _, err := pull(t, c, "oci:"+t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Errorf("empty dir: %v", err)
	}
	if _, err := pull(t, c, "docker-archive:"+dir, Options{}); err == nil || !strings.Contains(err.Error(), "not a file made by docker save") {
		t.Errorf("a directory as archive: %v", err)
	}
}

func TestParseSource(t *testing.T) {
	for _, tc := range []struct{ in, kind, path, tag, ref, err string }{
		{in: "docker://debian", kind: Registry, ref: "index.docker.io/library/debian:latest"},
		{in: "docker://127.0.0.1:5000/debian:test", kind: Registry, ref: "127.0.0.1:5000/debian:test"},
		{in: "docker://ghcr.io/a/b@sha256:" + strings.Repeat("a", 64), kind: Registry, ref: "ghcr.io/a/b@sha256:" + strings.Repeat("a", 64)},
		{in: "oci:/tmp/layout", kind: Layout, path: "/tmp/layout"},
		{in: "oci:/tmp/layout:v1", kind: Layout, path: "/tmp/layout", tag: "v1"},
		{in: "oci:./a:b/c", kind: Layout, path: "./a:b/c"},
		{in: "docker-archive:/tmp/x.tar", kind: DockerArchive, path: "/tmp/x.tar"},
		{in: "docker://", err: "name an image"},
		{in: "docker://UPPER/x", err: "not an image reference"},
		{in: "docker://a b", err: "name an image"},
		{in: "oci:", err: "name the directory"},
		{in: "oci:/x:", err: "empty tag"},
		{in: "docker-archive:", err: "name a file"},
		{in: "bookworm", err: "not an image source"},
	} {
		s, err := ParseSource(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || s.Kind != tc.kind || s.Path != tc.path || s.Tag != tc.tag || (s.Ref != nil && s.Ref.Name() != tc.ref) {
			t.Errorf("%s: %+v %v", tc.in, s, err)
		}
	}
}

func TestParsePlatform(t *testing.T) {
	for _, tc := range []struct{ platform, arch, want, err string }{
		{"", "", "linux/" + runtime.GOARCH, ""},
		{"", "arm64", "linux/arm64", ""},
		{"", "armhf", "linux/arm/v7", ""},
		{"", "i386", "linux/386", ""},
		{"linux/arm/v6", "", "linux/arm/v6", ""},
		{"linux", "", "", "OS/ARCH"},
		{"linux/arm/v7/x", "", "", "OS/ARCH"},
		{"linux//v7", "", "", "OS/ARCH"},
		{"linux/AMD64", "", "", "lower case"},
		{"linux/amd64", "amd64", "", "give one"},
	} {
		p, err := ParsePlatform(tc.platform, tc.arch)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %q: %v", tc.platform, tc.arch, err)
			}
			continue
		}
		if err != nil || PlatformString(p) != tc.want {
			t.Errorf("%q %q: %v %v", tc.platform, tc.arch, p, err)
		}
	}
}
