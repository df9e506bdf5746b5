package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"github.com/nsbox/nsbox/machine/download"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
)

// fileLayer writes a layer of members into a new file.
func fileLayer(t *testing.T, members ...ocitest.Member) *FileLayer {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, err := WriteLayerFile(f, func(w io.Writer) error {
		_, err := w.Write(ocitest.Tar(t, members...))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// A layer written to a file has the digests of its bytes: the blob's, and
// the tar's inside it.
func TestWriteLayerFileDigests(t *testing.T) {
	l := fileLayer(t, ocitest.Dir("etc/"), ocitest.File("etc/motd", "hi\n"))
	blob, err := os.ReadFile(l.File().Name())
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	d, _ := l.Digest()
	di, _ := l.DiffID()
	size, _ := l.Size()
	if d.String() != hexSum(blob) || di.String() != hexSum(raw) || size != int64(len(blob)) {
		t.Errorf("digest %s diff id %s size %d; blob %s tar %s size %d", d, di, size, hexSum(blob), hexSum(raw), len(blob))
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	if h, err := tr.Next(); err != nil || h.Name != "etc/" {
		t.Errorf("first member %v %v", h, err)
	}
	// A cached blob whose size is not the record's is refused.
	if _, err := OpenLayerFile(l.File(), d.String(), di.String(), size+1); !errors.Is(err, ErrDigest) {
		t.Errorf("a short blob: %v", err)
	}
}

// An image written as a layout reads back as that image, and a pull of
// oci:DIR takes it: layers, configuration, platform, tag.
func TestWriteLayoutRoundTrip(t *testing.T) {
	base := fileLayer(t, ocitest.Dir("etc/"), ocitest.File("etc/os-release", "ID=test\n"))
	top := fileLayer(t, ocitest.File("etc/.wh.os-release", ""), ocitest.File("app", "x"))
	cfg := v1.Config{Cmd: []string{"/sbin/init"}, Env: []string{"PATH=/bin"}, StopSignal: "SIGRTMIN+3"}
	plat, _ := ParsePlatform("", "")
	img, err := NewImage([]Built{{Layer: base, Comment: "base"}, {Layer: top, Comment: "machine"}}, cfg, plat, time.Unix(1700000000, 0).UTC())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "lay")
	if err := WriteLayout(dir, img, "v1"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[RefName] != "v1" {
		t.Fatalf("index %+v", im)
	}
	c := &Cache{Dir: t.TempDir()}
	got, err := pull(t, c, "oci:"+dir+":v1", Options{})
	if err != nil {
		t.Fatal(err)
	}
	bd, _ := base.Digest()
	td, _ := top.Digest()
	if len(got.Layers) != 2 || got.Layers[0].Digest != bd.String() || got.Layers[1].Digest != td.String() {
		t.Errorf("layers %+v", got.Layers)
	}
	if !reflect.DeepEqual(got.Config, Config{Cmd: cfg.Cmd, Env: cfg.Env}) || got.Platform != PlatformString(plat) {
		t.Errorf("config %+v platform %s", got.Config, got.Platform)
	}
	d, _ := img.Digest()
	if got.Digest != d.String() {
		t.Errorf("manifest %s, wrote %s", got.Digest, d)
	}
}

// A push sends the image; a second push of an image with the same base
// layer does not send that layer again (the registry has it).
func TestPush(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	base := fileLayer(t, ocitest.File("base", "b"))
	plat, _ := ParsePlatform("", "")
	mk := func(data string) v1.Image {
		img, err := NewImage([]Built{{Layer: base}, {Layer: fileLayer(t, ocitest.File("top", data))}}, v1.Config{Cmd: []string{"/bin/sh"}}, plat, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	var mu sync.Mutex
	var puts []string
	reg.SetWrap(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == "PUT" || r.Method == "POST" || r.Method == "PATCH" {
			puts = append(puts, r.Method+" "+r.URL.Path+" "+r.URL.Query().Get("digest"))
		}
		return false
	})
	o := Options{Keychain: authn.NewMultiKeychain()}
	for i, data := range []string{"one", "two"} {
		dst, err := ParseSource("docker://" + reg.Host + "/m/web:" + data)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckPush(dst, o); err != nil {
			t.Fatal(err)
		}
		var last int64
		if err := Push(context.Background(), dst, mk(data), o, func(done, _ int64) { last = done }); err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			t.Errorf("push %d: no progress", i)
		}
		got, err := pull(t, &Cache{Dir: t.TempDir()}, dst.Text, Options{})
		if err != nil || len(got.Layers) != 2 || got.Config.Cmd[0] != "/bin/sh" {
			t.Errorf("pull back: %+v %v", got, err)
		}
	}
	bd, _ := base.Digest()
	sent := 0
	for _, p := range puts {
		if strings.HasPrefix(p, "PUT ") && strings.HasSuffix(p, " "+bd.String()) {
			sent++
		}
	}
	if sent != 1 {
		t.Errorf("the base layer was sent %d times: %q", sent, puts)
	}
}

// A push is refused in one line before anything is sent: no credentials,
// wrong ones, nobody listening, plain HTTP to an address off loopback.
func TestPushRefusals(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := closed.Addr().String()
	closed.Close()
	var offLoopback []string
	for _, tc := range []struct {
		what string
		ref  string
		wrap func(w http.ResponseWriter, r *http.Request) bool
		o    Options
		err  error
		text string
	}{
		{what: "no credentials", ref: reg.Host + "/x:1", wrap: basicAuth("u", "p"), err: ErrRefused, text: "needs credentials"},
		{what: "refused credentials", ref: reg.Host + "/x:1", wrap: basicAuth("u", "p"), err: ErrRefused, text: "refused the credentials",
			o: Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "u", Password: "wrong"})}}},
		{what: "nobody listens", ref: gone + "/x:1", err: ErrNoAnswer},
		// A private address, which go-containerregistry would speak
		// plain HTTP to: the transport refuses it, and nothing goes
		// out but the HTTPS attempt (answered here by a stand-in).
		{what: "plain HTTP off loopback", ref: "10.0.0.1:5000/x:1", err: ErrRefused, text: "plain HTTP",
			o: Options{Transport: download.Guard(roundTripper(func(r *http.Request) (*http.Response, error) {
				offLoopback = append(offLoopback, r.URL.Scheme)
				return nil, errors.New("no network in tests")
			}), time.Second, false)}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			reg.SetWrap(tc.wrap)
			defer reg.SetWrap(nil)
			if tc.o.Keychain == nil {
				tc.o.Keychain = authn.NewMultiKeychain()
			}
			dst, err := ParseSource("docker://" + tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckPush(dst, tc.o)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line: %v ... %s", err, tc.err, tc.text)
			}
			t.Log(err)
		})
	}
	for _, s := range offLoopback {
		if s != "https" {
			t.Errorf("sent %s off loopback", s)
		}
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A push cut short (its context cancelled mid-upload) ends at once, its
// progress too.
func TestPushCancelled(t *testing.T) {
	reg := ocitest.NewRegistry(t)
	uploading := make(chan struct{}, 1)
	reg.SetWrap(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "PATCH" || r.Method == "PUT" && strings.Contains(r.URL.Path, "/blobs/uploads/") {
			// Read whole: the server notices a client gone only once
			// the body is read.
			io.Copy(io.Discard, r.Body)
			select {
			case uploading <- struct{}{}:
			default:
			}
			select {
			case <-r.Context().Done():
			case <-time.After(time.Minute):
			}
			return true
		}
		return false
	})
	plat, _ := ParsePlatform("", "")
	img, err := NewImage([]Built{{Layer: fileLayer(t, ocitest.File("f", strings.Repeat("x", 1<<20)))}}, v1.Config{}, plat, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := ParseSource("docker://" + reg.Host + "/cut:1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Push(ctx, dst, img, Options{Keychain: authn.NewMultiKeychain()}, func(int64, int64) {})
	}()
	select {
	case <-uploading:
	case <-time.After(20 * time.Second):
		t.Fatal("no upload began")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cut short: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("push did not end when cancelled")
	}
}
