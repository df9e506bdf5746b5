//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// info is the part of "nsbox list/status --output json" the tests read.
type info struct {
	Name       string   `json:"name"`
	State      string   `json:"state"`
	OS         string   `json:"os"`
	Version    string   `json:"version"`
	Addresses  []string `json:"addresses"`
	Root       string   `json:"root"`
	Managed    bool     `json:"managed"`
	Leader     int      `json:"leader"`
	Unit       string   `json:"unit"`
	Interfaces []string `json:"interfaces"`
	Backend    string   `json:"backend"`
	Usage      int64    `json:"usage_bytes"`
	ReadOnly   bool     `json:"read_only"`
	ImageDir   string   `json:"image_dir"`
	ImageType  string   `json:"image_type"`
	Storage    string   `json:"storage"`
	Base       string   `json:"base"`
	BaseUsage  int64    `json:"base_usage_bytes"`
	Autostart  string   `json:"autostart"`
	Sockets    []string `json:"sockets"`
	Limits     *struct {
		Memory uint64 `json:"memory_bytes"`
		Tasks  uint64 `json:"tasks"`
	} `json:"limits"`
	Use *struct {
		Memory uint64 `json:"memory_bytes"`
		Tasks  uint64 `json:"tasks"`
	} `json:"use"`
}

// hostileTar is a root file system tarball whose second member is written
// through a symbolic link the first one makes: /etc on the host.
func hostileTar(t *testing.T) []byte {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10},
		{Name: "escape", Typeflag: tar.TypeSymlink, Linkname: "/etc", Mode: 0o777},
		{Name: "escape/e2e-evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
	} {
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		w.Write(bytes.Repeat([]byte("x"), int(h.Size)))
	}
	w.Close()
	return buf.Bytes()
}

func list(t *testing.T, e *env, extra ...string) map[string]info {
	t.Helper()
	r := e.mustNsb(t, append([]string{"list", "--output", "json"}, extra...)...)
	var infos []info
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil {
		t.Fatalf("list --output json is not JSON: %v\n%s", err, r.stdout)
	}
	out := map[string]info{}
	for _, i := range infos {
		out[i.Name] = i
	}
	return out
}

func status(t *testing.T, e *env, name string, extra ...string) info {
	t.Helper()
	r := e.mustNsb(t, append(append([]string{"status", "--output", "json"}, extra...), name)...)
	var i info
	if err := json.Unmarshal([]byte(r.stdout), &i); err != nil {
		t.Fatalf("status --output json is not JSON: %v\n%s", err, r.stdout)
	}
	return i
}

// nsbox's exit statuses for a refusal (README "Exit status"): what an
// orchestrator tells apart from a failure (1) and a usage error (2).
const (
	exitNotFound   = 3
	exitExists     = 4
	exitRunning    = 5
	exitNotRunning = 6
	exitBusy       = 7
)

// wantFail checks an error the user caused: the given exit status, one
// error line on stderr ("nsbox: ...") that says what, nothing on stdout.
// Progress lines of a long operation may come before it.
func wantFail(t *testing.T, r result, code int, says string) {
	t.Helper()
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasPrefix(l, "nsbox: ") {
			errLines = append(errLines, l)
		}
	}
	if r.code != code || len(errLines) != 1 || !strings.Contains(errLines[0], says) || r.stdout != "" {
		t.Errorf("want exit %d and one error line saying %q:\n%s", code, says, r)
	}
}

// waitFor polls cond until it holds or d passes, and reports what it saw.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, seen := cond()
		if ok {
			return
		}
		last = seen
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last seen: %s", what, d, last)
}

func TestDirect(t *testing.T) {
	if systemdBooted() {
		t.Skip("systemd is PID 1 here: the direct backend is for hosts without it")
	}
	e := hostEnv(t, "direct")
	scenarios(t, e)
}

func TestMachined(t *testing.T) {
	if !systemdBooted() {
		// In the test host, apart from TestCreate's work on this host.
		t.Parallel()
	}
	scenarios(t, machinedEnv(t))
}

// machinedEnv is nsbox on machined: on this host where systemd is PID 1,
// otherwise in the test host, booted on first use.
func machinedEnv(t *testing.T) *env {
	if systemdBooted() {
		return hostEnv(t, "machined")
	}
	hostOnce.Do(func() {
		// The test host has no network of its own: its creates copy the
		// suite's bookworm base (suiteBase), bound into it.
		if host, hostErr = bootTestHost(); hostErr == nil {
			userGuest, hostErr = seedUser("the test host", host.prefix(), "/usr/local/bin/nsbox", guestCache+"/bases/"+suiteBaseKey+"/root")
		}
	})
	if hostErr != nil {
		t.Fatalf("test host: %v", hostErr)
	}
	return guestEnv(t, host)
}

