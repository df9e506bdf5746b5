//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// injector is a program for a machine's root that tries to reach the
// terminal of whoever runs it: it opens /dev/tty and pushes a command line
// into its input with TIOCSTI. It prints NO-TTY when there is no terminal
// to open.
const injector = `perl -e 'if (open(my $t, "+<", "/dev/tty")) { print "TTY-OPEN\n"; ioctl($t, 0x5412, $_) for split //, "echo INJECTED\n"; } else { print "NO-TTY\n" }'`

// onTerminal runs a bash script in the environment on a pseudo terminal of
// its own, as an admin's interactive shell would run it, and returns what
// the terminal showed.
func (e *env) onTerminal(t *testing.T, script string) string {
	t.Helper()
	out, _ := e.onPty(t, nil, 150*time.Second, "bash", "-c", script)
	return strings.ReplaceAll(out, "\r", "")
}

// isolation attacks a machine from inside and nsbox from the host, as
// docs/reliability.md lists under "A machine's root is the attacker".
func isolation(t *testing.T, e *env) {
	const name = "e2e-iso"
	tree := e.rootDir + "/" + name
	// A copy: its root's attacks are planted into its tree from the host.
	e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", "copy")
	defer e.nsb(t, "remove", "--force", name)

	t.Run("a machine cannot reach the caller's terminal", func(t *testing.T) {
		// The machine's root replaces systemctl, which boot runs inside
		// the machine to wait for it, with one that injects first.
		e.mustSh(t, "mkdir -p "+tree+"/usr/local/bin && printf '%s\\n' '#!/bin/sh' "+shellQuote(injector+" >&2")+
			" 'exec /bin/systemctl \"$@\"' > "+tree+"/usr/local/bin/systemctl && chmod 755 "+tree+"/usr/local/bin/systemctl")
		shell := e.cmdline("shell", name, "--", "sh", "-c", shellQuote(injector))
		for _, c := range []struct{ what, run string }{
			{"boot waits for the machine", e.cmdline("boot", name) + " >/dev/null 2>&1"},
			{"shell, stdin and stdout redirected", shell + " </dev/null >/tmp/e2e-inject.out"},
			{"shell, stdout redirected", shell + " >/tmp/e2e-inject.out"},
			{"shell, stdin redirected", shell + " </dev/null"},
			{"shell on the terminal", shell},
		} {
			t.Logf("on a terminal: %s", c.what)
			out := e.onTerminal(t, c.run+"; read -t 2 l; echo \"GOT:[$l]\"")
			if strings.Contains(out, "GOT:[echo INJECTED") || !strings.Contains(out, "GOT:[]") {
				t.Errorf("%s: the machine pushed input into the caller's terminal:\n%s", c.what, out)
			}
		}
		// The redirected payloads saw no terminal at all.
		if got := e.mustSh(t, "cat /tmp/e2e-inject.out; rm -f /tmp/e2e-inject.out"); got != "NO-TTY\n" {
			t.Errorf("payload with redirected streams found a terminal: %q", got)
		}
		e.mustSh(t, "rm -f "+tree+"/usr/local/bin/systemctl")
	})

	t.Run("a read-only bind stays read-only", func(t *testing.T) {
		e.mustSh(t, "rm -rf /var/tmp/e2e-iso && mkdir -m 700 /var/tmp/e2e-iso && mkdir /var/tmp/e2e-iso/ro && echo host > /var/tmp/e2e-iso/ro/f")
		defer e.sh(t, "rm -rf /var/tmp/e2e-iso")
		e.mustNsb(t, "bind", name, "/var/tmp/e2e-iso/ro", "/mnt/ro", "--mkdir", "--read-only")
		r := e.nsb(t, "shell", name, "--", "sh", "-c",
			"mount -o remount,rw /mnt/ro; mount -o remount,bind,rw /mnt/ro; echo owned > /mnt/ro/f; touch /mnt/ro/new; grep ' /mnt/ro ' /proc/self/mountinfo")
		if !strings.Contains(r.stdout, " ro,") {
			t.Errorf("the machine's root made the bind writable:\n%s", r)
		}
		if got := e.mustSh(t, "cat /var/tmp/e2e-iso/ro/f; ls /var/tmp/e2e-iso/ro"); got != "host\nf\n" {
			t.Errorf("host files changed through a read-only bind: %q", got)
		}
		// The bind is private: what the machine mounts on it stays inside.
		e.nsb(t, "shell", name, "--", "mount", "-t", "tmpfs", "none", "/mnt/ro")
		if out := e.query(t, "grep -c ' /var/tmp/e2e-iso' /proc/self/mountinfo"); strings.TrimSpace(out) != "0" {
			t.Errorf("a mount made in the machine shows on the host: %s", out)
		}
		// A host user's link is never followed: it would hand the machine
		// root's files, and it could be swapped before any later boot.
		u := "/var/tmp/e2e-iso-user"
		e.mustSh(t, "mkdir -m 755 "+u+" "+u+"/home && chown 65534:65534 "+u+"/home && mkdir "+u+"/home/x && ln -s /root "+u+"/share && ln -s /etc "+u+"/etc && chown -h 65534:65534 "+u+"/share "+u+"/etc")
		defer e.sh(t, "rm -rf "+u)
		wantFail(t, e.nsb(t, "bind", name, u+"/share", "/mnt/share", "--mkdir"), 1, "symbolic link of uid 65534")
		wantFail(t, e.nsb(t, "bind", name, u+"/etc", "/mnt/etc", "--mkdir", "--read-only"), 1, "symbolic link of uid 65534")
		// x is root's, but the user can swap it: home is theirs.
		wantFail(t, e.nsb(t, "bind", name, u+"/home/x", "/mnt/x", "--mkdir", "--read-only"), 1, "belongs to uid 65534")
		// home itself is the user's, but only root can replace it.
		e.mustNsb(t, "bind", name, u+"/home", "/mnt/h", "--mkdir", "--read-only")
		// A writable bind that host users can reach would let the
		// machine's root plant setuid-root programs for them.
		e.mustSh(t, "mkdir -m 755 /var/tmp/e2e-iso-open")
		defer e.sh(t, "rm -rf /var/tmp/e2e-iso-open")
		wantFail(t, e.nsb(t, "bind", name, "/var/tmp/e2e-iso-open", "/mnt/open", "--mkdir"), 1, "every host user can reach")
		e.mustSh(t, "test -z \"$(ls -A /var/tmp/e2e-iso-open)\"")
	})

	t.Run("host users reach nothing in a machine", func(t *testing.T) {
		e.mustNsb(t, "shell", name, "--", "sh", "-c", "cp /bin/sh /usr/local/bin/rootsh && chmod 4755 /usr/local/bin/rootsh")
		if got := strings.TrimSpace(e.mustSh(t, "stat -c %a:%U "+e.rootDir+"/.nsbox")); got != "700:root" {
			t.Errorf("the store is %s, want 700:root", got)
		}
		nobody := "setpriv --reuid=65534 --regid=65534 --clear-groups -- "
		for _, p := range []string{tree + "/usr/local/bin/rootsh", tree + "/etc/shadow", tree + "/"} {
			if r := e.sh(t, nobody+"ls "+p); r.code == 0 {
				t.Errorf("an unprivileged host user reached %s:\n%s", p, r)
			}
		}
		// Through sh: setpriv itself still holds root's capabilities when it
		// looks the program up.
		if r := e.sh(t, nobody+"sh -c '"+tree+"/usr/local/bin/rootsh -c id'"); r.code == 0 {
			t.Errorf("an unprivileged host user ran the machine's setuid shell:\n%s", r)
		}
		if got := strings.TrimSpace(e.mustSh(t, "stat -L -c %a "+e.cacheDir+"/bases")); got != "700" {
			t.Errorf("the base cache is %s, want 700", got)
		}
		e.mustNsb(t, "shell", name, "--", "rm", "/usr/local/bin/rootsh")
	})

	t.Run("a machine cannot choose a host interface", func(t *testing.T) {
		// The machine's root swaps host0 for a veth of its own whose peer
		// index is that of a host interface.
		e.mustSh(t, "ip link del e2e-victim 2>/dev/null; ip link add e2e-victim type bridge")
		defer e.sh(t, "ip link del e2e-victim")
		idx := strings.TrimSpace(e.mustSh(t, "cat /sys/class/net/e2e-victim/ifindex"))
		e.mustNsb(t, "shell", name, "--", "sh", "-c", "ip link del host0 && ip link add fake0 index "+idx+" type veth peer name host0 index 4000")
		// What a unit's ExecStartPost runs after every start.
		e.nsb(t, "__network-up", name)
		if got := e.mustSh(t, "ip -o -4 addr show dev e2e-victim; ip -o link show e2e-victim"); strings.Contains(got, "inet ") || strings.Contains(got, ",UP") {
			t.Errorf("nsbox configured the host interface the machine pointed at:\n%s", got)
		}
		for _, i := range status(t, e, name).Interfaces {
			if i == "e2e-victim" {
				t.Errorf("status reports the host interface the machine pointed at")
			}
		}
	})

	t.Run("settings added by hand survive a boot", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		settings := "/etc/systemd/nspawn/" + name + ".nspawn"
		e.mustSh(t, "printf '# mine\\n[Exec]\\nEnvironment=E2E_HAND=1\\n' >> "+settings)
		e.mustNsb(t, "boot", name)
		if r := e.mustNsb(t, "shell", name, "--", "sh", "-c", "tr '\\0' '\\n' </proc/1/environ | grep E2E_HAND"); r.stdout != "E2E_HAND=1\n" {
			t.Errorf("a key added by hand did not reach the machine: %s", r)
		}
		e.mustSh(t, "grep -q '^# mine' "+settings+" && grep -q '^Environment=E2E_HAND=1' "+settings)
	})

	if e.name == "direct" {
		t.Run("the supervisor runs a binary only root can change", func(t *testing.T) {
			// The binary under test sits in a temporary directory under /tmp.
			var st struct {
				Supervisor struct{ PID int } `json:"supervisor"`
			}
			b, err := os.ReadFile("/run/nsbox/machines/" + name + ".json")
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			if err != nil {
				t.Fatal(err)
			}
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", st.Supervisor.PID))
			if err != nil {
				t.Fatal(err)
			}
			for p := exe; ; p = filepath.Dir(p) {
				var fi syscall.Stat_t
				if err := syscall.Lstat(p, &fi); err != nil {
					t.Fatal(err)
				}
				if fi.Uid != 0 || fi.Mode&0o022 != 0 {
					t.Errorf("the supervisor runs %s, and %s is uid %d mode %o", exe, p, fi.Uid, fi.Mode&0o7777)
				}
				if p == "/" {
					break
				}
			}
		})
	}

	t.Run("two boots of one machine", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		wantFail(t, e.nsb(t, "boot", name, name), 2, "named twice")
		boot := e.cmdline("boot", name)
		r := e.sh(t, fmt.Sprintf("(%s >/tmp/e2e-b1 2>&1; echo $? >>/tmp/e2e-b1) & (%s >/tmp/e2e-b2 2>&1; echo $? >>/tmp/e2e-b2) & wait; cat /tmp/e2e-b1 /tmp/e2e-b2; rm -f /tmp/e2e-b1 /tmp/e2e-b2", boot, boot))
		if n := strings.Count(r.stdout, "\n0\n"); n != 1 {
			t.Errorf("two boots at once: %d succeeded, want 1:\n%s", n, r.stdout)
		}
		if i := status(t, e, name); i.State != "running" || i.Leader <= 0 {
			t.Fatalf("after two boots at once the machine is %+v", i)
		}
		e.mustNsb(t, "shell", name, "--", "true")
	})

	t.Run("names are unique across root directories", func(t *testing.T) {
		other := "/var/tmp/e2e-other-root"
		e.mustSh(t, "rm -rf "+other+" && mkdir -m 700 "+other)
		defer e.sh(t, "rm -rf "+other)
		o := func(args ...string) result {
			return e.run(t, append([]string{e.nsbox, "--backend", e.name, "--root-dir", other, "--cache-dir", e.cacheDir}, args...)...)
		}
		wantFail(t, o("create", name, "--release", "bookworm"), exitExists, "is under "+e.rootDir)
		wantFail(t, o("remove", "--force", name), exitExists, "is under "+e.rootDir)
		wantFail(t, o("stop", name), exitExists, "is under "+e.rootDir)
		if i := status(t, e, name); i.State != "running" {
			t.Errorf("a command under another root directory stopped the machine: %+v", i)
		}
		e.mustSh(t, "test -f /etc/systemd/nspawn/"+name+".nspawn && test -z \"$(ls -A "+other+")\"")
	})

	t.Run("a remove cut short can be finished", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		// What a second Ctrl-C leaves: a tree with its OS half gone.
		e.mustSh(t, "rm -rf "+tree+"/usr "+tree+"/etc/os-release")
		if _, ok := list(t, e)[name]; !ok {
			t.Errorf("a half-removed machine is not listed")
		}
		e.mustNsb(t, "remove", name)
		e.mustSh(t, "test ! -e "+tree+" && test ! -e "+e.rootDir+"/.nsbox/"+name)
	})

	t.Run("a create leaves other names' staging trees alone", func(t *testing.T) {
		other := e.rootDir + "/.nsbox/.#" + name + ".x.0123456789abcdef"
		e.mustSh(t, "mkdir -p "+other+"/etc")
		defer e.sh(t, "rm -rf "+other)
		e.mustNsb(t, "create", name, "--release", "bookworm")
		e.mustSh(t, "test -d "+other+"/etc")
	})
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
