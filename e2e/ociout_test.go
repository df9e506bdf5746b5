//go:build e2e

package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ociResult is export --format oci's and push's JSON.
type ociResult struct {
	Name        string `json:"name"`
	Destination string `json:"destination"`
	Digest      string `json:"digest"`
	Platform    string `json:"platform"`
	Layers      []struct {
		Digest string `json:"digest"`
		DiffID string `json:"diff_id"`
		Size   int64  `json:"size_bytes"`
		From   string `json:"from"`
		Cached bool   `json:"cached"`
	} `json:"layers"`
	Size int64 `json:"size_bytes"`
	Time int64 `json:"time_ns"`
}

func parseOCIResult(t *testing.T, r result) ociResult {
	t.Helper()
	var res ociResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("JSON: %v\n%s", err, r)
	}
	return res
}

// ociOutScenario sends an overlay machine out as an image and back in:
// its base version as one layer (built once, then cached), what it
// changed as a second with its deletions as OCI whiteouts, owners as the
// machine sees them. Export --format oci to a directory and create --from
// oci:DIR on both backends; push to a registry on loopback and create
// --from docker:// on the direct one (the machined test host cannot reach
// this host's loopback). And the refusals, each one line, nothing left.
func ociOutScenario(t *testing.T, e *env) {
	const src, back = "e2e-ociout", "e2e-ociout-back"
	work := "/var/tmp/e2e-ociout-" + e.name
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work)
	defer e.sh(t, "rm -rf "+work)
	defer e.nsb(t, "remove", "--force", src)
	defer e.nsb(t, "remove", "--force", back)
	// Nothing of a cut-short export or push stays in the image cache.
	noTemp := func(t *testing.T) {
		t.Helper()
		if left := e.query(t, "ls -a "+e.cacheDir+"/oci/blobs/sha256 "+e.cacheDir+"/oci "+work+" 2>/dev/null | grep '^\\.#'"); left != "" {
			t.Errorf("left behind: %s", left)
		}
	}

	e.mustNsb(t, "create", src, "--release", "bookworm", "--storage", "overlay")
	e.mustNsb(t, "boot", src)
	e.mustNsb(t, "shell", src, "--", "sh", "-c", strings.Join([]string{
		"echo from-the-machine > /etc/e2e-motd",
		"rm /etc/issue.net",
		"mkdir -p /srv/app && echo app > /srv/app/f && chown -R 1000:1001 /srv/app",
		// A name with a newline, as a machine's root may make.
		`touch "$(printf '/srv/a\nb')"`,
		// An opaque directory: the base's /usr/share/doc/apt is
		// replaced by one with only this.
		"rm -rf /usr/share/doc/apt && mkdir /usr/share/doc/apt && echo only > /usr/share/doc/apt/only",
	}, " && "))

	t.Run("refused while running", func(t *testing.T) {
		wantFail(t, e.nsb(t, "export", src, "--format", "oci", work+"/lay"), exitRunning, "running")
		wantFail(t, e.nsb(t, "push", src, "docker://127.0.0.1:1/e2e/x:1"), exitRunning, "running")
		e.mustSh(t, "test ! -e "+work+"/lay")
	})
	e.mustNsb(t, "stop", src)

	var exported ociResult
	t.Run("export", func(t *testing.T) {
		exported = parseOCIResult(t, e.mustNsb(t, "export", src, "--format", "oci", work+"/lay", "-o", "json"))
		if len(exported.Layers) != 2 || exported.Layers[0].From != "base" || exported.Layers[1].From != "machine" || !strings.HasPrefix(exported.Digest, "sha256:") {
			t.Fatalf("export: %+v", exported)
		}
		if got := e.mustSh(t, "ls "+work+"/lay; stat -c %a "+work+"/lay"); got != "blobs\nindex.json\noci-layout\n700\n" {
			t.Errorf("the layout: %q", got)
		}
		for _, l := range exported.Layers {
			e.mustSh(t, "test -f "+work+"/lay/blobs/sha256/"+strings.TrimPrefix(l.Digest, "sha256:"))
		}
		// The machine's layer: its deletion as a whiteout, the opaque
		// directory marked, its owners unshifted.
		members := e.mustSh(t, "tar -tvzf "+work+"/lay/blobs/sha256/"+strings.TrimPrefix(exported.Layers[1].Digest, "sha256:"))
		for _, want := range []string{"etc/.wh.issue.net", "usr/share/doc/apt/.wh..wh..opq", " 1000/1001 ", "etc/e2e-motd"} {
			if !strings.Contains(members, want) {
				t.Errorf("the machine's layer has no %q:\n%s", want, members)
			}
		}
		// A second export takes the base's layer from the cache.
		again := parseOCIResult(t, e.mustNsb(t, "export", src, "--format", "oci", work+"/lay2", "-o", "json"))
		if !again.Layers[0].Cached || again.Layers[0].Digest != exported.Layers[0].Digest || again.Layers[1].Digest != exported.Layers[1].Digest {
			t.Errorf("a second export: %+v\nfirst: %+v", again, exported)
		}
		noTemp(t)
	})

	checkTree := func(t *testing.T, machine string) {
		t.Helper()
		root := e.rootDir + "/" + machine
		got := e.mustSh(t, "cat "+root+"/etc/e2e-motd; test -e "+root+"/etc/issue.net || echo gone; stat -c '%u:%g' "+root+"/srv/app "+root+"/srv/app/f "+root+"/etc/passwd; ls "+root+"/usr/share/doc/apt; test -f \"$(printf '"+root+"/srv/a\\nb')\" && echo newline")
		if want := "from-the-machine\ngone\n1000:1001\n1000:1001\n0:0\nonly\nnewline\n"; got != want {
			t.Errorf("%s made from the image:\n got %q\nwant %q", machine, got, want)
		}
	}
	t.Run("create from the layout", func(t *testing.T) {
		// A copy: its tree is read from the host below (an overlay
		// machine's is mounted only while it runs).
		e.mustNsb(t, "create", back, "--from", "oci:"+work+"/lay", "--storage", "copy")
		checkTree(t, back)
		// It boots as the machine did.
		e.mustNsb(t, "boot", back)
		if r := e.mustNsb(t, "shell", back, "--", "cat", "/etc/e2e-motd"); r.stdout != "from-the-machine\n" {
			t.Errorf("inside: %s", r)
		}
		e.mustNsb(t, "stop", back)
		e.mustNsb(t, "remove", back)
	})

	t.Run("export refusals", func(t *testing.T) {
		wantFail(t, e.nsb(t, "export", "e2e-ociout-none", "--format", "oci", work+"/x"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "export", src, "--format", "oci", work+"/lay"), 1, "not empty")
		e.mustSh(t, "echo mine > "+work+"/file")
		wantFail(t, e.nsb(t, "export", src, "--format", "oci", work+"/file"), 1, "not a directory")
		wantFail(t, e.nsb(t, "export", src, "--format", "oci", "--force", work+"/y"), 2, "--force")
		wantFail(t, e.nsb(t, "export", src, "--format", "zip", work+"/y"), 2, "tar or oci")
		// A link an unprivileged user planted in /tmp is not followed.
		e.mustSh(t, "su nobody -s /bin/sh -c 'ln -sfn /etc/e2e-ociout-planted /tmp/e2e-ociout-link'")
		defer e.sh(t, "rm -f /tmp/e2e-ociout-link")
		wantFail(t, e.nsb(t, "export", src, "--format", "oci", "/tmp/e2e-ociout-link"), 1, "not a directory")
		e.mustSh(t, "test ! -e /etc/e2e-ociout-planted && test \"$(cat "+work+"/file)\" = mine && test -f "+work+"/lay/index.json")
		wantFail(t, e.nsb(t, "push", src, "docker://Not/Valid"), 2, "not an image reference")
		wantFail(t, e.nsb(t, "push", src, "oci:"+work+"/z"), 2, "push sends to a registry")
		noTemp(t)
	})

	if e.name != "direct" {
		return
	}
	t.Run("push", func(t *testing.T) { ociPush(t, e, src, back, work, exported, checkTree, noTemp) })
}