// scenarios is the lifecycle every backend must pass, in order.
func scenarios(t *testing.T, e *env) {
	const name = "e2e-bw"
	root := e.rootDir + "/" + name
	machined := e.name == "machined"

	t.Run("create", func(t *testing.T) {
		// A copy: the scenarios look into its tree from the host, and
		// plant what a machine's root would (overlayScenario does the
		// same for an overlay machine).
		e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", "copy")
		e.mustSh(t, "test -d "+root+" && test -f "+root+"/etc/os-release")
		if got := strings.TrimSpace(e.mustSh(t, "cat "+root+"/etc/hostname")); got != name {
			t.Errorf("hostname %q, want %q", got, name)
		}
		if got := e.mustSh(t, "stat -c %s "+root+"/etc/machine-id"); strings.TrimSpace(got) != "0" {
			t.Errorf("machine-id not emptied: size %s", got)
		}
		e.mustSh(t, "! ls -a "+e.rootDir+"/.nsbox | grep -q '^\\.#"+name+"\\.'")
		// The tree is in the root-only store; ROOT/NAME links to it.
		if got := strings.TrimSpace(e.mustSh(t, "readlink "+root)); got != ".nsbox/"+name {
			t.Errorf("%s links to %q, want .nsbox/%s", root, got, name)
		}
		// Disk usage takes a walk of the tree: only with --usage.
		i, ok := list(t, e)[name]
		if !ok || i.State != "stopped" || i.OS != "debian" || i.Version != "12" || i.Root != root || i.Usage != 0 {
			t.Fatalf("list: %+v", i)
		}
		if i := list(t, e, "--usage")[name]; i.Usage < 100<<20 {
			t.Fatalf("list --usage: %+v", i)
		}
	})

	t.Run("boot", func(t *testing.T) {
		e.mustNsb(t, "boot", name)
		i := status(t, e, name)
		if i.State != "running" || i.Leader <= 0 || i.Backend != e.name {
			t.Fatalf("status after boot: %+v", i)
		}
		state := strings.TrimSpace(e.nsb(t, "shell", name, "--", "systemctl", "is-system-running").stdout)
		if state != "running" && state != "degraded" {
			t.Errorf("container systemd is %q", state)
		}
		if len(i.Interfaces) != 1 || i.Interfaces[0] != "ve-"+name {
			t.Errorf("interfaces %v, want [ve-%s]", i.Interfaces, name)
		}
		e.mustSh(t, "ip link show ve-"+name)
		if machined {
			out := e.mustSh(t, "busctl call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager ListMachines")
			if !strings.Contains(out, `"`+name+`"`) {
				t.Errorf("machined's ListMachines lacks %s: %s", name, out)
			}
			leader := strings.TrimSpace(e.mustSh(t, "machinectl show --property=Leader --value "+name))
			if leader != fmt.Sprint(i.Leader) {
				t.Errorf("machinectl says leader %s, nsbox says %d", leader, i.Leader)
			}
			if unit := strings.TrimSpace(e.mustSh(t, "machinectl show --property=Unit --value "+name)); unit != i.Unit {
				t.Errorf("machinectl says unit %s, nsbox says %s", unit, i.Unit)
			}
		}
		if l := list(t, e)[name]; l.State != "running" {
			t.Errorf("list says %s", l.State)
		}
	})

	t.Run("shell", func(t *testing.T) {
		r := e.mustNsb(t, "shell", name, "--", "cat", "/etc/os-release")
		if !strings.Contains(r.stdout, "VERSION_CODENAME=bookworm") {
			t.Errorf("os-release: %s", r.stdout)
		}
		if r := e.nsb(t, "shell", name, "--", "sh", "-c", "exit 7"); r.code != 7 {
			t.Errorf("exit 7 came back as %d\n%s", r.code, r)
		}
		if r := e.nsb(t, "shell", name, "--", "sh", "-c", "kill -9 $$"); r.code != 137 {
			t.Errorf("SIGKILL came back as %d, want 137\n%s", r.code, r)
		}
		if r := e.runIn(t, "through stdin\n", e.argv("shell", name, "--", "cat")...); r.stdout != "through stdin\n" {
			t.Errorf("stdin not passed: %s", r)
		}
		if r := e.nsb(t, "shell", name, "--", "sh", "-c", "echo $HOME; hostname"); r.stdout != "/root\n"+name+"\n" {
			t.Errorf("environment: %s", r)
		}
		out, code := e.pty(t, []string{"echo $((6*7))\r", "exit\r"}, "shell", name)
		if code != 0 || !strings.Contains(out, "42\r\n") {
			t.Errorf("interactive shell: exit %d, terminal showed:\n%s", code, out)
		}
	})

	t.Run("exec options", func(t *testing.T) { execRunning(t, e, name) })

	t.Run("errors", func(t *testing.T) {
		// The same release again: there already, nothing changed.
		if r := e.nsb(t, "create", name, "--release", "bookworm"); r.code != 0 || !strings.Contains(r.stderr, name+" exists already, made from release bookworm") {
			t.Errorf("a create again of the same release:\n%s", r)
		}
		wantFail(t, e.nsb(t, "create", name, "--release", "trixie"), exitExists, "already exists")
		wantFail(t, e.nsb(t, "boot", "e2e-nope"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "boot", name), exitRunning, "is running")
		wantFail(t, e.nsb(t, "remove", name), exitRunning, "is running")
		wantFail(t, e.nsb(t, "shell", "e2e-nope", "--", "true"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "create", "../etc", "--release", "bookworm"), 1, "invalid machine name")
		wantFail(t, e.nsb(t, "create", "e2e-x", "--release", "hamm"), 1, "unknown release")
		wantFail(t, e.nsb(t, "stop", "e2e-nope"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "boot", name, "--network", "wifi"), 2, "network")
		wantFail(t, e.nsb(t, "frobnicate"), 2, "unknown command")
		wantFail(t, e.nsb(t, "list", "--bogus"), 2, "bogus")
		wantFail(t, e.run(t, e.nsbox, "--root-dir", "relative/dir", "list"), 2, "absolute")
		wantFail(t, e.run(t, e.nsbox, "--root-dir", "/nonexistent-e2e", "list"), 1, "does not exist")
		wantFail(t, e.run(t, e.nsbox, "--root-dir", "/etc/hostname", "list"), 1, "not a directory")
		if !machined {
			wantFail(t, e.run(t, e.nsbox, "--backend", "machined", "--root-dir", e.rootDir, "--cache-dir", e.cacheDir, "list"), 1, "systemd is not PID 1")
		}
		if i := status(t, e, name); i.State != "running" {
			t.Errorf("after the refused commands %s is %s", name, i.State)
		}
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-x && test ! -e "+e.rootDir+"/e2e-nope")
	})

	t.Run("stop", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		if i := list(t, e)[name]; i.State != "stopped" {
			t.Errorf("list after stop: %+v", i)
		}
		e.mustSh(t, "! ip link show ve-"+name+" 2>/dev/null")
		if machined {
			e.mustSh(t, "! machinectl show "+name+" >/dev/null 2>&1")
			if out := e.sh(t, "systemctl list-units --all --no-legend 'nsbox-"+name+".service'").stdout; strings.TrimSpace(out) != "" {
				t.Errorf("unit left after stop: %s", out)
			}
		}
		wantFail(t, e.nsb(t, "stop", name), exitNotRunning, "not running")
		t.Run("exec options", func(t *testing.T) { execStopped(t, e, name) })
	})

	t.Run("binds", func(t *testing.T) {
		e.mustSh(t, "rm -rf /var/tmp/e2e-priv && mkdir -m 700 /var/tmp/e2e-priv && mkdir -p /var/tmp/e2e-priv/data /var/tmp/e2e-priv/ro && echo from-host > /var/tmp/e2e-priv/data/host.txt && echo ro > /var/tmp/e2e-priv/ro/ro.txt")
		defer e.sh(t, "rm -rf /var/tmp/e2e-priv")
		e.mustNsb(t, "boot", name, "--bind", "/var/tmp/e2e-priv/data:/mnt/data", "--bind-ro", "/var/tmp/e2e-priv/ro:/mnt/ro")
		if r := e.mustNsb(t, "shell", name, "--", "cat", "/mnt/data/host.txt"); r.stdout != "from-host\n" {
			t.Errorf("host file inside: %s", r)
		}
		e.mustNsb(t, "shell", name, "--", "sh", "-c", "echo from-machine > /mnt/data/machine.txt")
		if got := e.mustSh(t, "cat /var/tmp/e2e-priv/data/machine.txt; stat -c %u /var/tmp/e2e-priv/data/machine.txt"); got != "from-machine\n0\n" {
			t.Errorf("machine's file on the host (content, owner): %q", got)
		}
		if r := e.nsb(t, "shell", name, "--", "sh", "-c", "echo x > /mnt/ro/new.txt"); r.code == 0 {
			t.Errorf("write to a --bind-ro succeeded: %s", r)
		}
		e.mustSh(t, "test ! -e /var/tmp/e2e-priv/ro/new.txt")
		// Options are remembered: a plain boot gets the same binds. The
		// caller's files (a lock, say) do not live on in what it starts.
		e.mustNsb(t, "stop", name)
		bootHoldsNoCallerFile(t, e, name)
		if r := e.mustNsb(t, "shell", name, "--", "cat", "/mnt/data/machine.txt"); r.stdout != "from-machine\n" {
			t.Errorf("remembered bind: %s", r)
		}
		e.mustSh(t, "grep -q '^Bind=/var/tmp/e2e-priv/data:/mnt/data' /etc/systemd/nspawn/"+name+".nspawn")
		e.mustNsb(t, "stop", name)
		e.mustNsb(t, "boot", name, "--no-binds")
	})

	t.Run("live bind", func(t *testing.T) {
		e.mustSh(t, "rm -rf /var/tmp/e2e-priv && mkdir -m 700 /var/tmp/e2e-priv && mkdir -p /var/tmp/e2e-priv/live && echo from-host > /var/tmp/e2e-priv/live/h.txt")
		defer e.sh(t, "rm -rf /var/tmp/e2e-priv")
		e.mustNsb(t, "bind", name, "/var/tmp/e2e-priv/live", "/mnt/live", "--mkdir")
		e.mustNsb(t, "bind", name, "/var/tmp/e2e-priv/live", "/mnt/live-ro", "--mkdir", "--read-only")
		if r := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /mnt/live/h.txt && echo from-machine > /mnt/live/m.txt"); r.stdout != "from-host\n" {
			t.Errorf("live bind inside: %s", r)
		}
		if got := e.mustSh(t, "cat /var/tmp/e2e-priv/live/m.txt; stat -c %u /var/tmp/e2e-priv/live/m.txt"); got != "from-machine\n0\n" {
			t.Errorf("machine's file on the host (content, owner): %q", got)
		}
		if r := e.nsb(t, "shell", name, "--", "touch", "/mnt/live-ro/x"); r.code == 0 {
			t.Errorf("write through a read-only live bind: %s", r)
		}
		wantFail(t, e.nsb(t, "bind", name, "/nonexistent-e2e", "/mnt/x"), 1, "does not exist")
		wantFail(t, e.nsb(t, "bind", "e2e-nope", "/var/tmp", "/mnt/x"), exitNotFound, "no such machine")
	})

	t.Run("cat and edit", func(t *testing.T) { settingsScenario(t, e, name) })

	t.Run("network", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		localnetBefore := e.mustSh(t, "cat /proc/sys/net/ipv4/conf/all/route_localnet /proc/sys/net/ipv4/conf/lo/route_localnet")
		e.mustNsb(t, "boot", name, "--port", "tcp:18080:8080", "--port", "tcp:18081:8081", "--port", "udp:15353:5353")
		var i info
		waitFor(t, 20*time.Second, "the machine's address", func() (bool, string) {
			i = status(t, e, name)
			return len(i.Addresses) > 0, fmt.Sprint(i.Addresses)
		})
		addr := i.Addresses[0]
		if !strings.HasPrefix(addr, "10.89.") {
			t.Errorf("address %s is not from the pool", addr)
		}
		hostEnd := strings.TrimSpace(e.mustSh(t, "ip -4 -o addr show dev ve-"+name+" | awk '{print $4}' | cut -d/ -f1"))
		// A listener inside, reached from the host over the veth, directly
		// and through the forwarded port on the host's end of the link.
		e.mustNsb(t, "shell", name, "--", "systemd-run", "--unit=e2e-echo", "systemd-socket-activate", "-l", "8080", "--inetd", "-a", "echo", "hello-from-"+name)
		for _, target := range []string{addr + "/8080", hostEnd + "/18080"} {
			var got string
			waitFor(t, 10*time.Second, "a reply from "+target, func() (bool, string) {
				got = e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+target+"; cat <&3'").stdout
				return got == "hello-from-"+name+"\n", got
			})
		}
		// And the other way: the machine reaches the host's end.
		e.mustSh(t, "systemd-run --unit=e2e-host-echo systemd-socket-activate -l "+hostEnd+":18181 --inetd -a echo hello-from-host || true")
		defer e.sh(t, "systemctl stop e2e-host-echo 2>/dev/null; pkill -f 'systemd-socket-activate -l "+hostEnd+":18181' || true")
		if e.host == nil {
			e.mustSh(t, "(setsid systemd-socket-activate -l "+hostEnd+":18181 --inetd -a echo hello-from-host >/dev/null 2>&1 &) ; sleep 0.3")
		}
		r := e.nsb(t, "shell", name, "--", "bash", "-c", "exec 3<>/dev/tcp/"+hostEnd+"/18181; cat <&3")
		if r.stdout != "hello-from-host\n" {
			t.Errorf("machine to host: %s", r)
		}
		if !strings.Contains(e.mustSh(t, "cat /etc/systemd/nspawn/"+name+".nspawn"), "Port=tcp:18080:8080") {
			t.Error("port not remembered")
		}
		loopbackForwards(t, e, name, hostEnd, localnetBefore)
		e.mustNsb(t, "boot", name, "--no-ports")
	})

	t.Run("bridge and zone", func(t *testing.T) {
		e.mustNsb(t, "stop", name)
		// A bridge of the user's, with an address of its own.
		e.mustSh(t, "ip link add br-e2e type bridge && ip addr add 10.123.0.1/24 dev br-e2e && ip link set br-e2e up")
		defer e.sh(t, "ip link del br-e2e")
		e.mustNsb(t, "boot", name, "--network", "bridge:br-e2e")
		if i := status(t, e, name); len(i.Interfaces) != 1 || i.Interfaces[0] != "vb-"+name {
			t.Errorf("interfaces on a bridge: %v", i.Interfaces)
		}
		e.mustSh(t, "ip -o link show master br-e2e | grep -q ' vb-"+name+"@'")
		// nsbox's static host0 address is for its own veth only.
		if r := e.nsb(t, "shell", name, "--", "test", "-e", "/etc/systemd/network/10-nsbox-host0.network"); r.code != 1 {
			t.Errorf("nsbox's host0 file on a bridge: %s", r)
		}
		// The machine is on the bridge's link: give it an address there
		// and reach a listener in it from the host.
		e.mustNsb(t, "shell", name, "--", "ip", "addr", "add", "10.123.0.2/24", "dev", "host0")
		e.mustNsb(t, "shell", name, "--", "systemd-run", "--unit=e2e-bridge-echo", "systemd-socket-activate", "-l", "8080", "--inetd", "-a", "echo", "hello-over-bridge")
		waitFor(t, 10*time.Second, "a reply over the bridge", func() (bool, string) {
			got := e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/10.123.0.2/8080; cat <&3'").stdout
			return got == "hello-over-bridge\n", got
		})
		e.mustNsb(t, "stop", name)
		e.mustSh(t, "! ip link show vb-"+name+" 2>/dev/null")

		// A zone: nspawn makes the vz- bridge with the first machine and
		// removes it with the last.
		e.mustNsb(t, "boot", name, "--network", "zone:e2e")
		e.mustSh(t, "ip -o link show master vz-e2e | grep -q ' vb-"+name+"@'")
		e.mustNsb(t, "stop", name)
		waitFor(t, 10*time.Second, "the zone's bridge gone", func() (bool, string) {
			r := e.sh(t, "ip -o link show vz-e2e")
			return r.code != 0, r.stdout
		})
		e.mustNsb(t, "boot", name, "--network", "veth")
		if i := status(t, e, name); len(i.Addresses) == 0 {
			waitFor(t, 20*time.Second, "the pool address back on veth", func() (bool, string) {
				i := status(t, e, name)
				return len(i.Addresses) > 0, fmt.Sprint(i.Addresses)
			})
		}
	})

	if e.host != nil {
		// The test host has a network namespace of its own, so a networkd
		// there manages only its machines' veths.
		t.Run("networkd on the host serves the veth", func(t *testing.T) {
			e.mustNsb(t, "stop", name)
			// networkd takes every veth its stock file matches, a user's
			// machines' too, and keeps the addresses it gave them: it is
			// kept to the suite's own.
			const others = "/run/systemd/network/10-e2e-others-veths.network"
			e.mustSh(t, "mkdir -p /run/systemd/network && printf '[Match]\\nKind=veth\\nName=!ve-e2e-*\\n\\n[Link]\\nUnmanaged=yes\\n' > "+others)
			defer e.sh(t, "rm -f "+others)
			e.mustSh(t, "systemctl start systemd-networkd")
			defer e.sh(t, "systemctl stop systemd-networkd.socket systemd-networkd")
			e.mustNsb(t, "boot", name)
			// networkd's pool and DHCP server, not nsbox's /30.
			var i info
			waitFor(t, 30*time.Second, "an address from networkd's DHCP server", func() (bool, string) {
				i = status(t, e, name)
				return len(i.Addresses) > 0, fmt.Sprint(i.Addresses)
			})
			for _, a := range i.Addresses {
				if strings.HasPrefix(a, "10.89.") {
					t.Errorf("nsbox configured the veth networkd serves: %v", i.Addresses)
				}
			}
			if r := e.nsb(t, "shell", name, "--", "test", "-e", "/etc/systemd/network/10-nsbox-host0.network"); r.code != 1 {
				t.Errorf("nsbox's static host0 file under networkd: %s", r)
			}
			if out := e.mustSh(t, "networkctl status ve-"+name); !strings.Contains(out, "80-container-ve.network") {
				t.Errorf("networkd does not manage ve-%s:\n%s", name, out)
			}
			e.mustNsb(t, "stop", name)
			e.mustSh(t, "systemctl stop systemd-networkd.socket systemd-networkd")
			e.mustNsb(t, "boot", name)
			waitFor(t, 20*time.Second, "the pool address back without networkd", func() (bool, string) {
				i := status(t, e, name)
				return len(i.Addresses) > 0 && strings.HasPrefix(i.Addresses[0], "10.89."), fmt.Sprint(i.Addresses)
			})
		})
	}

	t.Run("limits", func(t *testing.T) {
		wantFail(t, e.nsb(t, "set", name, "--memory", "-5M"), 2, "size")
		wantFail(t, e.nsb(t, "boot", name, "--cpus", "many"), 2, "cpus")
		e.mustNsb(t, "stop", name)
		e.mustNsb(t, "boot", name, "--memory", "64M", "--tasks", "500")
		i := status(t, e, name)
		if i.Limits == nil || i.Limits.Memory != 64<<20 || i.Limits.Tasks != 500 {
			t.Errorf("status limits: %+v", i.Limits)
		}
		// The test host has no accounting (its controllers are cgroup v1,
		// read-only inside nspawn); this host does.
		if !machined && (i.Use == nil || i.Use.Tasks == 0 || i.Use.Memory == 0) {
			t.Errorf("status use: %+v", i.Use)
		}
		if machined {
			if got := strings.TrimSpace(e.mustSh(t, "systemctl show --property=MemoryMax --value nsbox-"+name+".service")); got != "67108864" {
				t.Errorf("unit MemoryMax %s", got)
			}
			e.mustNsb(t, "set", name, "--memory", "128M")
			if got := strings.TrimSpace(e.mustSh(t, "systemctl show --property=MemoryMax --value nsbox-"+name+".service")); got != "134217728" {
				t.Errorf("unit MemoryMax after set %s", got)
			}
			// The test host's memory controller is cgroup v1, read-only
			// inside nspawn: enforcement is proven by the direct backend.
		} else {
			// A process that allocates past the limit is killed; the
			// machine and its services survive.
			r := e.nsb(t, "shell", name, "--", "sh", "-c", `x=$(head -c 200M /dev/zero | tr "\0" a); echo ${#x}`)
			if r.code == 0 {
				t.Errorf("allocation past --memory 64M survived: %s", r)
			}
			if s := strings.TrimSpace(e.nsb(t, "shell", name, "--", "systemctl", "is-system-running").stdout); s != "running" && s != "degraded" {
				t.Errorf("machine after the OOM kill: %q", s)
			}
			e.mustNsb(t, "set", name, "--memory", "1G")
			r = e.nsb(t, "shell", name, "--", "sh", "-c", `x=$(head -c 200M /dev/zero | tr "\0" a); echo ${#x}`)
			if strings.TrimSpace(r.stdout) != "209715200" {
				t.Errorf("allocation under the raised limit: %s", r)
			}
		}
		e.mustNsb(t, "stop", name)
		e.mustSh(t, "rm -f /var/lib/nsbox/limits/"+name+".json")
		e.mustNsb(t, "boot", name)
	})

	t.Run("logs", func(t *testing.T) {
		if r := e.mustNsb(t, "logs", name, "-n", "200"); !strings.Contains(r.stdout, "Startup finished") {
			t.Errorf("machine journal:\n%s", r.stdout)
		}
		if r := e.mustNsb(t, "logs", name, "--host", "-n", "50"); len(strings.TrimSpace(r.stdout)) == 0 {
			t.Error("host-side log is empty")
		}
		e.mustNsb(t, "stop", name)
		if r := e.mustNsb(t, "logs", name, "-n", "20"); !strings.Contains(r.stdout, "Powering off") && !strings.Contains(r.stdout, "Shutting down") {
			t.Errorf("journal of the stopped machine lacks its shutdown:\n%s", r.stdout)
		}
		e.mustNsb(t, "boot", name)
	})

	t.Run("autostart", func(t *testing.T) {
		if !machined {
			wantFail(t, e.nsb(t, "enable", name), 1, "needs systemd as PID 1")
			return
		}
		unit := "nsbox@" + name + ".service"
		// Enabled while it runs: the unit file serves from the next start.
		e.mustNsb(t, "enable", name)
		defer e.nsb(t, "disable", name)
		e.mustSh(t, "test -f /etc/systemd/system/"+unit+" && test -L /etc/systemd/system/machines.target.wants/"+unit)
		if r := e.mustNsb(t, "unit", name); !strings.Contains(r.stdout, "ExecStart=systemd-nspawn") || !strings.Contains(r.stdout, "WantedBy=machines.target") {
			t.Errorf("unit:\n%s", r.stdout)
		}
		if i := status(t, e, name); i.Autostart != "enabled" {
			t.Errorf("status autostart %q", i.Autostart)
		}
		e.mustNsb(t, "stop", name)
		if got := strings.TrimSpace(e.sh(t, "systemctl is-enabled "+unit).stdout); got != "enabled" {
			t.Errorf("is-enabled: %s", got)
		}
		// Started by systemd alone, as at host boot.
		e.mustSh(t, "systemctl start "+unit)
		waitFor(t, 30*time.Second, "machine started by its unit, with its address", func() (bool, string) {
			i := status(t, e, name)
			return i.State == "running" && len(i.Addresses) > 0 && e.sh(t, "ip -4 -o addr show dev ve-"+name).stdout != "", fmt.Sprintf("%+v", i)
		})
		// Its unit restarts a machine whose PID 1 dies (Restart=on-failure).
		before := status(t, e, name).Leader
		e.mustNsb(t, "kill", name, "--signal", "SIGKILL")
		waitFor(t, 60*time.Second, "machine restarted by its unit", func() (bool, string) {
			i := status(t, e, name)
			return i.State == "running" && i.Leader != 0 && i.Leader != before, fmt.Sprintf("%+v", i)
		})
		// Up, not only registered: a machine still starting puts its
		// poweroff off until its start jobs end, which on a loaded host
		// took longer than stop waits (a CI run saw it time out).
		waitFor(t, 120*time.Second, "the restarted machine's systemd up", func() (bool, string) {
			r := e.nsb(t, "shell", name, "--", "systemctl", "is-system-running")
			st := strings.TrimSpace(r.stdout)
			return st == "running" || st == "degraded", r.String()
		})
		e.mustNsb(t, "disable", name)
		e.mustSh(t, "test ! -e /etc/systemd/system/machines.target.wants/"+unit)
		if i := status(t, e, name); i.Autostart != "disabled" || i.State != "running" {
			t.Errorf("after disable: %+v", i)
		}
		// Once stopped, a disabled machine is as one never enabled: its
		// next boot is a transient unit again.
		e.mustNsb(t, "stop", name)
		e.mustSh(t, "test ! -e /etc/systemd/system/"+unit)
		e.mustNsb(t, "boot", name)
		if i := status(t, e, name); i.Unit != "nsbox-"+name+".service" {
			t.Errorf("boot after disable runs from %q", i.Unit)
		}
	})

	t.Run("socket activation", func(t *testing.T) { socketScenario(t, e, name) })

	t.Run("reboot", func(t *testing.T) {
		before := status(t, e, name).Leader
		e.mustNsb(t, "reboot", name)
		waitFor(t, 60*time.Second, "reboot to a new leader that runs", func() (bool, string) {
			i := status(t, e, name)
			if i.State != "running" || i.Leader == before || i.Leader == 0 {
				return false, fmt.Sprintf("%+v", i)
			}
			r := e.nsb(t, "shell", name, "--", "systemctl", "is-system-running")
			s := strings.TrimSpace(r.stdout)
			return s == "running" || s == "degraded", s
		})
	})

	t.Run("two at once", func(t *testing.T) {
		const other = "e2e-bw2"
		e.mustNsb(t, "stop", name)
		// A second create of the release copies the suite's cached base,
		// which stays as it was.
		bases := e.mustNsb(t, "cache", "list", "--output", "json").stdout
		if r := e.mustNsb(t, "create", other, "--release", "bookworm", "--storage", "copy"); !strings.Contains(r.stderr, "copying base "+suiteBaseKey+"\n") {
			t.Errorf("the second create did not copy the cached base %s:\n%s", suiteBaseKey, r)
		}
		if after := e.mustNsb(t, "cache", "list", "--output", "json").stdout; after != bases {
			t.Errorf("the base cache changed with a create that copies a base:\n%s\nwas:\n%s", after, bases)
		}
		e.mustNsb(t, "boot", name, other)
		a, b := status(t, e, name), status(t, e, other)
		if a.State != "running" || b.State != "running" || a.Leader == b.Leader {
			t.Fatalf("both should run with their own leader: %+v %+v", a, b)
		}
		if strings.Join(a.Interfaces, ",") == strings.Join(b.Interfaces, ",") || len(b.Interfaces) != 1 {
			t.Errorf("interfaces not distinct: %v %v", a.Interfaces, b.Interfaces)
		}
		waitFor(t, 20*time.Second, "both machines have addresses", func() (bool, string) {
			a, b = status(t, e, name), status(t, e, other)
			return len(a.Addresses) > 0 && len(b.Addresses) > 0, fmt.Sprintf("%v %v", a.Addresses, b.Addresses)
		})
		if a.Addresses[0] == b.Addresses[0] {
			t.Errorf("addresses not distinct: %v %v", a.Addresses, b.Addresses)
		}
		if r := e.mustNsb(t, "shell", other, "--", "hostname"); r.stdout != other+"\n" {
			t.Errorf("second machine: %s", r)
		}
		// Several names, as machinectl takes them: a mistyped one stops
		// none; otherwise all stop, side by side.
		wantFail(t, e.nsb(t, "stop", name, other, "e2e-nope"), exitNotFound, `no such machine "e2e-nope"`)
		if a, b := status(t, e, name), status(t, e, other); a.State != "running" || b.State != "running" {
			t.Fatalf("a refused stop stopped %+v %+v", a, b)
		}
		e.mustNsb(t, "stop", name, other)
		if a, b := status(t, e, name), status(t, e, other); a.State != "stopped" || b.State != "stopped" {
			t.Errorf("after stop of both: %+v %+v", a, b)
		}
		e.mustNsb(t, "boot", name, other)
		t.Run("top", func(t *testing.T) { topScenario(t, e, other, name) })
		t.Run("names", func(t *testing.T) { namesScenario(t, e, name, other) })
		e.mustNsb(t, "remove", "--force", other)
		if _, ok := list(t, e)[other]; ok {
			t.Errorf("%s still listed after remove --force", other)
		}
	})

	if machined {
		t.Run("foreign machine", func(t *testing.T) {
			// machinectl knows images only in /var/lib/machines: the
			// name is the suite's, never a tree another put there.
			e.mustSh(t, "test ! -e /var/lib/machines/e2e-foreign")
			e.mustSh(t, "mkdir -p /var/lib/machines && cp -a "+e.rootDir+"/.nsbox/"+name+" /var/lib/machines/e2e-foreign && machinectl start e2e-foreign")
			defer func() {
				e.sh(t, "machinectl terminate e2e-foreign")
				waitFor(t, 30*time.Second, "e2e-foreign gone from machined", func() (bool, string) {
					r := e.sh(t, "machinectl show --property=State --value e2e-foreign")
					return r.code != 0, r.stdout
				})
				e.sh(t, "rm -rf /var/lib/machines/e2e-foreign")
			}()
			waitFor(t, 30*time.Second, "foreign machine listed", func() (bool, string) {
				i, ok := list(t, e)["e2e-foreign"]
				return ok && i.State == "running" && !i.Managed, fmt.Sprintf("%+v", i)
			})
		})
	}

	t.Run("image operations", func(t *testing.T) {
		wantFail(t, e.nsb(t, "clone", name, "e2e-clone"), exitRunning, "is running")
		e.mustNsb(t, "stop", name)
		e.mustNsb(t, "clone", name, "e2e-clone")
		wantFail(t, e.nsb(t, "clone", name, "e2e-clone"), exitExists, "already exists")
		wantFail(t, e.nsb(t, "clone", name, "bad..name"), 1, "invalid machine name")
		if got := e.mustSh(t, "cat "+e.rootDir+"/e2e-clone/etc/hostname; test -f /etc/systemd/nspawn/e2e-clone.nspawn && echo settings"); got != "e2e-clone\nsettings\n" {
			t.Errorf("clone: %q", got)
		}
		e.mustNsb(t, "rename", "e2e-clone", "e2e-ren")
		wantFail(t, e.nsb(t, "rename", "e2e-ren", name), exitExists, "already exists")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-clone && test ! -e /var/lib/machines/e2e-clone && test \"$(readlink /var/lib/machines/e2e-ren)\" = "+e.rootDir+"/.nsbox/e2e-ren")
		e.mustSh(t, "test \"$(cat "+e.rootDir+"/e2e-ren/etc/hostname)\" = e2e-ren")

		e.mustNsb(t, "export", "e2e-ren", "/var/tmp/e2e-export.tar.zst")
		defer e.sh(t, "rm -f /var/tmp/e2e-export.tar.zst /var/tmp/e2e-hostile.tar")
		e.mustNsb(t, "remove", "e2e-ren")
		e.mustNsb(t, "import", "e2e-imp", "/var/tmp/e2e-export.tar.zst")
		e.mustNsb(t, "boot", "e2e-imp")
		if r := e.mustNsb(t, "shell", "e2e-imp", "--", "hostname"); r.stdout != "e2e-imp\n" {
			t.Errorf("imported machine: %s", r)
		}
		e.mustNsb(t, "stop", "e2e-imp")

		// A tarball that writes through its own symlink is refused whole.
		e.writeFile(t, "/var/tmp/e2e-hostile.tar", hostileTar(t))
		wantFail(t, e.nsb(t, "import", "e2e-evil", "/var/tmp/e2e-hostile.tar"), 1, "unsafe archive")
		e.mustSh(t, "test ! -e /etc/e2e-evil && test ! -e "+e.rootDir+"/e2e-evil")

		e.mustNsb(t, "read-only", "e2e-imp")
		if i := status(t, e, "e2e-imp", "--usage"); !i.ReadOnly || i.Usage < 100<<20 {
			t.Errorf("read-only status: %+v", i)
		}
		wantFail(t, e.nsb(t, "remove", "e2e-imp"), 1, "read-only")
		e.mustNsb(t, "boot", "e2e-imp")
		if r := e.nsb(t, "shell", "e2e-imp", "--", "touch", "/e2e-file"); r.code == 0 {
			t.Errorf("write to a read-only machine: %s", r)
		}
		e.mustNsb(t, "stop", "e2e-imp")
		e.mustNsb(t, "read-only", "e2e-imp", "false")
		e.mustNsb(t, "remove", "e2e-imp")
	})

	t.Run("machinectl images", func(t *testing.T) { imagesScenario(t, e, name) })
	t.Run("overlay storage", func(t *testing.T) { overlayScenario(t, e) })
	t.Run("snapshots", func(t *testing.T) { snapshotScenario(t, e) })
	t.Run("run", func(t *testing.T) { runScenario(t, e) })
	t.Run("cp", func(t *testing.T) { cpScenario(t, e) })
	t.Run("remote", func(t *testing.T) { remoteScenario(t, e) })
	t.Run("send", func(t *testing.T) { sendScenario(t, e) })
	t.Run("send btrfs", func(t *testing.T) { sendBtrfsScenario(t, e) })
	t.Run("oci", func(t *testing.T) { ociScenario(t, e) })
	t.Run("app machine", func(t *testing.T) { appScenario(t, e) })
	t.Run("fleet", func(t *testing.T) { fleetScenario(t, e) })
	t.Run("url", func(t *testing.T) { urlScenario(t, e) })
	t.Run("image bases", func(t *testing.T) { imageBaseScenario(t, e) })
	t.Run("oci out", func(t *testing.T) { ociOutScenario(t, e) })
	t.Run("bind user", func(t *testing.T) { bindUserScenario(t, e) })
	t.Run("prune", func(t *testing.T) { pruneScenario(t, e) })
	t.Run("diff", func(t *testing.T) { diffScenario(t, e) })
	t.Run("isolation", func(t *testing.T) { isolation(t, e) })
	t.Run("boot options, machine IDs, ports", func(t *testing.T) { correctBoot(t, e) })
	t.Run("shell and console", func(t *testing.T) { correctShell(t, e) })
	t.Run("command line, bind, export, logs", func(t *testing.T) { correctCLI(t, e) })

	t.Run("reliability", func(t *testing.T) {
		e.nsb(t, "stop", name)
		reliability(t, e, name)
	})

	t.Run("remove", func(t *testing.T) {
		e.mustNsb(t, "remove", "--force", name)
		e.mustSh(t, "test ! -e "+root+" && test ! -e /etc/systemd/nspawn/"+name+".nspawn && test ! -L /var/lib/machines/"+name)
		if _, ok := list(t, e)[name]; ok {
			t.Errorf("%s still listed after remove", name)
		}
		wantFail(t, e.nsb(t, "remove", name), exitNotFound, "no such machine")
	})

	t.Run("nothing left behind", func(t *testing.T) {
		// The suite's machines are named e2e-...; nspawn keeps that much
		// of a long name too.
		if out := e.query(t, "ip -br link | grep -o '^ve-e2e-[^@ ]*'"); out != "" {
			t.Errorf("veths left: %s", out)
		}
		// nspawn and supervisors of the machines in this root directory.
		if out := e.query(t, "pgrep -fa '[s]ystemd-nspawn .*--directory="+e.rootDir+"/|--root-dir "+e.rootDir+" .*[_]_supervise'"); out != "" {
			t.Errorf("processes left: %s", out)
		}
		if out := e.query(t, "grep ' "+e.rootDir+"/' /proc/self/mountinfo"); out != "" {
			t.Errorf("mounts left: %s", out)
		}
		if out := e.query(t, "ls -A "+e.rootDir+" "+e.rootDir+"/.nsbox | grep -v '^\\.#.*\\.lck$' | grep '^\\.#'"); out != "" {
			t.Errorf("temporary trees left: %s", out)
		}
		if out := e.query(t, "ls /run/nsbox/machines/ 2>/dev/null | grep e2e-"); out != "" {
			t.Errorf("state files left: %s", out)
		}
		if out := e.query(t, "ls /run/nsbox/names/ 2>/dev/null | grep e2e-; [ -e /etc/hosts ] && grep -F \"$(printf '\\te2e-')\" /etc/hosts"); out != "" {
			t.Errorf("names left: %s", out)
		}
	})
}
