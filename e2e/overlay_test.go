//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// overlayScenario proves overlay storage on a backend: a machine over the
// suite's base, made without copying it, that boots with a user namespace
// and no chown, is mounted only while something needs it, and takes every
// command: shell running or stopped, logs, clone, rename, export, import,
// read-only, machinectl start (machined), remove; and the base stays as
// it was.
func overlayScenario(t *testing.T, e *env) {
	const name = "e2e-ov"
	tree := e.rootDir + "/.nsbox/" + name
	base := e.cacheDir + "/bases/" + suiteBaseKey + "/root"
	// Nothing of the suite's machines mounted: what is, is an overlay's.
	mounted := func() string {
		return e.query(t, "grep -E ' "+e.rootDir+"/\\.nsbox/(e2e-ov|\\.overlay)' /proc/self/mountinfo | cut -d' ' -f5")
	}
	stamp := "/var/tmp/e2e-ov-stamp"
	e.mustSh(t, "touch "+stamp)
	defer e.sh(t, "rm -f "+stamp+" /var/tmp/e2e-ov.tar")

	wantFail(t, e.nsb(t, "create", "e2e-ov-bad", "--release", "bookworm", "--storage", "zfs"), 2, "unknown storage")
	wantFail(t, e.nsb(t, "create", "e2e-ov-bad", "--release", "bookworm", "--storage", "overlay", "--no-cache"), 2, "cached base")
	e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", "overlay")
	i := status(t, e, name, "--usage")
	if i.Storage != "overlay" || i.Base != suiteBaseKey || i.OS != "debian" || i.Usage > 1<<20 || i.BaseUsage < 100<<20 {
		t.Errorf("a new overlay machine: %+v (its own bytes %d, its base's %d)", i, i.Usage, i.BaseUsage)
	}
	if m := mounted(); m != "" {
		t.Errorf("a stopped overlay machine is mounted: %s", m)
	}

	t.Run("boot", func(t *testing.T) {
		e.mustNsb(t, "boot", name)
		// The machine's root owns its files, base and own alike, through
		// its user namespace; the base was not chowned (copied up).
		r := e.mustNsb(t, "shell", name, "--", "sh", "-c",
			"echo kept > /root/f && stat -c '%u %U' /etc/hostname /usr/bin/passwd /root/f && hostname && systemctl is-system-running --wait")
		if want := "0 root\n0 root\n0 root\n" + name + "\n"; !strings.HasPrefix(r.stdout, want) || !strings.Contains(r.stdout, "running") && !strings.Contains(r.stdout, "degraded") {
			t.Errorf("inside the overlay machine:\n%s", r)
		}
		if i := status(t, e, name, "--usage"); i.Usage*10 > i.BaseUsage {
			t.Errorf("after the first boot the machine's own bytes are %d, more than 10%% of its base's %d", i.Usage, i.BaseUsage)
		}
		e.mustNsb(t, "stop", name)
		waitFor(t, 20*time.Second, "the tree unmounted after the stop", func() (bool, string) {
			m := mounted()
			return m == "", m
		})
		// Stopped: entered with the tree mounted for the moment.
		if r := e.mustNsb(t, "shell", name, "--", "cat", "/root/f"); r.stdout != "kept\n" {
			t.Errorf("shell into the stopped machine: %s", r)
		}
		if r := e.mustNsb(t, "logs", name, "-n", "5"); r.stdout == "" {
			t.Errorf("logs of the stopped machine: %s", r)
		}
		if m := mounted(); m != "" {
			t.Errorf("left mounted after shell and logs of a stopped machine: %s", m)
		}
	})

	t.Run("without a user namespace and back", func(t *testing.T) {
		// The upper follows the mode: stored under the machine's own
		// ids without a user namespace, under its range with one.
		upperF := e.rootDir + "/.nsbox/.overlay/" + name + "/upper/root/f"
		for _, mode := range []string{"--private-users=false", "--private-users=true"} {
			e.mustNsb(t, "boot", name, mode)
			if r := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /root/f; stat -c %U /root/f /etc/hostname"); r.stdout != "kept\nroot\nroot\n" {
				t.Errorf("boot %s: %s", mode, r)
			}
			e.mustNsb(t, "stop", name)
			uid := strings.TrimSpace(e.mustSh(t, "stat -c %u "+upperF))
			if (mode == "--private-users=false") != (uid == "0") {
				t.Errorf("after a boot %s the upper's /root/f belongs to host uid %s", mode, uid)
			}
		}
	})

	t.Run("clone, rename, export, import, read-only", func(t *testing.T) {
		e.mustNsb(t, "clone", name, "e2e-ov2")
		if i := status(t, e, "e2e-ov2", "--usage"); i.Storage != "overlay" || i.Usage > 64<<20 {
			t.Errorf("clone of an overlay machine: %+v", i)
		}
		e.mustNsb(t, "rename", "e2e-ov2", "e2e-ov3")
		e.mustNsb(t, "boot", "e2e-ov3")
		if r := e.mustNsb(t, "shell", "e2e-ov3", "--", "sh", "-c", "hostname; cat /root/f; stat -c %U /root/f"); r.stdout != "e2e-ov3\nkept\nroot\n" {
			t.Errorf("the renamed clone: %s", r)
		}
		e.mustNsb(t, "stop", "e2e-ov3")
		e.mustNsb(t, "read-only", "e2e-ov3")
		e.mustNsb(t, "boot", "e2e-ov3")
		if r := e.nsb(t, "shell", "e2e-ov3", "--", "touch", "/root/g"); r.code == 0 {
			t.Errorf("a write to a read-only overlay machine: %s", r)
		}
		e.mustNsb(t, "stop", "e2e-ov3")
		wantFail(t, e.nsb(t, "remove", "e2e-ov3"), 1, "read-only")
		e.mustNsb(t, "read-only", "e2e-ov3", "false")
		e.mustNsb(t, "remove", "e2e-ov3")

		// The archive holds the merged tree with the owners the machine
		// sees: its root's files are 0's, setuid bits kept.
		e.mustNsb(t, "export", name, "/var/tmp/e2e-ov.tar")
		out := e.mustSh(t, "tar -tvf /var/tmp/e2e-ov.tar ./root/f ./usr/bin/passwd ./etc/hostname")
		for _, want := range []string{"-rw-r--r-- 0/0", "-rwsr-xr-x 0/0"} {
			if !strings.Contains(out, want) {
				t.Errorf("export: no %q in\n%s", want, out)
			}
		}
		e.mustNsb(t, "import", "e2e-ov-imp", "/var/tmp/e2e-ov.tar")
		if i := status(t, e, "e2e-ov-imp"); i.Storage != "copy" {
			t.Errorf("an imported machine: %+v", i)
		}
		if got := e.mustSh(t, "cat "+e.rootDir+"/e2e-ov-imp/root/f"); got != "kept\n" {
			t.Errorf("import of the export: /root/f is %q", got)
		}
		e.mustNsb(t, "remove", "e2e-ov-imp")
	})

	if e.name == "machined" {
		t.Run("machinectl start and enable", func(t *testing.T) {
			// machinectl's own unit mounts the tree first (nsbox's
			// drop-in) and unmounts it after.
			e.mustSh(t, "machinectl start "+name)
			waitFor(t, 60*time.Second, name+" running from machinectl start", func() (bool, string) {
				i := status(t, e, name)
				return i.State == "running" && i.Leader > 0, fmt.Sprintf("%+v", i)
			})
			// Its bus answers once its systemd is up.
			waitFor(t, 60*time.Second, "/root/f read in the machine machinectl started", func() (bool, string) {
				r := e.nsb(t, "shell", name, "--", "cat", "/root/f")
				return r.stdout == "kept\n", r.String()
			})
			e.mustSh(t, "machinectl poweroff "+name)
			waitFor(t, 60*time.Second, "the tree unmounted after machinectl poweroff", func() (bool, string) {
				m := mounted()
				return m == "" && status(t, e, name).State == "stopped", m
			})
			e.mustNsb(t, "enable", name)
			unit := e.mustSh(t, "systemctl cat nsbox@"+name+".service")
			if !strings.Contains(unit, "ExecStartPre=") || !strings.Contains(unit, "__storage mount "+name) || !strings.Contains(unit, "__storage unmount "+name) {
				t.Errorf("the unit of an enabled overlay machine does not mount it:\n%s", unit)
			}
			e.mustNsb(t, "disable", name)
		})
	}

	t.Run("remove keeps the base", func(t *testing.T) {
		e.mustNsb(t, "remove", name)
		if m := mounted(); m != "" {
			t.Errorf("mounts left: %s", m)
		}
		e.mustSh(t, "test ! -e "+tree+" && test ! -e "+e.rootDir+"/.nsbox/.overlay/"+name+" && test ! -e /var/lib/nsbox/storage/"+name+".json")
		e.mustSh(t, "test ! -e /etc/systemd/system/systemd-nspawn@"+name+".service.d")
		if changed := e.query(t, "find "+base+" -newer "+stamp+" | head"); changed != "" {
			t.Errorf("the base changed under overlay machines:\n%s", changed)
		}
	})
}
