//go:build e2e

package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// urlScenario makes machines from a root file system tarball served over
// HTTP on loopback, in this test's own process: the suite's Debian base,
// exported as .tar.zst, with SHA256SUMS and its detached signature
// SHA256SUMS.gpg by a throwaway key made here with gpg. A machine made
// with the default verification boots and takes a shell; one verified by
// signature comes from the kept download (no second fetch); one with
// --verify=no says so. A wrong checksum, no SHA256SUMS, no signature, a
// signature by another key, a 404 and a 500 are each refused in one line
// with nothing left: no machine, no staging tree, no download.
//
// Direct backend only: the machined test host runs with a network of its
// own (--private-network) and cannot reach this process's loopback.
func urlScenario(t *testing.T, e *env) {
	if e.name != "direct" {
		t.Skip("the machined test host has a private network: the server on this host's loopback is out of its reach")
	}
	work := "/var/tmp/e2e-url-" + e.name
	e.mustSh(t, "rm -rf "+work+" && mkdir -p -m 700 "+work+"/srv/img "+work+"/gnupg")
	defer e.sh(t, "GNUPGHOME="+work+"/gnupg gpgconf --kill all; rm -rf "+work)
	downloads := e.cacheDir + "/downloads"
	defer e.sh(t, "rm -rf "+downloads)

	const src = "e2e-url-src"
	e.mustNsb(t, "create", src, "--release", "bookworm", "--storage", "copy")
	e.mustNsb(t, "export", src, work+"/srv/img/root.tar.zst")
	e.mustNsb(t, "remove", "--force", src)
	g := "GNUPGHOME=" + work + "/gnupg gpg --batch --passphrase '' --pinentry-mode loopback "
	e.mustSh(t, "set -e; cd "+work+"/srv/img; sha256sum root.tar.zst > SHA256SUMS\n"+
		g+"--quick-gen-key 'e2e signer <signer@e2e.test>' ed25519 sign never 2>/dev/null\n"+
		g+"--quick-gen-key 'e2e other <other@e2e.test>' ed25519 sign never 2>/dev/null\n"+
		g+"--export signer@e2e.test > "+work+"/signer.gpg\n"+
		g+"--export other@e2e.test > "+work+"/other.gpg\n"+
		g+"--local-user signer@e2e.test --detach-sign --output SHA256SUMS.gpg SHA256SUMS\n"+
		"mkdir ../bad ../nosums ../nosig ../othersig ../broken ../gone\n"+
		"ln root.tar.zst ../bad/; ln root.tar.zst ../nosums/; ln root.tar.zst ../nosig/; ln root.tar.zst ../othersig/\n"+
		"sed -E 's/^[0-9a-f]{64}/"+strings.Repeat("0", 64)+"/' SHA256SUMS > ../bad/SHA256SUMS; cp SHA256SUMS ../nosig/; cp SHA256SUMS ../othersig/; cp SHA256SUMS ../broken/; cp SHA256SUMS ../gone/\n"+
		g+"--local-user other@e2e.test --detach-sign --output ../othersig/SHA256SUMS.gpg SHA256SUMS\n")

	var mu sync.Mutex
	gets := map[string]int{}
	files := http.FileServer(http.Dir(work + "/srv"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gets[r.URL.Path]++
		mu.Unlock()
		if r.URL.Path == "/broken/root.tar.zst" {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		files.ServeHTTP(w, r)
	}))
	defer srv.Close()
	url := func(dir string) string { return srv.URL + "/" + dir + "/root.tar.zst" }

	const name = "e2e-url"
	defer e.nsb(t, "remove", "--force", name)
	r := e.mustNsb(t, "create", name, "--from", url("img"))
	if !strings.Contains(r.stderr, "downloaded root.tar.zst: ") || !strings.Contains(r.stderr, "checked against SHA256SUMS") {
		t.Errorf("create: %s", r)
	}
	e.mustNsb(t, "boot", name)
	out := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /etc/hostname; test -x /usr/bin/apt && echo apt").stdout
	if out != name+"\napt\n" {
		t.Errorf("inside the machine: %q", out)
	}
	e.mustNsb(t, "stop", name)

	// Verified by signature: from the kept download, fetched once.
	defer e.nsb(t, "remove", "--force", name+"-sig")
	r = e.mustNsb(t, "create", name+"-sig", "--from", url("img"), "--verify=signature", "--keyring", work+"/signer.gpg")
	if !strings.Contains(r.stderr, "kept from an earlier download") || !strings.Contains(r.stderr, "signed by key ") {
		t.Errorf("create --verify=signature: %s", r)
	}
	mu.Lock()
	if n := gets["/img/root.tar.zst"]; n != 1 {
		t.Errorf("the tarball was fetched %d times", n)
	}
	mu.Unlock()
	e.mustSh(t, "test -s "+e.rootDir+"/"+name+"-sig/etc/os-release && test -x "+e.rootDir+"/"+name+"-sig/usr/bin/bash")

	// Not verified: said, and nothing kept of it.
	defer e.nsb(t, "remove", "--force", name+"-no")
	r = e.mustNsb(t, "create", name+"-no", "--from", url("img"), "--verify=no")
	if !strings.Contains(r.stderr, "nsbox: warning: --verify=no: "+url("img")+" is not verified") {
		t.Errorf("create --verify=no: %s", r)
	}

	// prune knows the kept download.
	var rep struct {
		Items []struct{ Kind, Path string }
	}
	if err := json.Unmarshal([]byte(e.mustNsb(t, "prune", "--dry-run", "-o", "json").stdout), &rep); err != nil {
		t.Fatal(err)
	}
	kept := e.mustSh(t, "ls "+downloads)
	found := false
	for _, it := range rep.Items {
		found = found || it.Kind == "downloads" && it.Path == downloads+"/"+strings.TrimSpace(kept)
	}
	if !found {
		t.Errorf("prune --dry-run does not list the kept download %s: %+v", kept, rep.Items)
	}

	const bad = "e2e-url-bad"
	for _, c := range []struct {
		what string
		args []string
		says string
	}{
		{"a wrong checksum", []string{"--from", url("bad")}, "SHA256SUMS says"},
		{"no SHA256SUMS", []string{"--from", url("nosums")}, "no SHA256SUMS beside it"},
		{"no signature", []string{"--from", url("nosig"), "--verify=signature", "--keyring", work + "/signer.gpg"}, "no SHA256SUMS.gpg beside it"},
		{"another key's signature", []string{"--from", url("othersig"), "--verify=signature", "--keyring", work + "/signer.gpg"}, "made by a key that is not in the keyring"},
		{"a keyring without the signer", []string{"--from", url("img"), "--verify=signature", "--keyring", work + "/other.gpg"}, "made by a key that is not in the keyring"},
		{"404", []string{"--from", url("gone")}, "404 Not Found"},
		{"500", []string{"--from", url("broken")}, "answered HTTP 500"},
	} {
		wantFail(t, e.nsb(t, append([]string{"create", bad}, c.args...)...), 1, c.says)
		if left := e.query(t, "test -e "+e.rootDir+"/"+bad+" && echo machine; ls -A "+e.rootDir+"/.nsbox | grep '^\\.#"+bad+"\\.' | grep -v '\\.lck$'; ls -A "+downloads+" | grep -v '^\\.lck$' | grep -vx '"+strings.TrimSpace(kept)+"'"); left != "" {
			t.Errorf("%s: left behind: %s", c.what, left)
		}
	}
}
