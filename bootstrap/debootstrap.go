package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
)

// BasePackages are what every machine needs to boot under nspawn and be
// managed: an init, a bus for machined and systemctl, ip, and
// nss-systemd, through which the machine sees the host users nspawn binds
// into it (boot --bind-user: their records are in /run/host/userdb, not
// in /etc/passwd; its postinst adds "systemd" to nsswitch.conf).
var BasePackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "libnss-systemd"}

// Options describe one root filesystem to bootstrap.
type Options struct {
	Release Release
	Mirror  string   // empty: debootstrap's own default
	Variant string   // debootstrap --variant; empty means minbase
	Include []string // extra packages, on top of BasePackages
	Arch    string   // empty: the host's
	// CacheDir keeps downloaded .debs between runs (debootstrap --cache-dir).
	CacheDir string
	// Bootstrapper is "debootstrap", "mmdebstrap", or "" for the fastest
	// one installed.
	Bootstrapper string
	// KeyringDir is where nsbox keeps the archive keyrings it fetches
	// for a distro whose keyring the host lacks (KeyringsDir); "" fetches
	// none.
	KeyringDir string
	// Keyring is the keyring the bootstrapper verifies the archive
	// against, as ResolveKeyring found it; "" is the distro's.
	Keyring string
}

// keyring is the archive keyring for the bootstrapper's --keyring.
func (o Options) keyring() string {
	if o.Keyring == "" {
		return o.Release.Distro.Keyring
	}
	return o.Keyring
}

// Packages is the full package list installed into the new root.
func (o Options) Packages() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range append(append([]string{}, BasePackages...), o.Include...) {
		p = strings.TrimSpace(p)
		if p != "" && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// variant is the debootstrap variant, minbase unless given.
func (o Options) variant() string {
	if o.Variant == "" {
		return "minbase"
	}
	return o.Variant
}

// arch is the architecture, the host's unless given.
func (o Options) arch() string {
	if o.Arch == "" {
		return debArch()
	}
	return o.Arch
}

// scriptsDir is where debootstrap keeps its per-suite scripts.
const scriptsDir = "/usr/share/debootstrap/scripts"

// DebootstrapArgs builds debootstrap's command line for bootstrapping o into
// target. script is the suite script to use when debootstrap has none of its
// own for the release ("" when it has).
func DebootstrapArgs(o Options, target, script string) []string {
	args := []string{
		"--variant=" + o.variant(),
		"--include=" + strings.Join(o.Packages(), ","),
		"--components=" + strings.Join(o.Release.Distro.Components, ","),
		"--keyring=" + o.keyring(),
	}
	if o.Arch != "" {
		args = append(args, "--arch="+o.Arch)
	}
	if o.CacheDir != "" {
		args = append(args, "--cache-dir="+o.CacheDir)
	}
	args = append(args, o.Release.Name, target)
	if o.Mirror != "" {
		args = append(args, o.Mirror)
		// debootstrap takes a script only after a mirror.
		if script != "" {
			args = append(args, script)
		}
	}
	return args
}

// ubuntuScript is the script every Ubuntu suite script links to.
const ubuntuScript = "gutsy"

// suiteScript returns the script to pass for a release debootstrap has no
// script for, or "" when it has one.
func suiteScript(r Release, exists func(string) bool) string {
	if exists(filepath.Join(scriptsDir, r.Name)) {
		return ""
	}
	if r.Distro.Name == "ubuntu" {
		return filepath.Join(scriptsDir, ubuntuScript)
	}
	return filepath.Join(scriptsDir, "sid")
}

// Check verifies that debootstrap and the distro's keyring are installed,
// naming the Debian package to install otherwise. A keyring nsbox can
// fetch itself (ResolveKeyring) may be missing.
func Check(o Options, lookPath func(string) (string, error)) error {
	if _, err := lookPath("debootstrap"); err != nil {
		return fmt.Errorf("debootstrap %w (install it: apt-get install debootstrap)", host.ErrToolMissing)
	}
	d := o.Release.Distro
	if _, err := os.Stat(d.Keyring); err != nil && (d.KeyringPath == "" || o.KeyringDir == "") {
		return keyringMissing(d)
	}
	return nil
}

// Debootstrap bootstraps o into target, which must not exist yet or be
// empty. progress, when set, is told each stage. On failure the error
// carries the tail of debootstrap's own log; the caller removes target.
func Debootstrap(ctx context.Context, r host.Runner, o Options, target string, progress func(Stage)) error {
	script := suiteScript(o.Release, func(p string) bool { _, err := os.Stat(p); return err == nil })
	if script != "" && o.Mirror == "" {
		// debootstrap takes a script only after a mirror, and nsbox
		// never guesses a mirror host.
		return fmt.Errorf("this debootstrap has no script for %s: upgrade debootstrap, or pass --mirror URL", o.Release.Name)
	}
	if o.CacheDir != "" {
		if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
			return err
		}
		// Held while debootstrap fills the cache: prune leaves it then.
		l, err := host.LockFile(ctx, debsLock(o.CacheDir), false, true)
		if err != nil {
			return err
		}
		defer l.Unlock()
	}
	p := newProgressParser(progress)
	err := r.Run(ctx, &host.Cmd{
		Path:  "debootstrap",
		Args:  DebootstrapArgs(o, target, script),
		Lines: p.line,
		// debootstrap runs dpkg and apt; give them time to stop on Ctrl-C.
	})
	host.UnmountUnder(target)
	if err == nil {
		return nil
	}
	var ee *host.ExitError
	if errors.As(err, &ee) {
		if log := logTail(filepath.Join(target, "debootstrap", "debootstrap.log"), 3); log != "" {
			ee.Tail = strings.TrimSpace(ee.Tail + " | log: " + log)
		}
	}
	return fmt.Errorf("debootstrap %s: %w", o.Release.Name, err)
}

// logTail returns the last n non-empty lines of a file joined by " | ".
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
