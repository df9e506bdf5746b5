//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
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
			r := e.run(t, append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", e.nsbox,
				"--backend", e.name, "--root-dir", e.rootDir}, args...)...)
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
		nspawn := "systemd-nspawn --quiet --register=no --keep-unit --settings=no -D " + root + " sleep 60"
		if machined {
			// A process of its own unit, as nspawn wants on a systemd host.
			e.mustSh(t, "systemd-run --unit=e2e-hand -p Delegate=yes "+nspawn)
			defer e.sh(t, "systemctl stop e2e-hand; sleep 1")
		} else {
			e.mustSh(t, "(setsid "+nspawn+" >/dev/null 2>&1 &)")
			defer e.sh(t, "pkill -f '[s]ystemd-nspawn --quiet --register=no --keep-unit --settings=no -D "+root+" sleep 60'; sleep 1")
		}
		waitFor(t, 10*time.Second, "the hand-started nspawn running its payload", func() (bool, string) {
			r := e.sh(t, "pgrep -fa '^sleep 60$'")
			return r.code == 0, r.stdout
		})
		wantFail(t, e.nsb(t, "remove", name), 1, "in use")
		wantFail(t, e.nsb(t, "boot", name), 1, "in use")
		e.mustSh(t, "test -f "+root+"/etc/os-release")
	})

	t.Run("debootstrap fails", func(t *testing.T) {
		// A mirror on loopback where nothing listens.
		r := e.nsb(t, "create", "e2e-nomirror", "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap", "--mirror", "http://127.0.0.1:9/debian")
		wantFail(t, r, 1, "debootstrap")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-nomirror && ! ls -A "+e.rootDir+" | grep -q '^\\.#e2e-nomirror\\.[^l]'")
	})

	t.Run("missing debootstrap", func(t *testing.T) {
		r := e.run(t, "env", "PATH=/nonexistent", e.nsbox, "--backend", e.name, "--root-dir", e.rootDir, "create", "e2e-nd", "--release", "bookworm")
		wantFail(t, r, 1, "apt-get install debootstrap")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-nd")
	})

	t.Run("concurrent creates of one name", func(t *testing.T) {
		r := e.sh(t, fmt.Sprintf(`for i in 1 2 3; do %s --backend %s --root-dir %s create e2e-race --release bookworm >/var/tmp/e2e-race.$i 2>&1 & done; wait
			grep -l 'created e2e-race' /var/tmp/e2e-race.* | wc -l; cat /var/tmp/e2e-race.*; rm -f /var/tmp/e2e-race.*`, e.nsbox, e.name, e.rootDir))
		if !strings.HasPrefix(r.stdout, "1\n") {
			t.Errorf("exactly one create must win:\n%s", r.stdout)
		}
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, "nsbox:") && !strings.Contains(l, "already exists") && !strings.Contains(l, "being created") {
				t.Errorf("loser's error is not clear: %s", l)
			}
		}
		if got := strings.TrimSpace(e.mustSh(t, "cat "+e.rootDir+"/e2e-race/etc/hostname")); got != "e2e-race" {
			t.Errorf("winner's tree: hostname %q", got)
		}
		e.mustNsb(t, "boot", "e2e-race")
		e.mustNsb(t, "remove", "--force", "e2e-race")
		e.mustSh(t, "! ls -A "+e.rootDir+" | grep -v '\\.lck$' | grep '^\\.#'")
	})

	t.Run("planted symlinks and settings", func(t *testing.T) {
		// The machine's hostname points at a host file, and a settings
		// file beside the image asks for a bind of the host's /etc.
		e.mustSh(t, "echo canary > /var/tmp/e2e-canary && ln -sf /var/tmp/e2e-canary "+root+"/etc/hostname")
		e.mustSh(t, "printf '[Files]\\nBind=/etc:/mnt/hostetc\\n' > "+e.rootDir+"/"+name+".nspawn")
		defer e.sh(t, "rm -f /var/tmp/e2e-canary "+e.rootDir+"/"+name+".nspawn; echo "+name+" > "+root+"/etc/hostname")
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
		// No init: nspawn --boot has nothing to run.
		e.mustSh(t, "cd "+e.rootDir+"/e2e-broken && rm -f sbin/init usr/sbin/init lib/systemd/systemd usr/lib/systemd/systemd")
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
		e.mustSh(t, fmt.Sprintf("(timeout 20 %s --backend %s --root-dir %s events --output json --interval 100ms > /var/tmp/e2e-events.json 2>&1 &); sleep 1", e.nsbox, e.name, e.rootDir))
		defer e.sh(t, "pkill -f '[e]vents --output json'; rm -f /var/tmp/e2e-events.json")
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
		count := func() string {
			return strings.TrimSpace(e.mustSh(t, "ls /run/nsbox/machines 2>/dev/null | wc -l; ls /run/systemd/nspawn/locks 2>/dev/null | wc -l; ls -A "+e.rootDir+" | wc -l; ls /etc/systemd/nspawn | wc -l; ls /var/lib/nsbox/network 2>/dev/null | wc -l"))
		}
		before := count()
		for i := 0; i < 20; i++ {
			e.mustNsb(t, "clone", name, "e2e-cycle")
			e.mustNsb(t, "boot", "e2e-cycle")
			e.mustNsb(t, "stop", "e2e-cycle")
			e.mustNsb(t, "remove", "e2e-cycle")
		}
		if after := count(); after != before {
			t.Errorf("state, locks or files grew: before %q after %q", before, after)
		}
	})
}

