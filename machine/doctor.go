package machine

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/nsenter"
	"github.com/nsbox/nsbox/network"
	"golang.org/x/sys/unix"
)

// Check is one finding of Doctor: one line of nsbox doctor, one object of
// its JSON (docs/json.md).
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Needed bool   `json:"needed"` // a failed needed check makes doctor exit 1
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Version is nsbox's own version, on the check named "nsbox" only.
	Version string `json:"version,omitempty"`
}

// Doctor checks a host for what nsbox needs, each finding with its fix:
// root, the programs nsbox runs, the archive keyrings, the backend, the
// root directory, free space, machine IDs, cgroups, the system bus,
// systemd as PID 1, systemd-networkd and the inotify limit.
type Doctor struct {
	// Manager is the one the command line opens, or nil when it could not
	// be opened: OpenErr then says why, and the checks of the root
	// directory and its machines are left out.
	Manager *Manager
	OpenErr error
	// Pool is the address pool machines' veth links are taken from, named
	// where nsbox configures them itself ("": the Manager's).
	Pool string
	// Runner asks programs their versions; nil means the Manager's, or
	// host.ExecRunner without one.
	Runner host.Runner
	// LookPath finds programs; nil means exec.LookPath.
	LookPath func(string) (string, error)
}

// Checks runs every check, in the order doctor prints them.
func (d Doctor) Checks(ctx context.Context) []Check {
	var out []Check
	add := func(ch Check) { out = append(out, ch) }
	add(Check{Name: "root", Needed: true, OK: os.Geteuid() == 0, Detail: fmt.Sprintf("euid %d", os.Geteuid()), Fix: "run as root"})
	v, ok := d.toolVersion(ctx, "systemd-nspawn", "--version")
	add(Check{Name: "systemd-nspawn", Needed: true, OK: ok, Detail: dash(v), Fix: "apt-get install systemd-container"})
	v, ok = d.toolVersion(ctx, "debootstrap", "--version")
	add(Check{Name: "debootstrap", Needed: true, OK: ok, Detail: dash(v), Fix: "apt-get install debootstrap"})
	v, ok = d.toolVersion(ctx, "mmdebstrap", "--version")
	add(Check{Name: "mmdebstrap", OK: ok, Detail: dash(v), Fix: "optional: apt-get install mmdebstrap"})
	for _, name := range []string{"debian", "ubuntu"} {
		k := bootstrap.Distros[name]
		_, err := os.Stat(k.Keyring)
		ch := Check{Name: name + " keyring", Needed: name == "debian", OK: err == nil, Detail: k.Keyring, Fix: "apt-get install " + k.Package}
		if err != nil && k.KeyringPath != "" {
			// create fetches it from the mirror and keeps the pinned keys
			ch.OK, ch.Detail = true, k.Keyring+" not installed: nsbox fetches "+k.KeyringPath+" from the mirror and keeps only the archive keys it pins"
		}
		add(ch)
	}
	add(namesCheck("/etc/nsswitch.conf"))
	_, ok = d.toolVersion(ctx, "nsenter", "--version")
	// The enter helper replaces nsenter in a build with cgo; one without
	// needs it (and setpriv) for shell on the direct backend.
	add(Check{Name: "nsenter", Needed: !nsenter.Available, OK: ok, Detail: "util-linux", Fix: "apt-get install util-linux"})
	if m := d.Manager; m == nil {
		detail := "not opened"
		if d.OpenErr != nil {
			detail = d.OpenErr.Error()
		}
		add(Check{Name: "backend", Needed: true, Detail: detail})
	} else {
		add(Check{Name: "backend", Needed: true, OK: true, Detail: m.Backend.Name() + ": " + m.Why})
		add(rootDirCheck(m.RootDir))
		var st unix.Statfs_t
		if unix.Statfs(m.RootDir, &st) == nil {
			free := st.Bavail * uint64(st.Bsize)
			add(Check{Name: "free space", Needed: true, OK: free > 1<<30, Detail: fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), m.RootDir), Fix: "a machine needs about 300 MB; free some space"})
		}
		add(machineIDCheck(m))
	}
	add(cgroupCheck())
	_, err := os.Stat("/run/dbus/system_bus_socket")
	add(Check{Name: "system bus", OK: err == nil, Detail: map[bool]string{true: "/run/dbus/system_bus_socket", false: "no system bus"}[err == nil], Fix: "needed for machined only"})
	add(Check{Name: "systemd (PID 1)", OK: Booted(), Detail: map[bool]string{true: "booted with systemd", false: "not booted with systemd: the direct backend is used"}[Booted()]})
	add(d.networkdCheck())
	add(inotifyCheck("/proc/sys/fs/inotify/max_user_instances"))
	return out
}

