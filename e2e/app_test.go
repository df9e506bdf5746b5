//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var (
	appImageOnce sync.Once
	appImageDir  string // under suiteCache: the layout's directory name
	appImageErr  error
)

// appImage is an OCI image layout of an application image, as most
// images on registries are: no init, one static program (testdata/app,
// built here; no libc, no getent, no /usr), a passwd with the user it
// runs as, and a configuration
// with an Entrypoint, a Cmd, an environment, a working directory the
// image lacks and a user given as UID:GID. It is kept in the suite's
// cache (which the machined test host has too), under the hash of the
// program's source, and returned as a path under e's cache directory.
func appImage(t *testing.T, e *env) string {
	t.Helper()
	appImageOnce.Do(func() { appImageDir, appImageErr = buildAppImage() })
	if appImageErr != nil {
		t.Fatal(appImageErr)
	}
	return filepath.Join(e.cacheDir, appImageDir)
}

func buildAppImage() (string, error) {
	src, err := os.ReadFile("testdata/app/main.go")
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(src)
	rel := filepath.Join("testimages", "app-"+hex.EncodeToString(sum[:6]))
	dir := filepath.Join(suiteCache, rel)
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		return rel, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir)+"", "")
	if os.IsNotExist(err) {
		if err = os.MkdirAll(filepath.Dir(dir), 0o755); err == nil {
			tmp, err = os.MkdirTemp(filepath.Dir(dir), "")
		}
	}
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "app.bin")
	build := exec.Command("go", "build", "-o", bin, "./testdata/app")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the test app: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	files := []struct {
		name string
		mode int64
		data string
	}{
		{"etc/", 0o755, ""},
		{"etc/passwd", 0o644, "root:x:0:0:root:/root:/app\napp:x:1000:1000:app:/data:/app\n"},
		{"etc/group", 0o644, "root:x:0:\napp:x:1000:\n"},
		{"app", 0o755, string(prog)},
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := w.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := w.Write([]byte(f.data)); err != nil {
			return "", err
		}
	}
	w.Close()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{
		Entrypoint: []string{"/app"}, Cmd: []string{"serve", "8080"},
		Env:        []string{"PATH=/", "GREETING=hello from an image"},
		WorkingDir: "/data", User: "1000:1000",
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	out := filepath.Join(tmp, "layout")
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return "", err
	}
	if err := p.AppendImage(img); err != nil {
		return "", err
	}
	if err := os.Rename(out, dir); err != nil && !os.IsExist(err) {
		return "", err
	}
	return rel, nil
}