// interrupts checks that SIGINT and SIGTERM during a real bootstrap stop
// debootstrap and leave nothing: no tree, no temporary tree, no mount.
func interrupts(t *testing.T, e *env) {
	t.Run("btrfs: bases, machines and clones are snapshots", func(t *testing.T) {
		if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
			t.Skip("no mkfs.btrfs (just deps installs btrfs-progs)")
		}
		dir, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-btrfs-")
		if err != nil {
			t.Fatal(err)
		}
		img, mnt := dir+"/fs.img", dir+"/mnt"
		e.mustSh(t, "truncate -s 3G "+img+" && mkfs.btrfs -q "+img+" && mkdir "+mnt+" && mount -o loop "+img+" "+mnt+" && mkdir -m 0700 "+mnt+"/srv")
		defer e.sh(t, "umount "+mnt+"; rm -rf "+dir)
		bt := &env{name: e.name, nsbox: e.nsbox, rootDir: mnt + "/srv"}
		nsb := func(args ...string) result {
			return bt.run(t, append([]string{bt.nsbox, "--backend", bt.name, "--root-dir", bt.rootDir, "--cache-dir", mnt + "/cache"}, args...)...)
		}
		must := func(args ...string) {
			if r := nsb(args...); r.code != 0 {
				t.Fatalf("nsbox failed:\n%s", r)
			}
		}
		must("create", "e2e-bt1", "--release", "bookworm")
		defer nsb("remove", "--force", "e2e-bt1")
		must("create", "e2e-bt2", "--release", "bookworm")
		defer nsb("remove", "--force", "e2e-bt2")
		must("clone", "e2e-bt2", "e2e-bt3")
		defer nsb("remove", "--force", "e2e-bt3")
		for _, n := range []string{"e2e-bt1", "e2e-bt2", "e2e-bt3"} {
			// A snapshot shows its parent subvolume's UUID.
			out := e.mustSh(t, "btrfs subvolume show "+bt.rootDir+"/"+n)
			if !strings.Contains(out, "Parent UUID:") || strings.Contains(out, "Parent UUID: \t\t-") {
				t.Errorf("%s is not a snapshot:\n%s", n, out)
			}
		}
		must("boot", "e2e-bt2")
		if r := nsb("shell", "e2e-bt2", "--", "hostname"); r.stdout != "e2e-bt2\n" {
			t.Errorf("snapshot machine: %s", r)
		}
		must("stop", "e2e-bt2")
		must("remove", "e2e-bt3")
		e.mustSh(t, "test ! -e "+bt.rootDir+"/e2e-bt3")
	})

	t.Run("base cache: concurrent creates bootstrap once; refresh; remove", func(t *testing.T) {
		// A package set of its own, so the base is new here.
		r := e.sh(t, fmt.Sprintf(`for n in e2e-ca e2e-cb; do %s --root-dir %s create $n --release bookworm --include zstd >/var/tmp/$n.log 2>&1 & done; wait
			grep -l retrieving /var/tmp/e2e-ca.log /var/tmp/e2e-cb.log | wc -l; grep -l 'copying base' /var/tmp/e2e-ca.log /var/tmp/e2e-cb.log | wc -l; cat /var/tmp/e2e-c?.log; rm -f /var/tmp/e2e-c?.log`, e.nsbox, e.rootDir))
		if !strings.HasPrefix(r.stdout, "1\n2\n") {
			t.Errorf("want one bootstrap and two copies:\n%s", r.stdout)
		}
		defer e.nsb(t, "remove", "e2e-ca")
		defer e.nsb(t, "remove", "e2e-cb")
		type base struct {
			Key      string    `json:"key"`
			Packages []string  `json:"packages"`
			Created  time.Time `json:"created"`
		}
		bases := func() map[string]base {
			var bs []base
			json.Unmarshal([]byte(e.mustNsb(t, "cache", "list", "-o", "json").stdout), &bs)
			out := map[string]base{}
			for _, b := range bs {
				out[b.Key] = b
			}
			return out
		}
		var key string
		for k, b := range bases() {
			if strings.Contains(strings.Join(b.Packages, ","), "zstd") {
				key = k
			}
		}
		if key == "" {
			t.Fatalf("no base with zstd: %v", bases())
		}
		before := bases()[key].Created
		e.mustNsb(t, "cache", "refresh", key)
		if after := bases()[key].Created; !after.After(before) {
			t.Errorf("refresh did not renew the base: %v then %v", before, after)
		}
		e.mustNsb(t, "cache", "remove", key)
		if _, ok := bases()[key]; ok {
			t.Error("base still listed after remove")
		}
		if i := list(t, e)["e2e-ca"]; i.State != "stopped" {
			t.Errorf("a machine made from the removed base: %+v", i)
		}
	})

	t.Run("create killed with SIGKILL, then run again", func(t *testing.T) {
		cmd := exec.Command(e.nsbox, "--root-dir", e.rootDir, "create", "e2e-kill", "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "debootstrap running", func() (bool, string) {
			out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-kill").Output()
			return len(out) > 0, string(out)
		})
		time.Sleep(2 * time.Second)
		cmd.Process.Kill()
		cmd.Wait()
		// The next create of the name finds the tree, stops the orphaned
		// debootstrap, undoes its mounts and removes it.
		e.mustNsb(t, "create", "e2e-kill", "--release", "bookworm")
		if out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-kill").Output(); len(out) > 0 {
			t.Errorf("orphaned debootstrap still running: %s", out)
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "e2e-kill") {
			t.Error("mounts left under the stale tree")
		}
		e.mustSh(t, "! ls -A "+e.rootDir+" | grep -v '\\.lck$' | grep '^\\.#e2e-kill'")
		e.mustNsb(t, "remove", "e2e-kill")
	})

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("create interrupted by "+sig.String(), func(t *testing.T) {
			cmd := exec.Command(e.nsbox, "--root-dir", e.rootDir, "create", "e2e-int", "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Wait until debootstrap works in the temporary tree.
			waitFor(t, 30*time.Second, "debootstrap running", func() (bool, string) {
				out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-int").Output()
				return len(out) > 0, string(out)
			})
			time.Sleep(2 * time.Second)
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			code := cmd.ProcessState.ExitCode()
			want := 130
			if sig == syscall.SIGTERM {
				want = 143
			}
			if code != want {
				t.Errorf("exit %d (%v), want %d; stderr: %s", code, err, want, stderr.String())
			}
			if out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-int").Output(); len(out) > 0 {
				t.Errorf("debootstrap still running: %s", out)
			}
			if ents, _ := os.ReadDir(e.rootDir); len(ents) > 0 {
				var names []string
				for _, d := range ents {
					if !strings.HasSuffix(d.Name(), ".lck") && strings.Contains(d.Name(), "e2e-int") {
						names = append(names, d.Name())
					}
				}
				if len(names) > 0 {
					t.Errorf("left in the root directory: %v", names)
				}
			}
			if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "e2e-int") {
				t.Error("mounts left under the temporary tree")
			}
		})
	}
}
