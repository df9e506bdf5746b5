package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/network"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// check is one line of nsbox doctor.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Needed bool   `json:"needed"` // a failed needed check makes doctor exit 1
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host for what nsbox needs, with a fix for each problem",
		Flags: []cli.Flag{outputFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			checks := doctor(c)
			if c.String("output") == "json" {
				if err := writeJSON(os.Stdout, checks); err != nil {
					return err
				}
			} else {
				for _, ch := range checks {
					mark := "ok  "
					if !ch.OK {
						mark = "FAIL"
						if !ch.Needed {
							mark = "warn"
						}
					}
					line := fmt.Sprintf("%s %-16s %s", mark, ch.Name, ch.Detail)
					if !ch.OK && ch.Fix != "" {
						line += " (fix: " + ch.Fix + ")"
					}
					fmt.Println(line)
				}
			}
			for _, ch := range checks {
				if ch.Needed && !ch.OK {
					return exitCode(exitError)
				}
			}
			return nil
		},
	}
}

func toolVersion(name string, args ...string) (string, bool) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", false
	}
	out, _ := exec.Command(path, args...).Output()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(path + " " + first), true
}

func doctor(c *cli.Context) []check {
	var out []check
	add := func(ch check) { out = append(out, ch) }
	add(check{Name: "root", Needed: true, OK: os.Geteuid() == 0, Detail: fmt.Sprintf("euid %d", os.Geteuid()), Fix: "run as root"})
	v, ok := toolVersion("systemd-nspawn", "--version")
	add(check{Name: "systemd-nspawn", Needed: true, OK: ok, Detail: dash(v), Fix: "apt-get install systemd-container"})
	v, ok = toolVersion("debootstrap", "--version")
	add(check{Name: "debootstrap", Needed: true, OK: ok, Detail: dash(v), Fix: "apt-get install debootstrap"})
	v, ok = toolVersion("mmdebstrap", "--version")
	add(check{Name: "mmdebstrap", OK: ok, Detail: dash(v), Fix: "optional: apt-get install mmdebstrap"})
	for _, name := range []string{"debian", "ubuntu"} {
		d := bootstrap.Distros[name]
		_, err := os.Stat(d.Keyring)
		add(check{Name: name + " keyring", Needed: name == "debian", OK: err == nil, Detail: d.Keyring, Fix: "apt-get install " + d.Package})
	}
	_, ok = toolVersion("nsenter", "--version")
	add(check{Name: "nsenter", Needed: true, OK: ok, Detail: "util-linux", Fix: "apt-get install util-linux"})
	m, err := manager(c)
	if err != nil {
		add(check{Name: "backend", Needed: true, Detail: err.Error()})
	} else {
		add(check{Name: "backend", Needed: true, OK: true, Detail: m.Backend.Name() + ": " + m.Why})
		add(rootDirCheck(m.RootDir))
		var st unix.Statfs_t
		if unix.Statfs(m.RootDir, &st) == nil {
			free := st.Bavail * uint64(st.Bsize)
			add(check{Name: "free space", Needed: true, OK: free > 1<<30, Detail: fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), m.RootDir), Fix: "a machine needs about 300 MB; free some space"})
		}
		add(machineIDCheck(m))
	}
	add(cgroupCheck())
	_, err = os.Stat("/run/dbus/system_bus_socket")
	add(check{Name: "system bus", OK: err == nil, Detail: map[bool]string{true: "/run/dbus/system_bus_socket", false: "no system bus"}[err == nil], Fix: "needed for machined only"})
	add(check{Name: "systemd (PID 1)", OK: machine.Booted(), Detail: map[bool]string{true: "booted with systemd", false: "not booted with systemd: the direct backend is used"}[machine.Booted()]})
	if os.Geteuid() != 0 {
		add(check{Name: "systemd-networkd", OK: true, Detail: "unknown without root (other processes' namespaces cannot be read)"})
	} else if network.NetworkdManagesVeths() {
		add(check{Name: "systemd-networkd", OK: true, Detail: "runs here and serves container veths (80-container-ve.network): nsbox leaves them to it"})
	} else {
		add(check{Name: "systemd-networkd", OK: true, Detail: "does not serve container veths here: nsbox gives each machine a /30 from " + c.String("address-pool")})
	}
	add(inotifyCheck())
	return out
}

// inotifyCheck warns when the kernel's limit of inotify instances per
// user would stop machines from booting: every machine's systemd takes
// several, all counted against root (measured: about seven each; at the
// default of 128, the 17th machine on this project's hosts failed with
// "Too many open files").
func inotifyCheck() check {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	if err != nil {
		return check{Name: "inotify", OK: true, Detail: "limit unknown"}
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return check{Name: "inotify", OK: n >= 512,
		Detail: fmt.Sprintf("fs.inotify.max_user_instances = %d: room for about %d running machines", n, n/8),
		Fix:    "sysctl -w fs.inotify.max_user_instances=1024, and keep it in /etc/sysctl.d/"}
}

func rootDirCheck(dir string) check {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return check{Name: "root dir", Needed: true, Detail: err.Error()}
	}
	ch := check{Name: "root dir", OK: true, Detail: fmt.Sprintf("%s mode %04o", dir, st.Mode&0o7777)}
	if st.Mode&0o077 != 0 || st.Uid != 0 {
		ch.OK = false
		ch.Detail += ": host users can reach setuid programs inside machines"
		ch.Fix = "chmod 0700 " + dir + " (as /var/lib/machines is)"
	}
	return ch
}

func cgroupCheck() check {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return check{Name: "cgroups", OK: true, Detail: "unified (cgroup v2)"}
	}
	if unix.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return check{Name: "cgroups", OK: false, Detail: "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)", Fix: "boot with systemd.unified_cgroup_hierarchy=1; newer guests refuse v1"}
	}
	return check{Name: "cgroups", OK: false, Detail: "legacy (cgroup v1)", Fix: "boot with systemd.unified_cgroup_hierarchy=1; newer guests refuse v1"}
}

// machineIDCheck lists the machines that share a machine ID, as machines
// made by earlier versions from one base (or cloned) do, and those that
// would take a shared one at their next boot: nsbox's next boot of each
// gives it an ID of its own.
func machineIDCheck(m *machine.Manager) check {
	shared, pending := m.MachineIDSharers()
	if len(shared) == 0 && len(pending) == 0 {
		return check{Name: "machine IDs", OK: true, Detail: "every machine has its own"}
	}
	var parts []string
	for _, g := range shared {
		parts = append(parts, "shared by "+strings.Join(g, ", "))
	}
	if len(pending) > 0 {
		parts = append(parts, "copied from a base into /var/lib/dbus/machine-id: "+strings.Join(pending, ", "))
	}
	return check{Name: "machine IDs", OK: false, Detail: machine.Printable(strings.Join(parts, "; ")),
		Fix: "boot each once with this nsbox (stop it first): a machine whose ID came from its base gets one of its own; for any other, empty its /etc/machine-id while it is stopped"}
}
