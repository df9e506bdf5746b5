package machine

import (
	"strings"
)

// NspawnConfig is everything that decides systemd-nspawn's command line.
type NspawnConfig struct {
	Name string
	Root string
	BootOptions
	// Registered: machined registers the machine (machined backend). When
	// false, nspawn runs with --register=no.
	Registered bool
	// ResolvConf is the --resolv-conf= mode.
	ResolvConf string
	// ReadOnly mounts the root read-only (nsbox read-only NAME).
	ReadOnly bool
	// appExec starts an app machine's program as its user (see
	// appExec); nil runs it as root, or leaves the user to nspawn.
	appExec *appExec
}

// NspawnArgs turns c into systemd-nspawn's arguments (without the program
// name). Kept apart from the code that runs them so they are tested as data.
func NspawnArgs(c NspawnConfig) []string {
	start, ready, console := "--boot", "--notify-ready=yes", "--console=read-only"
	if c.App != nil {
		// The command runs as PID 2 under nspawn's stub init, which
		// reaps orphans and passes a stop on as SIGHUP and SIGTERM;
		// nspawn says the machine is ready once the command started.
		// Its output goes to nspawn's (the console log or the unit's
		// journal) as it wrote it, without a terminal's line endings.
		start, ready, console = "--as-pid2", "--notify-ready=no", "--console=pipe"
	}
	args := []string{
		"--quiet",
		start,
		"--directory=" + c.Root,
		"--machine=" + c.Name,
		// The unit (or nsbox's supervisor) is the machine's unit.
		"--keep-unit",
		settingsMode(c.BootOptions),
		ready,
		console,
		// Not linked into the host's /var/log/journal: nspawn makes that
		// link by following the machine's /var/log/journal on the host,
		// and a machine's root who planted a link there would have it
		// make directories anywhere on the host. nsbox logs reads the
		// machine's journal from its tree.
		"--link-journal=no",
	}
	if !c.Registered {
		args = append(args, "--register=no")
	}
	if c.PrivateUsers {
		args = append(args, "--private-users=pick", "--private-users-ownership=auto")
	} else {
		args = append(args, "--private-users=no")
	}
	switch {
	case c.Network == "none":
		args = append(args, "--private-network")
	case c.Network == "host":
	case strings.HasPrefix(c.Network, "bridge:"):
		args = append(args, "--network-bridge="+strings.TrimPrefix(c.Network, "bridge:"))
	case strings.HasPrefix(c.Network, "zone:"):
		args = append(args, "--network-zone="+strings.TrimPrefix(c.Network, "zone:"))
	default:
		args = append(args, "--network-veth")
	}
	for _, p := range c.Ports {
		args = append(args, "--port="+p)
	}
	if c.PrivateUsers {
		// nspawn binds users into a user namespace only: Boot refuses
		// them without one.
		for _, u := range c.BindUsers {
			args = append(args, "--bind-user="+u)
		}
	}
	if c.ReadOnly {
		args = append(args, "--read-only")
	}
	if c.ResolvConf != "" {
		args = append(args, "--resolv-conf="+c.ResolvConf)
	}
	// The binds are in the file, with the user's TemporaryFileSystem=
	// and the like, when nspawn reads it (see settingsMode). The app's
	// helper needs binds of its own on the command line, which make
	// nspawn drop the file's: then all of them go there, in the file's
	// order.
	switch {
	case !c.file.userKeys():
		for _, b := range withIDMap(c.Binds, c.PrivateUsers) {
			if b.ReadOnly {
				args = append(args, "--bind-ro="+b.String())
			} else {
				args = append(args, "--bind="+b.String())
			}
		}
	case c.appExec != nil:
		args = append(args, c.file.mountArgs()...)
	}
	if a := c.App; a != nil {
		if a.Workdir != "" {
			args = append(args, "--chdir="+a.Workdir)
		}
		argv := a.Argv
		switch {
		case c.appExec != nil:
			// Root starts the helper (the file's User= is not nspawn's
			// to look up), which becomes the user.
			args = append(append(args, c.appExec.args()...), "--user=root")
			argv = c.appExec.argv(argv)
		case a.User != "":
			args = append(args, "--user="+a.User)
		}
		args = append(append(args, "--"), argv...)
	}
	return args
}

// mountArgs are the mounts of the file's [Files] section (Bind=,
// BindReadOnly=, TemporaryFileSystem=, Inaccessible=, Overlay=,
// OverlayReadOnly=) as nspawn's options of the same syntax, in the
// file's order: the command line takes them all or none.
func (d *settingsDoc) mountArgs() []string {
	flags := map[string]string{
		"Bind": "--bind=", "BindReadOnly": "--bind-ro=", "TemporaryFileSystem": "--tmpfs=",
		"Inaccessible": "--inaccessible=", "Overlay": "--overlay=", "OverlayReadOnly": "--overlay-ro=",
	}
	var out []string
	if d == nil {
		return out
	}
	for _, l := range d.lines {
		if l.opt == nil || l.opt.Section != "Files" {
			continue
		}
		if f, ok := flags[l.opt.Name]; ok {
			if l.opt.Value == "" {
				// nspawn 252 ignores an empty one (with a warning).
				continue
			}
			out = append(out, f+l.opt.Value)
		}
	}
	return out
}

// settingsMode is nspawn's --settings= for o.
//
// Everything nsbox sets is on nspawn's command line, which takes
// precedence over any settings file, so by default nspawn reads none
// (--settings=no): a NAME.nspawn beside the image, which nspawn would
// otherwise read when /etc/systemd/nspawn has none, is never honoured.
//
// A user may add keys of their own to /etc/systemd/nspawn/NAME.nspawn
// (Environment=, TemporaryFileSystem=, Capability=, ...); nsbox keeps them
// when it rewrites the file (SettingsText), and only nspawn reading the
// file can honour them. Then nspawn runs with --settings=yes, which by
// systemd-nspawn's load_settings() looks in /etc/systemd/nspawn and then
// /run/systemd/nspawn first, trusts a file found there (both root's), and
// only when neither has one falls back to the file beside the image, read
// untrusted (its privileged keys ignored). Not --settings=trusted, which
// would trust that fallback too. The fallback does not happen to nsbox's
// machines: the mode is only chosen from a file read in SettingsDir
// (/etc/systemd/nspawn, where nspawn looks), nsbox writes that file before
// every start (boot, enable) and never removes it but with the machine,
// and trees sit in RootDir/.nsbox, root's and 0700, so only root could
// plant a file beside one (a tree of an earlier nsbox not yet moved into
// the store is the exception: beside it is RootDir itself).
//
// The command line still wins over the file for what nsbox passes there
// (private users, network, ports, journal, read-only): security-relevant
// settings do not depend on the file being read. The one exception is
// binds: nspawn treats Bind=, BindReadOnly=, TemporaryFileSystem=,
// Overlay= and Inaccessible= as one setting, so a --bind on the command
// line would drop the user's mounts; when the file is read, nsbox's binds
// come from it (they are written there identically) and not from the
// command line. Should the file go unread, the machine gets fewer host
// paths, not more.
func settingsMode(o BootOptions) string {
	if o.file.userKeys() {
		return "--settings=yes"
	}
	return "--settings=no"
}
