//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// bootOptions is what status -o json says of the remembered options.
type bootOptions struct {
	Network string   `json:"network"`
	Ports   []string `json:"ports"`
}

func rememberedOptions(t *testing.T, e *env, name string) bootOptions {
	t.Helper()
	r := e.mustNsb(t, "status", "--output", "json", name)
	var s struct {
		Options bootOptions `json:"boot_options"`
		Limits  *struct {
			Memory   uint64 `json:"memory_bytes"`
			IOWeight uint64 `json:"io_weight"`
		} `json:"limits"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	return s.Options
}

// machineIDs reads /etc/machine-id inside a running machine, and what
// D-Bus reads as its machine id there.
func machineIDs(t *testing.T, e *env, name string) (etc, dbus string) {
	t.Helper()
	out := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /etc/machine-id; cat /var/lib/dbus/machine-id").stdout
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("%s: machine ids %q", name, out)
	}
	return f[0], f[1]
}

// correctBoot is issue 17's items on machine IDs and boots: each machine
// and clone its own machine ID (and an old shared one fixed at boot),
// options remembered only with a boot that succeeded, limits that set can
// clear, --no-ports with --port, port forwards that cannot work refused,
// every address pool masqueraded, names checked before anything boots,
// and a failed boot's own log lines.
func correctBoot(t *testing.T, e *env) {
	const a, b, c = "e2e-p-a", "e2e-p-b", "e2e-p-c"
	settings := func(n string) string { return "/etc/systemd/nspawn/" + n + ".nspawn" }
	defer func() {
		for _, n := range []string{a, b, c} {
			e.nsb(t, "remove", "--force", n)
		}
	}()
	e.mustNsb(t, "create", a, "--release", "bookworm")
	// b is a copy: it is made to look like a machine of an earlier nsbox
	// from the host; a and its clone are overlays (the default).
	e.mustNsb(t, "create", b, "--release", "bookworm", "--storage", "copy")

	t.Run("machine IDs", func(t *testing.T) {
		e.mustNsb(t, "boot", a)
		e.mustNsb(t, "stop", a)
		e.mustNsb(t, "clone", a, c)
		e.mustNsb(t, "boot", a, c)
		// b on another pool while a runs on the default one: both keep
		// their masquerading.
		wantFail(t, e.nsb(t, "boot", b, "--address-pool", "bogus"), 2, "address pool")
		e.mustNsb(t, "boot", b, "--address-pool", "10.77.0.0/24")
		if r := e.sh(t, "nft list table ip nsbox"); r.code == 0 {
			if !strings.Contains(r.stdout, "10.77.0.0/24") || !strings.Contains(r.stdout, "10.89.") {
				t.Errorf("masquerading does not cover both pools:\n%s", r.stdout)
			}
		} else {
			t.Logf("no nsbox table here (the host's networkd serves veths): %s", r.stderr)
		}
		seen := map[string]string{}
		for _, n := range []string{a, b, c} {
			etc, dbus := machineIDs(t, e, n)
			if etc != dbus {
				t.Errorf("%s: /etc/machine-id %s, D-Bus's %s", n, etc, dbus)
			}
			if other, dup := seen[etc]; dup {
				t.Errorf("%s and %s share machine ID %s", n, other, etc)
			}
			seen[etc] = n
		}
		for _, l := range strings.Split(e.nsb(t, "doctor").stdout, "\n") {
			if strings.Contains(l, "shared by") && strings.Contains(l, "e2e-p-") {
				t.Errorf("doctor finds shared IDs: %s", l)
			}
		}

		// A machine made by an earlier nsbox: D-Bus's machine id a copy
		// of the base's, and its own taken from it. Its next boot gives it
		// an ID of its own, and says so.
		idA, _ := machineIDs(t, e, a)
		e.mustNsb(t, "stop", b)
		tree := e.rootDir + "/" + b
		e.mustSh(t, "rm -f "+tree+"/var/lib/dbus/machine-id && echo "+idA+" > "+tree+"/var/lib/dbus/machine-id && echo "+idA+" > "+tree+"/etc/machine-id")
		if r := e.nsb(t, "doctor"); !strings.Contains(r.stdout, "shared by "+a+", "+b) {
			t.Errorf("doctor does not list %s and %s as sharing an ID:\n%s", a, b, r)
		}
		r := e.mustNsb(t, "boot", b)
		if !strings.Contains(r.stderr, "machine ID") {
			t.Errorf("the one-time fix is not said:\n%s", r)
		}
		etc, dbus := machineIDs(t, e, b)
		if etc == idA || etc != dbus {
			t.Errorf("%s after the fix: /etc/machine-id %s, D-Bus's %s (%s has %s)", b, etc, dbus, a, idA)
		}
		if r := e.mustNsb(t, "stop", b); strings.Contains(r.stderr, "machine ID") {
			t.Errorf("said more than once:\n%s", r)
		}
		if r := e.mustNsb(t, "boot", b); strings.Contains(r.stderr, "machine ID") {
			t.Errorf("the fix is said again at the next boot:\n%s", r)
		}
		e.mustNsb(t, "stop", a, b, c)
	})

	t.Run("failed boot remembers nothing", func(t *testing.T) {
		before := e.mustSh(t, "cat "+settings(a))
		r := e.nsb(t, "boot", a, "--network", "bridge:nosuch", "--memory", "300M", "--port", "18096:80")
		if r.code != 1 {
			t.Fatalf("boot onto a missing bridge:\n%s", r)
		}
		// Its log lines are this boot's, not the last shutdown's.
		if strings.Contains(r.stderr, "Powering off") || strings.Contains(r.stderr, "exited successfully") {
			t.Errorf("a failed boot shows the last run's log lines:\n%s", r)
		}
		if after := e.mustSh(t, "cat "+settings(a)); after != before {
			t.Errorf("a failed boot changed the settings:\n%s\nwas:\n%s", after, before)
		}
		if o := rememberedOptions(t, e, a); o.Network != "veth" || len(o.Ports) != 0 {
			t.Errorf("options after a failed boot: %+v", o)
		}
		if i := status(t, e, a); i.Limits != nil {
			t.Errorf("limits of a failed boot remembered: %+v", i.Limits)
		}

		// set clears what it set; 0 is out of range, none and an empty
		// value clear.
		wantFail(t, e.nsb(t, "set", a, "--io-weight", "0"), 2, "or none")
		e.mustNsb(t, "set", a, "--memory", "300M", "--tasks", "500")
		e.mustNsb(t, "set", a, "--memory=")
		e.mustNsb(t, "set", a, "--tasks", "none")
		if i := status(t, e, a); i.Limits != nil {
			t.Errorf("limits after clearing them all: %+v", i.Limits)
		}
		// A limit set on a stopped machine is one its boot can apply:
		// set refuses what the host cannot carry, as on a running machine.
		if r := e.nsb(t, "set", a, "--io-weight", "50"); r.code != 0 {
			wantFail(t, r, 1, "no controller")
		}
		e.mustNsb(t, "boot", a)
		e.mustNsb(t, "set", a, "--io-weight", "none", "--memory", "400M")
		e.mustNsb(t, "set", a, "--memory", "none")
		if i := status(t, e, a); i.Limits != nil {
			t.Errorf("limits of a running machine after clearing them: %+v", i.Limits)
		}
		e.mustNsb(t, "stop", a)

		// A short timeout still shows the boot's last lines (or says it
		// wrote none).
		r = e.nsb(t, "boot", a, "--timeout", "50ms")
		if r.code != 1 || !strings.Contains(r.stderr, "last log lines of "+a) {
			t.Errorf("boot --timeout 50ms:\n%s", r)
		}
		waitFor(t, 30*time.Second, a+" stopped after the failed boot", func() (bool, string) {
			i := status(t, e, a)
			return i.State == "stopped", i.State
		})
	})

	t.Run("ports", func(t *testing.T) {
		e.mustNsb(t, "boot", a, "--port", "18091:80")
		e.mustNsb(t, "stop", a)
		e.mustNsb(t, "boot", a, "--no-ports", "--port", "18092:80")
		if o := rememberedOptions(t, e, a); len(o.Ports) != 1 || !strings.Contains(o.Ports[0], "18092") {
			t.Errorf("--no-ports --port 18092:80 remembered %q", o.Ports)
		}
		// The port a runs forwards to it, and b's boot onto it is refused.
		wantFail(t, e.nsb(t, "boot", b, "--port", "18092:80"), 1, "forwarded to machine "+a)
		if i := status(t, e, b); i.State != "stopped" {
			t.Errorf("%s after a refused boot: %s", b, i.State)
		}
		// A host process listening on the port: refused, naming it.
		done := make(chan result, 1)
		const pidFile = "/run/e2e-p-listener.pid"
		go func() {
			done <- e.runIn(t, "", "sh", "-c", "echo $$ > "+pidFile+"; exec timeout 60 systemd-socket-activate -l 18093 sleep 60 >/dev/null 2>&1")
		}()
		waitFor(t, 20*time.Second, "a listener on 18093", func() (bool, string) {
			out := e.query(t, "ss -ltnH 'sport = :18093'")
			return strings.Contains(out, "18093"), out
		})
		wantFail(t, e.nsb(t, "boot", b, "--port", "18093"), 1, "in use on this host by systemd-socket")
		e.sh(t, "kill $(cat "+pidFile+") && rm -f "+pidFile)
		<-done
		// One listening on the host's ::1 only (where only nsbox's loopback
		// forward would serve): refused too.
		go func() {
			done <- e.runIn(t, "", "sh", "-c", "echo $$ > "+pidFile+"; exec timeout 60 systemd-socket-activate -l [::1]:18094 sleep 60 >/dev/null 2>&1")
		}()
		waitFor(t, 20*time.Second, "a listener on [::1]:18094", func() (bool, string) {
			out := e.query(t, "ss -ltnH 'sport = :18094'")
			return strings.Contains(out, "[::1]:18094"), out
		})
		wantFail(t, e.nsb(t, "boot", b, "--port", "tcp:18094:80"), 1, "in use on this host by systemd-socket")
		e.sh(t, "kill $(cat "+pidFile+") && rm -f "+pidFile)
		<-done
		if o := rememberedOptions(t, e, b); len(o.Ports) != 0 {
			t.Errorf("refused ports remembered: %q", o.Ports)
		}
		e.mustNsb(t, "stop", a)
	})

	t.Run("names checked first", func(t *testing.T) {
		wantFail(t, e.nsb(t, "boot", a, "e2e-p-wbe"), 3, "e2e-p-wbe") // no such machine
		if i := status(t, e, a); i.State != "stopped" {
			t.Errorf("%s booted although another name was mistyped: %s", a, i.State)
		}
	})
}