// toolVersion finds program name and returns its path with the first line
// it prints for args (its version); false when it is not installed. The
// program goes through the runner, bounded in time: a version that
// cannot be read leaves the path alone.
func (d Doctor) toolVersion(ctx context.Context, name string, args ...string) (string, bool) {
	lookPath := d.LookPath
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	path, err := lookPath(name)
	if err != nil {
		return "", false
	}
	r := d.Runner
	switch {
	case r != nil:
	case d.Manager != nil && d.Manager.Runner != nil:
		r = d.Manager.Runner
	default:
		r = host.ExecRunner{}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	_ = r.Run(ctx, &host.Cmd{Path: path, Args: args, Stdout: &out})
	first, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	return strings.TrimSpace(path + " " + first), true
}

// networkdCheck says who gives machines' veths their addresses: the
// host's systemd-networkd, or nsbox from the pool.
func (d Doctor) networkdCheck() Check {
	pool := d.Pool
	if pool == "" && d.Manager != nil {
		pool = d.Manager.Pool
	}
	switch {
	case os.Geteuid() != 0:
		return Check{Name: "systemd-networkd", OK: true, Detail: "unknown without root (other processes' namespaces cannot be read)"}
	case network.NetworkdManagesVeths():
		return Check{Name: "systemd-networkd", OK: true, Detail: "runs here and serves container veths (80-container-ve.network): nsbox leaves them to it"}
	}
	return Check{Name: "systemd-networkd", OK: true, Detail: "does not serve container veths here: nsbox gives each machine a /30 from " + pool}
}

// dash stands in for an empty detail.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// inotifyCheck warns when the kernel's limit of inotify instances per
// user (read from path, /proc/sys/fs/inotify/max_user_instances) would
// stop machines from booting: every machine's systemd takes several, all
// counted against root (measured: about seven each; at the default of
// 128, the 17th machine on this project's hosts failed with "Too many
// open files").
func inotifyCheck(path string) Check {
	b, err := os.ReadFile(path)
	if err != nil {
		return Check{Name: "inotify", OK: true, Detail: "limit unknown"}
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return Check{Name: "inotify", OK: n >= 512,
		Detail: fmt.Sprintf("fs.inotify.max_user_instances = %d: room for about %d running machines", n, n/8),
		Fix:    "sysctl -w fs.inotify.max_user_instances=1024, and keep it in /etc/sysctl.d/"}
}

// rootDirCheck fails a root directory that host users other than root
// can enter: through it they would reach the setuid programs of every
// machine.
func rootDirCheck(dir string) Check {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return Check{Name: "root dir", Needed: true, Detail: err.Error()}
	}
	ch := Check{Name: "root dir", OK: true, Detail: fmt.Sprintf("%s mode %04o", dir, st.Mode&0o7777)}
	if st.Mode&0o077 != 0 || st.Uid != 0 {
		ch.OK = false
		ch.Detail += ": host users can reach setuid programs inside machines"
		ch.Fix = "chmod 0700 " + dir + " (as /var/lib/machines is)"
	}
	return ch
}

// cgroupCheck fails a host without the unified cgroup hierarchy, which
// newer guests' systemd refuses to boot on.
func cgroupCheck() Check {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Check{Name: "cgroups", OK: true, Detail: "unified (cgroup v2)"}
	}
	if unix.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Check{Name: "cgroups", OK: false, Detail: "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)", Fix: "boot with systemd.unified_cgroup_hierarchy=1; newer guests refuse v1"}
	}
	return Check{Name: "cgroups", OK: false, Detail: "legacy (cgroup v1)", Fix: "boot with systemd.unified_cgroup_hierarchy=1; newer guests refuse v1"}
}

// machineIDCheck lists the machines that share a machine ID, as machines
// made by earlier versions from one base (or cloned) do, and those that
// would take a shared one at their next boot: nsbox's next boot of each
// gives it an ID of its own.
func machineIDCheck(m *Manager) Check {
	shared, pending := m.MachineIDSharers()
	if len(shared) == 0 && len(pending) == 0 {
		return Check{Name: "machine IDs", OK: true, Detail: "every machine has its own"}
	}
	var parts []string
	for _, g := range shared {
		parts = append(parts, "shared by "+strings.Join(g, ", "))
	}
	if len(pending) > 0 {
		parts = append(parts, "copied from a base into /var/lib/dbus/machine-id: "+strings.Join(pending, ", "))
	}
	return Check{Name: "machine IDs", OK: false, Detail: Printable(strings.Join(parts, "; ")),
		Fix: "boot each once with this nsbox (stop it first): a machine whose ID came from its base gets one of its own; for any other, empty its /etc/machine-id while it is stopped"}
}

// namesCheck says whether the host resolves machine names through
// machined: the hosts line of nsswitch (at path) names mymachines. Where
// it does not, nsbox on a host without systemd keeps the names in
// /etc/hosts itself; on a systemd host they do not resolve on the host.
func namesCheck(path string) Check {
	ch := Check{Name: "machine names", Fix: "optional: apt-get install libnss-mymachines (adds mymachines to the hosts line of /etc/nsswitch.conf)"}
	b, err := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); err == nil && len(f) > 1 && f[0] == "hosts:" && slices.Contains(f[1:], "mymachines") {
			ch.OK, ch.Detail = true, "nss-mymachines: machined answers for running machines' names"
			return ch
		}
	}
	ch.Detail = "no mymachines in the hosts line of " + path + ": on a systemd host, machine names do not resolve on the host (without systemd, nsbox keeps them in /etc/hosts)"
	return ch
}
