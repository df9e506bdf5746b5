package download

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/download/downloadtest"
	"github.com/nsbox/nsbox/machine/host"
)

func TestParseURL(t *testing.T) {
	for _, c := range []struct{ in, name string }{
		{"https://example.org/images/rootfs.tar.zst", "rootfs.tar.zst"},
		{"http://127.0.0.1:8080/a/b.tar", "b.tar"},
		{"https://example.org/x%20y.tar.gz", "x y.tar.gz"},
		{"https://[::1]/r.tar.xz", "r.tar.xz"},
	} {
		s, err := ParseURL(c.in)
		if err != nil || s.Name != c.name {
			t.Errorf("%s: %+v %v", c.in, s, err)
			continue
		}
		if got := s.Beside("SHA256SUMS").String(); got != c.in[:strings.LastIndex(c.in, "/")+1]+"SHA256SUMS" {
			t.Errorf("%s: SHA256SUMS at %s", c.in, got)
		}
	}
	for _, c := range []struct{ in, why string }{
		{"ftp://example.org/r.tar", "not http"},
		{"https:///r.tar", "no host"},
		{"https://user:secret@example.org/r.tar", "credentials"},
		{"https://example.org/r.tar?x=1", "query"},
		{"https://example.org/r.tar#x", "query or fragment"},
		{"https://example.org/r.tar\n", "control"},
		{"https://example.org/r.tar\nHost: x", "control"},
		{"https://example.org/a b.tar", "space"},
		{"https://example.org/rootfs.img", "not a tarball"},
		{"https://example.org/.tar", "not a tarball"},
		{"https://example.org/", "names no file"},
		{"https://example.org/x/..", "names no file"},
		{"https://example.org/a%2Fb.tar", "names no file"},
		{"https://example.org/a%0Ab.tar", "names no file"},
		{"ftp://user:secret@example.org/r.tar", "not http"},
		{"https://user:secret@example.org/a\nb.tar", "control"},
		{"https://user:secret@example.org/r.img", "credentials"},
	} {
		_, err := ParseURL(c.in)
		if err == nil || !strings.Contains(err.Error(), c.why) || strings.Contains(err.Error(), "secret") || strings.ContainsAny(err.Error(), "\n") {
			t.Errorf("%q: %v, want %q", c.in, err, c.why)
		}
	}
}

const h1 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
const h2 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

func TestFindSum(t *testing.T) {
	for _, c := range []struct{ what, sums, want, err string }{
		{"text mode", h2 + "  other.tar\n" + h1 + "  r.tar\n", h1, ""},
		{"binary mode", h1 + " *r.tar\n", h1, ""},
		{"upper case, CRLF, no last newline", strings.ToUpper(h1) + "  r.tar\r", h1, ""},
		{"another file only", h1 + "  r.tar.gz\n", "", "no line for r.tar"},
		{"path components are not the file", h1 + "  ../r.tar\n" + h1 + "  ./r.tar\n" + h1 + "  d/r.tar\n", "", "no line for r.tar"},
		{"escaped name", "\\" + h1 + "  r.tar\n", "", "no line"},
		{"one space", h1 + " r.tar\n", "", "no line"},
		{"BSD style", "SHA256 (r.tar) = " + h1 + "\n", "", "no line"},
		{"twice", h1 + "  r.tar\n" + h2 + " *r.tar\n", "", "twice"},
		{"twice with one hash", h1 + "  r.tar\n" + h1 + "  r.tar\n", "", "twice"},
		{"not hex", strings.Repeat("g", 64) + "  r.tar\n", "", "no sha256"},
		{"empty", "", "", "no line"},
	} {
		got, err := FindSum([]byte(c.sums), "r.tar")
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %q %v", c.what, got, err)
		}
	}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func fetch(t *testing.T, s *downloadtest.Server, path string, f *Fetch) (Result, []byte, error) {
	t.Helper()
	if f.Client == nil {
		f.Client = Client(300*time.Millisecond, false)
	}
	if f.Max == 0 {
		f.Max = 1 << 20
	}
	u, _ := url.Parse(s.URL + path)
	var buf bytes.Buffer
	r, err := f.To(context.Background(), u, &buf)
	return r, buf.Bytes(), err
}

