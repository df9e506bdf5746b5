package bootstrap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/host"
)

func TestLookupRelease(t *testing.T) {
	r, err := LookupRelease("jammy", "")
	if err != nil || r.Distro.Name != "ubuntu" {
		t.Fatalf("jammy: %+v %v", r, err)
	}
	if r, err := LookupRelease("bookworm", "debian"); err != nil || r.Distro.Keyring != "/usr/share/keyrings/debian-archive-keyring.gpg" {
		t.Fatalf("bookworm: %+v %v", r, err)
	}
	_, err = LookupRelease("hamm", "")
	if !errors.Is(err, ErrUnknownRelease) || !strings.Contains(err.Error(), "bookworm") || !strings.Contains(err.Error(), "jammy") {
		t.Errorf("unknown release must list the known ones: %v", err)
	}
	if _, err := LookupRelease("jammy", "debian"); err == nil || !strings.Contains(err.Error(), "ubuntu") {
		t.Errorf("jammy as debian: %v", err)
	}
	if _, err := LookupRelease("bookworm", "arch"); err == nil {
		t.Error("unknown distro accepted")
	}
}

func TestDebootstrapArgs(t *testing.T) {
	deb, _ := LookupRelease("bookworm", "")
	jammy, _ := LookupRelease("jammy", "")
	for _, tc := range []struct {
		what   string
		o      Options
		script string
		want   []string
	}{
		{"debian defaults: no mirror, debootstrap picks", Options{Release: deb}, "",
			[]string{"--variant=minbase", "--include=systemd,systemd-sysv,dbus,iproute2,libnss-systemd", "--components=main",
				"--keyring=/usr/share/keyrings/debian-archive-keyring.gpg", "bookworm", "/srv/.#x"}},
		{"ubuntu jammy with universe and its keyring", Options{Release: jammy}, "",
			[]string{"--variant=minbase", "--include=systemd,systemd-sysv,dbus,iproute2,libnss-systemd", "--components=main,universe",
				"--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg", "jammy", "/srv/.#x"}},
		{"mirror, include, variant, arch, cache", Options{Release: deb, Mirror: "http://mirror.example/debian", Variant: "buildd",
			Include: []string{"nginx", "dbus", " curl "}, Arch: "arm64", CacheDir: "/var/cache/nsbox/debs"}, "",
			[]string{"--variant=buildd", "--include=systemd,systemd-sysv,dbus,iproute2,libnss-systemd,nginx,curl", "--components=main",
				"--keyring=/usr/share/keyrings/debian-archive-keyring.gpg", "--arch=arm64", "--cache-dir=/var/cache/nsbox/debs",
				"bookworm", "/srv/.#x", "http://mirror.example/debian"}},
		{"a release debootstrap has no script for", Options{Release: jammy, Mirror: "http://m/ubuntu"}, "/usr/share/debootstrap/scripts/gutsy",
			[]string{"--variant=minbase", "--include=systemd,systemd-sysv,dbus,iproute2,libnss-systemd", "--components=main,universe",
				"--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg", "jammy", "/srv/.#x", "http://m/ubuntu", "/usr/share/debootstrap/scripts/gutsy"}},
	} {
		if got := DebootstrapArgs(tc.o, "/srv/.#x", tc.script); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.what, got, tc.want)
		}
	}
}

func TestSuiteScript(t *testing.T) {
	noble, _ := LookupRelease("noble", "")
	trixie, _ := LookupRelease("trixie", "")
	none := func(string) bool { return false }
	all := func(string) bool { return true }
	if got := suiteScript(noble, none); got != "/usr/share/debootstrap/scripts/gutsy" {
		t.Errorf("noble without a script: %q", got)
	}
	if got := suiteScript(trixie, none); got != "/usr/share/debootstrap/scripts/sid" {
		t.Errorf("trixie without a script: %q", got)
	}
	if got := suiteScript(noble, all); got != "" {
		t.Errorf("noble with a script: %q", got)
	}
}

