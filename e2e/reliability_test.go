//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// reliability holds the cases of shared/RELIABILITY.md that need the real
// thing. name is a stopped machine to work with; it is left stopped.
func reliability(t *testing.T, e *env, name string) {
	root := e.rootDir + "/" + name
	machined := e.name == "machined"

	t.Run("not root", func(t *testing.T) {
		for _, args := range [][]string{{"create", "e2e-nr", "--release", "bookworm"}, {"boot", name}, {"remove", name}} {
			r := e.run(t, append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, e.argv(args...)...)...)
			wantFail(t, r, 1, "must be run as root")
		}
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-nr && test -d "+root)
	})

	t.Run("shell into a stopped machine", func(t *testing.T) {
		r := e.mustNsb(t, "shell", name, "--", "cat", "/etc/hostname")
		if r.stdout != name+"\n" || !strings.Contains(r.stderr, "not running") {
			t.Errorf("shell of a stopped machine: %s", r)
		}
		if r := e.nsb(t, "shell", name, "--", "sh", "-c", "exit 5"); r.code != 5 {
			t.Errorf("exit status from a stopped machine: %s", r)
		}
	})

	t.Run("long name gets nspawn's shortened veth", func(t *testing.T) {
		long := "e2e-long-machine-name"
		e.mustNsb(t, "clone", name, long)
		defer e.nsb(t, "remove", "--force", long)
		e.mustNsb(t, "boot", long)
		i := status(t, e, long)
		if len(i.Interfaces) != 1 || len(i.Interfaces[0]) > 15 || !strings.HasPrefix(i.Interfaces[0], "ve-") {
			t.Fatalf("interfaces %v", i.Interfaces)
		}
		e.mustSh(t, "ip link show "+i.Interfaces[0])
		e.mustNsb(t, "stop", long)
	})

	t.Run("user namespace by default", func(t *testing.T) {
		e.mustNsb(t, "boot", name)
		uidMap := strings.Fields(e.mustNsb(t, "shell", name, "--", "cat", "/proc/self/uid_map").stdout)
		if len(uidMap) != 3 || uidMap[0] != "0" || uidMap[1] == "0" {
			t.Errorf("root inside is host root: uid_map %v", uidMap)
		}
		wantFail(t, e.nsb(t, "stop", name, "--bogus"), 2, "bogus")
		e.mustNsb(t, "stop", name)
		wantFail(t, e.nsb(t, "boot", name, "--bind", "/:/host"), 1, "force-binds")
		e.mustSh(t, "test ! -e /run/nsbox/machines/"+name+".json")
	})

	t.Run("remove refused while a hand-started nspawn holds the tree", func(t *testing.T) {
		// The payload's command line is the test's own, to be told from
		// any other sleep on the host.
		nspawn := "systemd-nspawn --quiet --register=no --keep-unit --settings=no -D " + root + " sh -c 'sleep 60; : e2e-hand'"
		held := "pgrep -fa '[s]ystemd-nspawn --quiet --register=no --keep-unit --settings=no -D " + root + " sh'"
		if machined {
			// A process of its own unit, as nspawn wants on a systemd host.
			e.mustSh(t, "systemd-run --unit=e2e-hand -p Delegate=yes "+nspawn)
		} else {
			e.mustSh(t, "(setsid "+nspawn+" >/dev/null 2>&1 &)")
		}
		defer func() {
			if machined {
				e.sh(t, "systemctl stop e2e-hand")
			} else {
				e.sh(t, "pkill -f '[s]ystemd-nspawn --quiet --register=no --keep-unit --settings=no -D "+root+" sh'")
			}
			waitFor(t, 10*time.Second, "the hand-started nspawn gone", func() (bool, string) {
				r := e.sh(t, held)
				return r.code == 1, r.stdout
			})
		}()
		waitFor(t, 10*time.Second, "the hand-started nspawn running its payload", func() (bool, string) {
			r := e.sh(t, "pgrep -fa '[s]leep 60; : e2e-hand'")
			return r.code == 0, r.stdout
		})
		wantFail(t, e.nsb(t, "remove", name), exitBusy, "in use")
		wantFail(t, e.nsb(t, "boot", name), exitBusy, "in use")
		e.mustSh(t, "test -f "+root+"/etc/os-release")
	})

	t.Run("debootstrap fails", func(t *testing.T) {
		// A mirror on loopback where nothing listens.
		r := e.nsb(t, "create", "e2e-nomirror", "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap", "--mirror", "http://127.0.0.1:9/debian")
		wantFail(t, r, 1, "debootstrap")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-nomirror && ! ls -A "+e.rootDir+" "+e.rootDir+"/.nsbox | grep -q '^\\.#e2e-nomirror\\.[^l]'")
	})

	t.Run("missing debootstrap", func(t *testing.T) {
		r := e.run(t, append([]string{"env", "PATH=/nonexistent"}, e.argv("create", "e2e-nd", "--release", "bookworm")...)...)
		wantFail(t, r, 1, "apt-get install debootstrap")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-nd")
	})

	t.Run("concurrent creates of one name", func(t *testing.T) {
		// One makes the machine; the others wait for it and find it
		// made from the same release: exit 0, nothing changed.
		r := e.sh(t, fmt.Sprintf(`for i in 1 2 3; do (%s >/var/tmp/e2e-race.$i 2>&1; echo "exit $?" >>/var/tmp/e2e-race.$i) & done; wait
			grep -l 'created e2e-race' /var/tmp/e2e-race.* | wc -l; grep -l 'e2e-race exists already, made from release bookworm' /var/tmp/e2e-race.* | wc -l
			cat /var/tmp/e2e-race.*; rm -f /var/tmp/e2e-race.*`, e.cmdline("create", "e2e-race", "--release", "bookworm")))
		if !strings.HasPrefix(r.stdout, "1\n2\n") || strings.Count(r.stdout, "exit 0\n") != 3 {
			t.Errorf("one create must make it and two find it:\n%s", r.stdout)
		}
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, "nsbox:") {
				t.Errorf("a create of the same release failed: %s", l)
			}
		}
		// Read through the machine: an overlay's tree is mounted only
		// while something needs it.
		if got := strings.TrimSpace(e.mustNsb(t, "shell", "e2e-race", "--", "cat", "/etc/hostname").stdout); got != "e2e-race" {
			t.Errorf("winner's tree: hostname %q", got)
		}
		e.mustNsb(t, "boot", "e2e-race")
		e.mustNsb(t, "remove", "--force", "e2e-race")
		e.mustSh(t, "! ls -A "+e.rootDir+" "+e.rootDir+"/.nsbox | grep -v '\\.lck$' | grep '^\\.#'")
	})

	t.Run("planted symlinks and settings", func(t *testing.T) {
		// The machine's hostname points at a host file, and a settings
		// file beside the image asks for a bind of the host's /etc.
		e.mustSh(t, "echo canary > /var/tmp/e2e-canary && ln -sf /var/tmp/e2e-canary "+root+"/etc/hostname")
		e.mustSh(t, "printf '[Files]\\nBind=/etc:/mnt/hostetc\\n' | tee "+e.rootDir+"/"+name+".nspawn > "+e.rootDir+"/.nsbox/"+name+".nspawn")
		// The link goes before the canary: a write through it would make the canary again.
		defer e.sh(t, "rm -f "+root+"/etc/hostname && echo "+name+" > "+root+"/etc/hostname; rm -f /var/tmp/e2e-canary "+e.rootDir+"/"+name+".nspawn "+e.rootDir+"/.nsbox/"+name+".nspawn")
		e.mustNsb(t, "clone", name, "e2e-sym")
		if got := e.mustSh(t, "cat /var/tmp/e2e-canary; test ! -L "+e.rootDir+"/e2e-sym/etc/hostname && cat "+e.rootDir+"/e2e-sym/etc/hostname"); got != "canary\ne2e-sym\n" {
			t.Errorf("a write went through the planted link: %q", got)
		}
		e.mustNsb(t, "boot", name)
		if r := e.nsb(t, "shell", name, "--", "test", "-e", "/mnt/hostetc/passwd"); r.code == 0 {
			t.Error("a settings file planted beside the image was honoured")
		}
		e.mustNsb(t, "stop", name)
		e.mustNsb(t, "remove", "e2e-sym")
	})

	t.Run("remove keeps a bind-mounted host directory", func(t *testing.T) {
		e.mustNsb(t, "clone", name, "e2e-mnt")
		e.mustSh(t, "mkdir -p /var/tmp/e2e-keep "+e.rootDir+"/e2e-mnt/mnt/keep && echo keep > /var/tmp/e2e-keep/f && mount --bind /var/tmp/e2e-keep "+e.rootDir+"/e2e-mnt/mnt/keep")
		wantFail(t, e.nsb(t, "remove", "e2e-mnt"), 1, "mounted")
		e.mustSh(t, "umount "+e.rootDir+"/e2e-mnt/mnt/keep && test \"$(cat /var/tmp/e2e-keep/f)\" = keep && rm -rf /var/tmp/e2e-keep")
		e.mustNsb(t, "remove", "e2e-mnt")
	})

	t.Run("a machine that never boots", func(t *testing.T) {
		e.mustNsb(t, "clone", name, "e2e-broken")
		defer e.nsb(t, "remove", "--force", "e2e-broken")
		// An init that fails at once (a tree with none at all is refused
		// before nspawn starts: the app machine scenario).
		e.mustSh(t, "cd "+e.rootDir+"/e2e-broken && rm -f sbin/init usr/sbin/init lib/systemd/systemd usr/lib/systemd/systemd && printf '#!/bin/sh\\necho e2e: a broken init\\nexit 1\\n' > usr/lib/systemd/systemd && chmod 755 usr/lib/systemd/systemd")
		r := e.nsb(t, "boot", "e2e-broken", "--timeout", "20s")
		if r.code != 1 || !strings.Contains(r.stderr, "boot failed") || !strings.Contains(r.stderr, "last log lines") {
			t.Errorf("want a boot failure with the log:\n%s", r)
		}
		if i := status(t, e, "e2e-broken"); i.State != "stopped" {
			t.Errorf("state after a failed boot: %+v", i)
		}
		e.mustSh(t, "! ip link show ve-e2e-broken 2>/dev/null")
		if machined {
			if out := e.sh(t, "systemctl list-units --all --no-legend 'nsbox-e2e-broken.service'").stdout; strings.TrimSpace(out) != "" {
				t.Errorf("unit left: %s", out)
			}
		} else {
			e.mustSh(t, "test ! -e /run/nsbox/machines/e2e-broken.json && ! pgrep -f '[_]_supervise.*e2e-broken'")
		}
	})

	t.Run("a machine that ignores poweroff", func(t *testing.T) {
		e.mustNsb(t, "clone", name, "e2e-stubborn")
		defer e.nsb(t, "remove", "--force", "e2e-stubborn")
		e.mustSh(t, "ln -s /dev/null "+e.rootDir+"/e2e-stubborn/etc/systemd/system/poweroff.target")
		e.mustNsb(t, "boot", "e2e-stubborn")
		r := e.nsb(t, "stop", "e2e-stubborn", "--timeout", "3s")
		if r.code != 0 || !strings.Contains(r.stderr, "terminating") {
			t.Errorf("stop must fall back to terminate:\n%s", r)
		}
		if i := status(t, e, "e2e-stubborn"); i.State != "stopped" {
			t.Errorf("after stop: %+v", i)
		}
	})

	t.Run("PID 1 dies on its own", func(t *testing.T) {
		e.mustNsb(t, "boot", name)
		e.mustNsb(t, "kill", name, "--signal", "SIGKILL")
		waitFor(t, 20*time.Second, "list says stopped", func() (bool, string) {
			i := list(t, e)[name]
			return i.State == "stopped", i.State
		})
		if !machined {
			e.mustSh(t, "test ! -e /run/nsbox/machines/"+name+".json")
		}
		e.mustNsb(t, "boot", name)
		e.mustNsb(t, "terminate", name)
		if i := status(t, e, name); i.State != "stopped" {
			t.Errorf("after terminate: %+v", i)
		}
	})

	t.Run("events", func(t *testing.T) {
		e.mustSh(t, "(timeout 20 "+e.cmdline("events", "--output", "json", "--interval", "100ms")+" > /var/tmp/e2e-events.json 2>&1 &); sleep 1")
		// Only this test's: a user may watch events of their own.
		defer e.sh(t, "pkill -f -- '--root-dir "+e.rootDir+" --cache-dir "+e.cacheDir+" [e]vents --output json'; rm -f /var/tmp/e2e-events.json")
		e.mustNsb(t, "boot", name)
		e.mustNsb(t, "stop", name)
		want := []string{"started", "stopped"}
		waitFor(t, 10*time.Second, "started and stopped events", func() (bool, string) {
			out := e.sh(t, "cat /var/tmp/e2e-events.json").stdout
			var got []string
			sc := bufio.NewScanner(strings.NewReader(out))
			for sc.Scan() {
				var ev struct{ Machine, Event string }
				if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Machine == name {
					got = append(got, ev.Event)
				}
			}
			return strings.Join(got, ",") == strings.Join(want, ","), out
		})
	})

	t.Run("twenty cycles leave nothing behind", func(t *testing.T) {
		// The machines live in a tmpfs of their own: the cycles are about
		// what nsbox leaves behind, and twenty 250 MB copies to this slow
		// disk would cost minutes of writeback (copies to disk are tested
		// by every other case).
		const dir = "/run/nsbox-e2e-cycles"
		e.mustSh(t, "mkdir -m 0700 "+dir+" && mount -t tmpfs -o mode=0700,size=2G nsbox-e2e-cycles "+dir)
		defer e.sh(t, "umount "+dir+" && rmdir "+dir)
		cy := *e
		cy.rootDir = dir
		// What is left of e2e-cycle: what nsbox keeps by its name, its
		// veth, the root directory's entries, and nspawn's image locks
		// on the cycles' own file system.
		dev := strings.TrimSpace(e.mustSh(t, "stat -c %d "+dir))
		left := func() string {
			return e.query(t, "ls -d /run/nsbox/machines/* /etc/systemd/nspawn/* /etc/systemd/system/* /var/lib/nsbox/network/* /var/lib/nsbox/limits/* /var/lib/nsbox/names/* /var/lib/machines/* 2>/dev/null | grep e2e-cycle; "+
				"ip -o link | grep -o 've-e2e-cycle[^:@]*'; ls -A "+dir+" "+dir+"/.nsbox 2>/dev/null | grep -v '^$' | grep -vx '.nsbox\\|"+dir+".*:'; "+
				"ls /run/systemd/nspawn/locks 2>/dev/null | grep '^inode-"+dev+":'")
		}
		if out := left(); out != "" {
			t.Fatalf("before the cycles: %s", out)
		}
		for i := 0; i < 20; i++ {
			cy.mustNsb(t, "create", "e2e-cycle", "--release", "bookworm")
			cy.mustNsb(t, "boot", "e2e-cycle")
			cy.mustNsb(t, "stop", "e2e-cycle")
			cy.mustNsb(t, "remove", "e2e-cycle")
		}
		if out := left(); out != "" {
			t.Errorf("state, locks or files left after twenty cycles:\n%s", out)
		}
	})
}