// appScenario makes an app machine from the application image and runs
// it as the issue asks: boot runs the image's Entrypoint and Cmd with its
// Env, WorkingDir and User under nspawn's stub init; status and list say
// so; it answers on its own address over its veth, which nsbox
// configured; logs shows its output; shell runs beside it; stop sends it
// SIGTERM; --cmd replaces the Cmd; a command that is not there is
// refused before anything starts; --boot is refused for an image without
// an init.
func appScenario(t *testing.T, e *env) {
	dir := appImage(t, e)
	const name = "e2e-app"
	defer e.nsb(t, "remove", "--force", name)
	wantFail(t, e.nsb(t, "create", name, "--from", "oci:"+dir, "--boot"), 1, "no init")
	e.mustSh(t, "test ! -e "+e.rootDir+"/"+name)
	e.mustNsb(t, "create", name, "--from", "oci:"+dir)

	var st struct {
		State     string   `json:"state"`
		Addresses []string `json:"addresses"`
		App       *struct {
			Argv    []string `json:"argv"`
			Workdir string   `json:"workdir"`
			User    string   `json:"user"`
		} `json:"app"`
	}
	statusOf := func() {
		t.Helper()
		if err := json.Unmarshal([]byte(e.mustNsb(t, "status", name, "-o", "json").stdout), &st); err != nil {
			t.Fatal(err)
		}
	}
	statusOf()
	if a := st.App; a == nil || strings.Join(a.Argv, " ") != "/app serve 8080" || a.Workdir != "/data" || a.User != "app" {
		t.Fatalf("status of an app machine: %+v", st.App)
	}
	if out := e.mustNsb(t, "list").stdout; !strings.Contains(out, "stopped (app)") {
		t.Errorf("list does not say it is an app machine:\n%s", out)
	}
	if text := e.mustNsb(t, "cat", name).stdout; !strings.Contains(text, "Environment='GREETING=hello from an image'") || !strings.Contains(text, "Boot=no") {
		t.Errorf("settings of an app machine:\n%s", text)
	}

	e.mustNsb(t, "boot", name)
	statusOf()
	if st.State != "running" || len(st.Addresses) == 0 {
		t.Fatalf("after boot: %+v", st)
	}
	addr := ""
	for _, a := range st.Addresses {
		if !strings.Contains(a, ":") {
			addr = a
		}
	}
	// Over the veth: the host end and the app's end are both nsbox's.
	var got string
	waitFor(t, 20*time.Second, "the app answering on "+addr+":8080", func() (bool, string) {
		got = e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+addr+"/8080; cat <&3'").stdout
		return strings.HasPrefix(got, "hello from app:"), got
	})
	for _, want := range []string{"pid=2 ", "uid=1000 ", "gid=1000 ", "cwd=/data ", `greeting="hello from an image"`} {
		if !strings.Contains(got, want) {
			t.Errorf("the app runs otherwise than its image says: no %q in %q", want, got)
		}
	}
	// Beside it: a command in the machine, as root, in its namespaces.
	probe := e.mustNsb(t, "shell", name, "--", "/app", "probe").stdout
	if !strings.Contains(probe, "uid=0 ") || strings.Contains(probe, "pid=2 ") {
		t.Errorf("shell beside the app: %q", probe)
	}
	if r := e.nsb(t, "shell", name, "--", "/app", "nonsense"); r.code != 2 {
		t.Errorf("exit status of a command beside the app: %d", r.code)
	}
	waitFor(t, 10*time.Second, "the app's output in logs", func() (bool, string) {
		out := e.nsb(t, "logs", name).stdout
		return strings.Contains(out, "app started: pid=2 uid=1000"), out
	})
	e.mustNsb(t, "stop", name)
	waitFor(t, 10*time.Second, "the app's last words in logs", func() (bool, string) {
		out := e.nsb(t, "logs", name).stdout
		return strings.Contains(out, "app got SIGTERM"), out
	})
	if r := e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+addr+"/8080; cat <&3'"); strings.Contains(r.stdout, "hello from app") {
		t.Errorf("the app answers after stop: %s", r)
	}

	// --cmd replaces the image's Cmd and is remembered.
	e.mustNsb(t, "boot", name, "--cmd", "serve 9090")
	waitFor(t, 20*time.Second, "the app answering on "+addr+":9090", func() (bool, string) {
		got = e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+addr+"/9090; cat <&3'").stdout
		return strings.Contains(got, `args=["serve" "9090"]`), got
	})
	e.mustNsb(t, "stop", name)
	statusOf()
	if a := st.App; a == nil || strings.Join(a.Argv, " ") != "/app serve 9090" {
		t.Errorf("--cmd not remembered: %+v", st.App)
	}
	e.mustNsb(t, "boot", name, "--app")
	statusOf()
	if a := st.App; a == nil || strings.Join(a.Argv, " ") != "/app serve 8080" || st.State != "running" {
		t.Errorf("--app is not the image's command again: %+v", st)
	}
	e.mustNsb(t, "stop", name)
	if e.name == "machined" {
		// Started by systemd alone, as at the host's boot: the unit
		// enable wrote runs the app as its user and configures its veth.
		e.mustNsb(t, "enable", name)
		e.mustSh(t, "systemctl start nsbox@"+name+".service")
		waitFor(t, 20*time.Second, "the app started by its unit answering", func() (bool, string) {
			got = e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+addr+"/8080; cat <&3'").stdout
			return strings.Contains(got, "uid=1000 "), got
		})
		e.mustSh(t, "systemctl stop nsbox@"+name+".service")
		e.mustNsb(t, "disable", name)
	}
	// No init to boot: refused before anything starts, options kept.
	wantFail(t, e.nsb(t, "boot", name, "--boot"), 1, "no init")
	statusOf()
	if st.State != "stopped" || st.App == nil {
		t.Errorf("after a refused --boot: %+v", st)
	}
}