func TestCheckNamesThePackage(t *testing.T) {
	jammy, _ := LookupRelease("jammy", "")
	jammy.Distro.Keyring = filepath.Join(t.TempDir(), "missing.gpg")
	err := Check(Options{Release: jammy}, func(string) (string, error) { return "/usr/sbin/debootstrap", nil })
	if !errors.Is(err, host.ErrToolMissing) || !strings.Contains(err.Error(), "apt-get install ubuntu-keyring") {
		t.Errorf("missing keyring: %v", err)
	}
	// nsbox fetches Ubuntu's keyring itself where it has a place for it
	if err := Check(Options{Release: jammy, KeyringDir: t.TempDir()}, func(string) (string, error) { return "/usr/sbin/debootstrap", nil }); err != nil {
		t.Errorf("missing ubuntu keyring with a keyring dir: %v", err)
	}
	deb, _ := LookupRelease("bookworm", "")
	deb.Distro.Keyring = jammy.Distro.Keyring
	if err := Check(Options{Release: deb, KeyringDir: t.TempDir()}, func(string) (string, error) { return "/usr/sbin/debootstrap", nil }); !errors.Is(err, host.ErrToolMissing) {
		t.Errorf("missing debian keyring: %v", err)
	}
	err = Check(Options{Release: jammy}, func(string) (string, error) { return "", os.ErrNotExist })
	if !strings.Contains(err.Error(), "apt-get install debootstrap") {
		t.Errorf("missing debootstrap: %v", err)
	}
}

// fakeRunner records the command and plays back output and a result.
type fakeRunner struct {
	got   *host.Cmd
	lines []string
	err   error
}

func (f *fakeRunner) Run(ctx context.Context, c *host.Cmd) error {
	f.got = c
	for _, l := range f.lines {
		c.Lines(l)
	}
	return f.err
}

func TestDebootstrapFailureCarriesLogTail(t *testing.T) {
	target := t.TempDir()
	os.MkdirAll(filepath.Join(target, "debootstrap"), 0o755)
	os.WriteFile(filepath.Join(target, "debootstrap", "debootstrap.log"), []byte("a\nb\nE: Couldn't find these debs: nosuch\n"), 0o644)
	deb, _ := LookupRelease("bookworm", "")
	f := &fakeRunner{err: &host.ExitError{Cmd: "debootstrap", Status: 1, Tail: "E: failed"}}
	// A mirror of its own: the test must not depend on the host having
	// debootstrap's script for bookworm.
	err := Debootstrap(context.Background(), f, Options{Release: deb, Mirror: "http://127.0.0.1:9/debian"}, target, nil)
	if err == nil || !strings.Contains(err.Error(), "Couldn't find these debs: nosuch") || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("error lacks the log tail: %v", err)
	}
	if f.got.Path != "debootstrap" {
		t.Errorf("ran %s", f.got.Path)
	}
}

func TestProgress(t *testing.T) {
	var got []Stage
	p := newProgressParser(func(s Stage) { got = append(got, s) })
	for _, l := range []string{
		"I: Retrieving InRelease", "I: Retrieving libc6 2.36-9", "I: Validating libc6 2.36-9",
		"I: Retrieving dbus 1.14", "W: something", "I: Configuring systemd...", "I: Base system installed successfully.",
	} {
		p.line(l)
	}
	last := got[len(got)-1]
	if last.Phase != "done" {
		t.Errorf("last phase %q", last.Phase)
	}
	var retrieving Stage
	for _, s := range got {
		if s.Phase == "retrieving" {
			retrieving = s
		}
	}
	if retrieving.Packages != 1 || retrieving.Package != "dbus" {
		t.Errorf("retrieving: %+v", retrieving)
	}
	if got[4].Line != "W: something" {
		t.Errorf("raw lines are passed for --verbose: %+v", got[4])
	}
}

// heldRunner reports whether a lock is held while the program runs.
type heldRunner struct {
	lock string
	held bool
}

func (h *heldRunner) Run(ctx context.Context, c *host.Cmd) error {
	h.held = host.Held(h.lock)
	return nil
}

// TestDebootstrapHoldsThePackageCache: debootstrap fills the package
// cache under its lock, which prune needs to empty it; it is shared, so
// bootstraps of one release run side by side, and nothing of it is left
// after.
func TestDebootstrapHoldsThePackageCache(t *testing.T) {
	ctx := context.Background()
	cache := filepath.Join(t.TempDir(), "debs", "debian-bookworm")
	deb, _ := LookupRelease("bookworm", "")
	o := Options{Release: deb, Mirror: "http://127.0.0.1:9/debian", CacheDir: cache}
	h := &heldRunner{lock: debsLock(cache)}
	if err := Debootstrap(ctx, h, o, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if !h.held {
		t.Error("the package cache's lock was not held while debootstrap ran")
	}
	if host.Held(debsLock(cache)) {
		t.Error("the lock is held after debootstrap")
	}
	// Another bootstrap holds it: this one does not wait.
	other, err := host.LockFile(ctx, debsLock(cache), false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Unlock()
	quick, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := Debootstrap(quick, h, o, t.TempDir(), nil); err != nil {
		t.Errorf("beside another bootstrap: %v", err)
	}
}