func TestFetch(t *testing.T) {
	s := downloadtest.NewServer(t)
	body := bytes.Repeat([]byte("nsbox"), 100000)
	s.Set("/r.tar", body)
	var seen []int64
	r, got, err := fetch(t, s, "/r.tar", &Fetch{Progress: func(done, length int64) {
		if length != int64(len(body)) {
			t.Errorf("length %d", length)
		}
		seen = append(seen, done)
	}})
	if err != nil || !bytes.Equal(got, body) || r.Bytes != int64(len(body)) || r.SHA256 != sha(body) {
		t.Fatalf("%+v %v", r, err)
	}
	if len(seen) == 0 || seen[len(seen)-1] != int64(len(body)) {
		t.Errorf("progress %v", seen)
	}

	s.Handle("/500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	s.Handle("/huge", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "99999999999")
		w.WriteHeader(200)
	})
	s.Handle("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 20 {
			_, _ = w.Write(make([]byte, 100<<10))
			w.(http.Flusher).Flush()
		}
	})
	s.Handle("/more", func(w http.ResponseWriter, r *http.Request) {
		// announces 5 bytes, sends 10 on a connection of its own
		c, bw, _ := w.(http.Hijacker).Hijack()
		defer c.Close()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0123456789")
		bw.Flush()
	})
	s.Handle("/less", func(w http.ResponseWriter, r *http.Request) {
		c, bw, _ := w.(http.Hijacker).Hijack()
		defer c.Close()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n01234")
		bw.Flush()
	})
	s.Handle("/stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write([]byte("abc"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	s.Handle("/to-file", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/shadow", http.StatusFound)
	})
	s.Handle("/to-remote", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://192.0.2.1/r.tar", http.StatusFound)
	})
	s.Handle("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	s.Handle("/redirected", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/r.tar", http.StatusFound) })

	if _, got, err := fetch(t, s, "/redirected", &Fetch{}); err != nil || !bytes.Equal(got, body) {
		t.Errorf("a redirect on one host: %v", err)
	}
	for _, c := range []struct {
		path string
		f    Fetch
		is   error
		text string
	}{
		{"/missing", Fetch{}, ErrNotFound, "404"},
		{"/500", Fetch{}, nil, "answered HTTP 500 Internal Server Error"},
		{"/huge", Fetch{}, ErrTooLarge, "announces 99999999999 bytes"},
		{"/r.tar", Fetch{Check: func(n int64) error { return errors.New("no room") }}, nil, "no room"},
		{"/chunked", Fetch{Max: 1 << 20}, ErrTooLarge, "sends more than"},
		{"/less", Fetch{}, nil, "unexpected EOF"},
		{"/stall", Fetch{}, ErrStalled, "nothing came for 300ms"},
		{"/to-file", Fetch{}, ErrRedirect, "not http or https"},
		{"/to-remote", Fetch{}, ErrPlainHTTP, "plain HTTP to 192.0.2.1"},
		{"/loop", Fetch{}, ErrRedirect, "more than 10 redirects"},
	} {
		_, _, err := fetch(t, s, c.path, &c.f)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%s: %v, want %q", c.path, err, c.text)
		}
	}
	// More than it announced: Go's client stops at the announced length.
	if r, got, err := fetch(t, s, "/more", &Fetch{}); err != nil || string(got) != "01234" || r.Bytes != 5 {
		t.Errorf("/more: %q %v", got, err)
	}
}

func TestCheckRedirect(t *testing.T) {
	req := func(s string) *http.Request {
		r, _ := http.NewRequest("GET", s, nil)
		return r
	}
	for _, c := range []struct{ from, to, err string }{
		{"https://example.org/r.tar", "https://cdn.example.net/r.tar", ""},
		{"http://127.0.0.1/r.tar", "http://localhost:8080/r.tar", ""},
		{"https://example.org/r.tar", "http://127.0.0.1:8080/r.tar", "on this machine's loopback"},
		{"https://example.org/r.tar", "https://[::1]/r.tar", "on this machine's loopback"},
		{"https://example.org/r.tar", "https://u:p@example.org/r.tar", "credentials"},
		{"https://example.org/r.tar", "ftp://example.org/r.tar", "not http or https"},
	} {
		err := checkRedirect(req(c.to), []*http.Request{req(c.from)})
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s -> %s: %v", c.from, c.to, err)
		}
	}
}

func TestVerifySignature(t *testing.T) {
	signer := downloadtest.NewSigner(t, "signer")
	other := downloadtest.NewSigner(t, "other")
	data := []byte(h1 + "  r.tar\n")
	sig := signer.Sign(t, data)
	ctx := context.Background()
	r := host.ExecRunner{}
	fpr, err := VerifySignature(ctx, r, signer.Keyring, sig, data)
	if err != nil || len(fpr) != 40 {
		t.Fatalf("good signature: %q %v", fpr, err)
	}
	if got, err := VerifySignature(ctx, r, signer.Armored, sig, data); err != nil || got != fpr {
		t.Errorf("armored keyring: %q %v", got, err)
	}
	for _, c := range []struct {
		what, keyring string
		sig, data     []byte
		why           string
	}{
		{"another key", other.Keyring, sig, data, "not in the keyring"},
		{"changed data", signer.Keyring, sig, []byte(h2 + "  r.tar\n"), "not what was signed"},
		{"another key's signature", signer.Keyring, other.Sign(t, data), data, "not in the keyring"},
		{"not a signature", signer.Keyring, []byte("garbage"), data, "SHA256SUMS.gpg is not an OpenPGP signature"},
		{"empty signature", signer.Keyring, nil, data, "does not verify"},
	} {
		_, err := VerifySignature(ctx, r, c.keyring, c.sig, c.data)
		if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v", c.what, err)
		}
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.gpg")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{filepath.Join(dir, "missing.gpg"), empty, dir} {
		if _, err := VerifySignature(ctx, r, k, sig, data); err == nil || errors.Is(err, ErrSignature) {
			t.Errorf("keyring %s: %v", k, err)
		}
	}
}

func TestFindKeyring(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.gpg"), filepath.Join(dir, "b.gpg")
	if _, err := FindKeyring("", []string{a, b}); err == nil || !strings.Contains(err.Error(), "none of "+a+", "+b+" is there (give one: --keyring FILE)") {
		t.Errorf("no keyring: %v", err)
	}
	if err := os.WriteFile(b, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if k, err := FindKeyring("", []string{a, b}); k != b || err != nil {
		t.Errorf("%q %v", k, err)
	}
	if k, err := FindKeyring("/given", []string{a, b}); k != "/given" || err != nil {
		t.Errorf("%q %v", k, err)
	}
}
