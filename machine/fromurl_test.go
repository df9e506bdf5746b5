package machine

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/download/downloadtest"
	"github.com/nsbox/nsbox/machine/image/imagetest"
)

// urlServer serves a small root file system as r.tar.gz with its
// SHA256SUMS, and that signed by signer.
func urlServer(t *testing.T, signer *downloadtest.Signer) (*downloadtest.Server, []byte) {
	s := downloadtest.NewServer(t)
	tarball := imagetest.RootArchive(t, true)
	sums := downloadtest.Sums(map[string][]byte{"r.tar.gz": tarball, "other.tar": []byte("x")})
	s.Set("/img/r.tar.gz", tarball)
	s.Set("/img/SHA256SUMS", sums)
	if signer != nil {
		s.Set("/img/SHA256SUMS.gpg", signer.Sign(t, sums))
	}
	return s, sums
}

// nothingLeft fails when a refused create left a machine, a staging tree
// or a download behind.
func nothingLeft(t *testing.T, m *Manager, name, what string) {
	t.Helper()
	noStaging(t, m)
	if _, err := os.Lstat(m.Dir(name)); !os.IsNotExist(err) {
		t.Errorf("%s: machine %s made: %v", what, name, err)
	}
	ents, _ := os.ReadDir(m.DownloadsDir())
	for _, e := range ents {
		if e.Name() != ".lck" {
			t.Errorf("%s: left in the downloads: %s", what, e.Name())
		}
	}
}

func TestCreateFromURL(t *testing.T) {
	m := realManager(t)
	signer := downloadtest.NewSigner(t, "signer")
	s, _ := urlServer(t, signer)
	url := s.URL + "/img/r.tar.gz"
	var notices []string
	var phases []string
	o := CreateOptions{From: url, Notice: func(l string) { notices = append(notices, l) },
		Progress: func(st Stage) { phases = append(phases, st.Line) }}
	if err := m.createErr(context.Background(), "web", o); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(m.Tree("web"), "etc/hostname")); err != nil || string(b) != "web\n" {
		t.Errorf("hostname %q %v", b, err)
	}
	if len(notices) != 1 || !strings.HasPrefix(notices[0], "downloaded r.tar.gz: ") || !strings.Contains(notices[0], "checked against SHA256SUMS") {
		t.Errorf("notices %q", notices)
	}
	if !strings.Contains(strings.Join(phases, "\n"), "downloading r.tar.gz: ") {
		t.Errorf("progress %q", phases)
	}
	// The verified download is kept: a second create does not fetch it.
	notices = nil
	if err := m.createErr(context.Background(), "web2", o); err != nil {
		t.Fatal(err)
	}
	if n := s.Gets("/img/r.tar.gz"); n != 1 {
		t.Errorf("fetched %d times", n)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "kept from an earlier download") {
		t.Errorf("notices %q", notices)
	}
	// A damaged cached copy is fetched anew.
	ents, _ := filepath.Glob(filepath.Join(m.DownloadsDir(), "[0-9a-f]*"))
	if len(ents) != 1 {
		t.Fatalf("cached: %v", ents)
	}
	if err := os.WriteFile(ents[0], []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.createErr(context.Background(), "web3", o); err != nil || s.Gets("/img/r.tar.gz") != 2 {
		t.Errorf("after damage: %v, %d gets", err, s.Gets("/img/r.tar.gz"))
	}
	// Signed, with the signer's key.
	o.Verify, o.Keyring, notices = VerifySignature, signer.Keyring, nil
	if err := m.createErr(context.Background(), "signed", o); err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "signed by key ") {
		t.Errorf("notices %q", notices)
	}
	// Not verified: nothing kept.
	o = CreateOptions{From: url, Verify: VerifyNo}
	if err := m.createErr(context.Background(), "unverified", o); err != nil {
		t.Fatal(err)
	}
	if ents, _ = filepath.Glob(filepath.Join(m.DownloadsDir(), "*")); len(ents) != 1 {
		t.Errorf("downloads: %v", ents)
	}
	// Prune takes the kept download.
	items, err := m.Prune(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, it := range items {
		found = found || it.Kind == PruneDownloads && it.Path == ents[0] && it.Removed
	}
	if !found {
		t.Errorf("prune: %+v", items)
	}
	if _, err := os.Lstat(ents[0]); !os.IsNotExist(err) {
		t.Errorf("after prune: %v", err)
	}
}