// ociPush pushes machine src to a registry on loopback in this process,
// creates back from it, and attacks the push.
func ociPush(t *testing.T, e *env, src, back, work string, exported ociResult, checkTree func(*testing.T, string), noTemp func(*testing.T)) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	var puts []string
	var wrap func(w http.ResponseWriter, r *http.Request) bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.Method == "PUT" {
			puts = append(puts, r.URL.Path+" "+r.URL.Query().Get("digest"))
		}
		f := wrap
		mu.Unlock()
		if f != nil && f(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	setWrap := func(f func(w http.ResponseWriter, r *http.Request) bool) {
		mu.Lock()
		wrap = f
		mu.Unlock()
	}
	sentBase := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, p := range puts {
			if strings.HasSuffix(p, " "+exported.Layers[0].Digest) {
				n++
			}
		}
		return n
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := "docker://" + host + "/e2e/ociout:1"

	res := parseOCIResult(t, e.mustNsb(t, "push", src, ref, "-o", "json"))
	if len(res.Layers) != 2 || res.Layers[0].Digest != exported.Layers[0].Digest || !res.Layers[0].Cached || res.Destination != ref {
		t.Errorf("push: %+v", res)
	}
	// What a registry client reads: the image nsbox said, with the
	// configuration of a machine that boots.
	r, _ := name.ParseReference(host + "/e2e/ociout:1")
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	cf, _ := img.ConfigFile()
	if d.String() != res.Digest || cf.Config.Cmd[0] != "/sbin/init" || cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("the registry's image %s: %+v", d, cf)
	}
	e.mustNsb(t, "create", back, "--from", ref, "--storage", "copy")
	checkTree(t, back)
	e.mustNsb(t, "remove", back)
	// A second push of the machine sends its base layer no more.
	e.mustNsb(t, "push", src, "docker://"+host+"/e2e/ociout:2")
	if n := sentBase(); n != 1 {
		t.Errorf("the base layer was sent %d times", n)
	}

	t.Run("refusals", func(t *testing.T) {
		wantFail(t, e.nsb(t, "push", src, "docker://127.0.0.1:1/e2e/x:1"), 1, "does not answer")
		setWrap(func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("WWW-Authenticate", `Basic realm="e2e"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		})
		wantFail(t, e.nsb(t, "push", src, "docker://"+host+"/e2e/x:1"), 1, "needs credentials")
		setWrap(nil)
		noTemp(t)
	})

	t.Run("interrupted", func(t *testing.T) {
		// The registry takes the upload of the machine's layer, which
		// has changed, and never answers: Ctrl-C ends the push, and
		// nothing of it stays.
		e.mustSh(t, "head -c 20000000 /dev/urandom > "+work+"/big")
		e.mustNsb(t, "cp", work+"/big", src+":/big")
		uploading := make(chan struct{}, 1)
		setWrap(func(w http.ResponseWriter, r *http.Request) bool {
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
		defer setWrap(nil)
		before := e.mustSh(t, "ls -a "+e.cacheDir+"/oci/blobs/sha256")
		cmd := exec.Command(e.nsbox, e.argv("push", src, "docker://"+host+"/e2e/ociout:cut")[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-uploading:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatal("no upload began")
		}
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("push did not end on SIGINT")
		}
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("exit %d after SIGINT", code)
		}
		if after := e.mustSh(t, "ls -a "+e.cacheDir+"/oci/blobs/sha256"); after != before {
			t.Errorf("the cache changed:\n%s\nto\n%s", before, after)
		}
		noTemp(t)
	})
}
