package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
)

// versionRunner answers every program with a version on stdout, and
// records what it was asked to run.
type versionRunner struct{ ran []string }

func (v *versionRunner) Run(ctx context.Context, c *host.Cmd) error {
	v.ran = append(v.ran, c.String())
	if c.Stdout != nil {
		fmt.Fprintf(c.Stdout, "%s 1.2.3\nmore lines\n", filepath.Base(c.Path))
	}
	if filepath.Base(c.Path) == "mmdebstrap" {
		return &host.ExitError{Cmd: c.Path, Status: 1}
	}
	return nil
}

func TestDoctorAsksProgramsThroughTheRunner(t *testing.T) {
	r := &versionRunner{}
	d := Doctor{OpenErr: errors.New("root directory /nope does not exist"), Pool: "10.89.0.0/16", Runner: r,
		LookPath: func(name string) (string, error) {
			if name == "debootstrap" {
				return "", exec.ErrNotFound
			}
			return "/usr/bin/" + name, nil
		}}
	checks := d.Checks(context.Background())
	want := []string{"/usr/bin/systemd-nspawn --version", "/usr/bin/mmdebstrap --version", "/usr/bin/nsenter --version"}
	if strings.Join(r.ran, "|") != strings.Join(want, "|") {
		t.Errorf("ran %q, want %q", r.ran, want)
	}
	byName := map[string]Check{}
	var names []string
	for _, ch := range checks {
		byName[ch.Name] = ch
		names = append(names, ch.Name)
	}
	for name, want := range map[string]Check{
		"systemd-nspawn": {Name: "systemd-nspawn", Needed: true, OK: true, Detail: "/usr/bin/systemd-nspawn systemd-nspawn 1.2.3", Fix: "apt-get install systemd-container"},
		"debootstrap":    {Name: "debootstrap", Needed: true, OK: false, Detail: "-", Fix: "apt-get install debootstrap"},
		// A program that fails to say its version is still there.
		"mmdebstrap": {Name: "mmdebstrap", OK: true, Detail: "/usr/bin/mmdebstrap mmdebstrap 1.2.3", Fix: "optional: apt-get install mmdebstrap"},
		"backend":    {Name: "backend", Needed: true, OK: false, Detail: "root directory /nope does not exist"},
	} {
		if got := byName[name]; got != want {
			t.Errorf("%s: %+v, want %+v", name, got, want)
		}
	}
	// Without a manager, nothing of the root directory is checked.
	for _, name := range []string{"root dir", "free space", "machine IDs"} {
		if _, ok := byName[name]; ok {
			t.Errorf("check %q without a manager", name)
		}
	}
	wantOrder := []string{"root", "systemd-nspawn", "debootstrap", "mmdebstrap", "debian keyring", "ubuntu keyring", "machine names", "nsenter",
		"backend", "cgroups", "system bus", "systemd (PID 1)", "systemd-networkd", "inotify"}
	if !reflect.DeepEqual(names, wantOrder) {
		t.Errorf("checks in order %q\nwant %q", names, wantOrder)
	}
	if os.Geteuid() == 0 && !strings.Contains(byName["systemd-networkd"].Detail, "nsbox leaves them") &&
		!strings.HasSuffix(byName["systemd-networkd"].Detail, "from 10.89.0.0/16") {
		t.Errorf("networkd names no pool: %+v", byName["systemd-networkd"])
	}
}

func TestDoctorWithManager(t *testing.T) {
	m, runner := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	m.Why = "chosen with --backend"
	id := "41e810596f0b4bfda8a11cf2422810b8\n"
	for _, n := range []string{"a", "b"} {
		mkMachine(t, m, n)
		os.WriteFile(filepath.Join(m.Dir(n), "etc/machine-id"), []byte(id), 0o444)
	}
	checks := Doctor{Manager: m, LookPath: func(name string) (string, error) { return "/bin/" + name, nil }}.Checks(context.Background())
	if len(runner.ran) != 4 {
		t.Errorf("without a Runner of its own, doctor runs through the manager's: %q", runner.ran)
	}
	byName := map[string]Check{}
	for _, ch := range checks {
		byName[ch.Name] = ch
	}
	if ch := byName["backend"]; !ch.OK || ch.Detail != "machined: chosen with --backend" {
		t.Errorf("backend: %+v", ch)
	}
	if ch := byName["machine IDs"]; ch.OK || ch.Detail != "shared by a, b" || ch.Fix == "" {
		t.Errorf("machine IDs: %+v", ch)
	}
	if _, ok := byName["root dir"]; !ok {
		t.Error("no root dir check")
	}
	if _, ok := byName["free space"]; !ok {
		t.Error("no free space check")
	}
	if os.Geteuid() == 0 && !strings.Contains(byName["systemd-networkd"].Detail, "nsbox leaves them") &&
		!strings.HasSuffix(byName["systemd-networkd"].Detail, "from 10.89.0.0/16") {
		t.Errorf("networkd names not the manager's pool: %+v", byName["systemd-networkd"])
	}
}

func TestRootDirCheck(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ch := rootDirCheck(dir)
	if os.Geteuid() == 0 && (!ch.OK || ch.Detail != dir+" mode 0700") {
		t.Errorf("0700, root's: %+v", ch)
	}
	os.Chmod(dir, 0o755)
	if ch := rootDirCheck(dir); ch.OK || !strings.HasPrefix(ch.Detail, dir+" mode 0755: ") || ch.Fix != "chmod 0700 "+dir+" (as /var/lib/machines is)" {
		t.Errorf("0755: %+v", ch)
	}
	if ch := rootDirCheck(filepath.Join(dir, "nope")); ch.OK || !ch.Needed {
		t.Errorf("missing: %+v", ch)
	}
}

func TestInotifyCheck(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		limit string
		ok    bool
		room  string
	}{
		{"128\n", false, "= 128: room for about 16 running machines"},
		{"511", false, "= 511: room for about 63 running machines"},
		{"512\n", true, "= 512: room for about 64 running machines"},
		{"8192\n", true, "= 8192: room for about 1024 running machines"},
	} {
		p := filepath.Join(dir, "max_user_instances")
		os.WriteFile(p, []byte(tc.limit), 0o644)
		ch := inotifyCheck(p)
		if ch.OK != tc.ok || !strings.HasSuffix(ch.Detail, tc.room) || ch.Fix == "" {
			t.Errorf("limit %q: %+v", tc.limit, ch)
		}
	}
	if ch := inotifyCheck(filepath.Join(dir, "nope")); !ch.OK || ch.Detail != "limit unknown" {
		t.Errorf("unreadable limit: %+v", ch)
	}
}

// The check of this host's cgroups names a layout and fails only with a
// fix.
func TestCgroupCheck(t *testing.T) {
	ch := cgroupCheck()
	if ch.Name != "cgroups" || ch.Detail == "" || !ch.OK && ch.Fix == "" {
		t.Errorf("%+v", ch)
	}
}

func TestNamesCheckReadsTheHostsLine(t *testing.T) {
	dir := t.TempDir()
	for text, ok := range map[string]bool{
		"passwd: files\nhosts:          files mymachines dns\n": true,
		"hosts: files dns\n# hosts: files mymachines\n":         false,
		"hosts: files dns mymachines [!UNAVAIL=return]\n":       true,
		"": false,
	} {
		p := filepath.Join(dir, "nsswitch.conf")
		os.WriteFile(p, []byte(text), 0o644)
		if got := namesCheck(p); got.OK != ok || got.Needed {
			t.Errorf("%q: %+v, want ok %v and not needed", text, got, ok)
		}
	}
}
