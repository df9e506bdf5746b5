// Package downloadtest serves files on loopback and signs them with
// throwaway OpenPGP keys, for the tests of URL downloads.
package downloadtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Server serves Files at their paths on 127.0.0.1 and counts the GETs of
// each; a path in Handlers is served by its handler instead.
type Server struct {
	*httptest.Server
	mu       sync.Mutex
	Files    map[string][]byte
	Handlers map[string]http.HandlerFunc
	gets     map[string]int
}

// NewServer starts a server, closed when the test ends.
func NewServer(t testing.TB) *Server {
	s := &Server{Files: map[string][]byte{}, Handlers: map[string]http.HandlerFunc{}, gets: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.gets[r.URL.Path]++
	b, ok := s.Files[r.URL.Path]
	h := s.Handlers[r.URL.Path]
	s.mu.Unlock()
	switch {
	case h != nil:
		h(w, r)
	case ok:
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		_, _ = w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

// Set serves b at path.
func (s *Server) Set(path string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Files[path] = b
}

// Handle serves path by h.
func (s *Server) Handle(path string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Handlers[path] = h
}

// Gets is how many times path was asked for.
func (s *Server) Gets(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[path]
}

// Sums is a SHA256SUMS of the files, as sha256sum writes it (text mode).
func Sums(files map[string][]byte) []byte {
	var b strings.Builder
	for name, data := range files {
		h := sha256.Sum256(data)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h[:]), name)
	}
	return []byte(b.String())
}

// Signer is a throwaway OpenPGP key made with gpg.
type Signer struct {
	home string
	// Keyring is a file holding its public key, binary.
	Keyring string
	// Armored holds it ASCII-armored.
	Armored string
}

// NewSigner makes an ed25519 key in a GnuPG home of its own (the test is
// skipped without gpg and gpgv).
func NewSigner(t testing.TB, who string) *Signer {
	t.Helper()
	for _, p := range []string{"gpg", "gpgv"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed", p)
		}
	}
	// gpg-agent's socket path must be short: not under t.TempDir().
	home, err := os.MkdirTemp("", "nsbox-gpg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	s := &Signer{home: home, Keyring: filepath.Join(home, who+".gpg"), Armored: filepath.Join(home, who+".asc")}
	s.gpg(t, nil, "--quick-gen-key", who+" <"+who+"@nsbox.test>", "ed25519", "sign", "never")
	for path, args := range map[string][]string{s.Keyring: {"--export"}, s.Armored: {"--armor", "--export"}} {
		if err := os.WriteFile(path, s.gpg(t, nil, append(args, who+"@nsbox.test")...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *Signer) gpg(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", s.home, "--batch", "--passphrase", "", "--pinentry-mode", "loopback"}, args...)...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Sign is a detached binary signature of data.
func (s *Signer) Sign(t testing.TB, data []byte) []byte {
	t.Helper()
	return s.gpg(t, data, "--detach-sign", "--output", "-")
}