func TestCreateFromURLRefusals(t *testing.T) {
	m := realManager(t)
	signer := downloadtest.NewSigner(t, "signer")
	other := downloadtest.NewSigner(t, "other")
	s, sums := urlServer(t, signer)
	tarball := s.Files["/img/r.tar.gz"]
	s.Set("/bad/r.tar.gz", tarball)
	s.Set("/bad/SHA256SUMS", downloadtest.Sums(map[string][]byte{"r.tar.gz": []byte("something else")}))
	s.Set("/nosums/r.tar.gz", tarball)
	s.Set("/nosig/r.tar.gz", tarball)
	s.Set("/nosig/SHA256SUMS", sums)
	s.Set("/othersig/r.tar.gz", tarball)
	s.Set("/othersig/SHA256SUMS", sums)
	s.Set("/othersig/SHA256SUMS.gpg", other.Sign(t, sums))
	s.Set("/twice/r.tar.gz", tarball)
	s.Set("/twice/SHA256SUMS", append(append([]byte{}, sums...), sums...))
	s.Set("/dotdot/r.tar.gz", tarball)
	s.Set("/dotdot/SHA256SUMS", downloadtest.Sums(map[string][]byte{"../r.tar.gz": tarball}))
	s.Set("/gone/SHA256SUMS", sums)
	s.Set("/err/SHA256SUMS", sums)
	s.Handle("/err/r.tar.gz", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	s.Set("/stall/SHA256SUMS", sums)
	s.Handle("/stall/r.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write(tarball[:100])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	s.Set("/toofile/SHA256SUMS", sums)
	s.Handle("/toofile/r.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/shadow", http.StatusFound)
	})
	s.Set("/toremote/SHA256SUMS", sums)
	s.Handle("/toremote/r.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://192.0.2.1/r.tar.gz", http.StatusFound)
	})
	notar := []byte("this is no tarball")
	s.Set("/notar/r.tar.gz", notar)
	s.Set("/notar/SHA256SUMS", downloadtest.Sums(map[string][]byte{"r.tar.gz": notar}))
	u := s.URL
	for _, c := range []struct {
		what string
		o    CreateOptions
		is   error
		text string
	}{
		{"wrong checksum", CreateOptions{From: u + "/bad/r.tar.gz"}, ErrVerify, "SHA256SUMS says"},
		{"no SHA256SUMS", CreateOptions{From: u + "/nosums/r.tar.gz"}, ErrVerify, "no SHA256SUMS beside it"},
		{"no signature", CreateOptions{From: u + "/nosig/r.tar.gz", Verify: VerifySignature, Keyring: signer.Keyring}, ErrVerify, "no SHA256SUMS.gpg beside it"},
		{"another key's signature", CreateOptions{From: u + "/othersig/r.tar.gz", Verify: VerifySignature, Keyring: signer.Keyring}, ErrVerify, "not in the keyring"},
		{"a keyring without the signer", CreateOptions{From: u + "/img/r.tar.gz", Verify: VerifySignature, Keyring: other.Keyring}, ErrVerify, "not in the keyring"},
		{"name twice", CreateOptions{From: u + "/twice/r.tar.gz"}, ErrVerify, "names r.tar.gz twice"},
		{"name with ..", CreateOptions{From: u + "/dotdot/r.tar.gz"}, ErrVerify, "no line for r.tar.gz"},
		{"404", CreateOptions{From: u + "/gone/r.tar.gz"}, nil, "404 Not Found"},
		{"500", CreateOptions{From: u + "/err/r.tar.gz"}, nil, "answered HTTP 500"},
		{"stall", CreateOptions{From: u + "/stall/r.tar.gz", Stall: 300 * time.Millisecond}, nil, "nothing came for 300ms"},
		{"over the cap", CreateOptions{From: u + "/img/r.tar.gz", MaxImageBytes: 100}, nil, "--max-size raises the cap"},
		{"redirect to file:", CreateOptions{From: u + "/toofile/r.tar.gz"}, nil, "not http or https"},
		{"redirect to plain HTTP elsewhere", CreateOptions{From: u + "/toremote/r.tar.gz"}, nil, "plain HTTP to 192.0.2.1"},
		{"not a tarball", CreateOptions{From: u + "/notar/r.tar.gz"}, nil, "r.tar.gz"},
		{"plain HTTP elsewhere", CreateOptions{From: "http://192.0.2.1/r.tar.gz"}, ErrInvalidOption, "use https://, or --verify=signature"},
		{"credentials", CreateOptions{From: "https://u:secret@192.0.2.1/r.tar.gz"}, ErrInvalidOption, "carries credentials"},
		{"bad verify", CreateOptions{From: u + "/img/r.tar.gz", Verify: "maybe"}, ErrInvalidOption, "give checksum, signature or no"},
		{"keyring without signature", CreateOptions{From: u + "/img/r.tar.gz", Keyring: signer.Keyring}, ErrInvalidOption, "--keyring goes with"},
		{"missing keyring", CreateOptions{From: u + "/img/r.tar.gz", Verify: VerifySignature, Keyring: "/nonexistent.gpg"}, nil, "keyring"},
		{"overlay", CreateOptions{From: u + "/img/r.tar.gz", Storage: StorageOverlay}, ErrInvalidOption, "a copy for now"},
	} {
		err := m.createErr(context.Background(), "refused", c.o)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), c.text) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v, want %q", c.what, err, c.text)
		}
		nothingLeft(t, m, "refused", c.what)
	}
}

func TestCreateFromURLInterrupted(t *testing.T) {
	m := realManager(t)
	s, sums := urlServer(t, nil)
	started := make(chan struct{})
	s.Set("/slow/SHA256SUMS", sums)
	s.Handle("/slow/r.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.createErr(ctx, "slow", CreateOptions{From: s.URL + "/slow/r.tar.gz"}) }()
	<-started
	poll(t, "the download started", func() bool {
		ents, _ := filepath.Glob(filepath.Join(m.DownloadsDir(), ".#*"))
		return len(ents) == 1
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("interrupted: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("create did not stop")
	}
	nothingLeft(t, m, "slow", "interrupted")
	// What a killed download left is swept by the next create.
	if err := os.WriteFile(filepath.Join(m.DownloadsDir(), ".#killed.123"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.createErr(context.Background(), "web", CreateOptions{From: s.URL + "/img/r.tar.gz", Verify: VerifyNo}); err != nil {
		t.Fatal(err)
	}
	nothingLeft(t, m, "refused", "after a kill")
}
