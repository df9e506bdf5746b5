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
}

// NspawnArgs turns c into systemd-nspawn's arguments (without the program
// name). Kept apart from the code that runs them so they are tested as data.
func NspawnArgs(c NspawnConfig) []string {
	args := []string{
		"--quiet",
		"--boot",
		"--directory=" + c.Root,
		"--machine=" + c.Name,
		// The unit (or nsbox's supervisor) is the machine's unit.
		"--keep-unit",
		// Settings come only from nsbox's own file in /etc/systemd/nspawn,
		// rendered on this command line: a NAME.nspawn planted beside the
		// image is never read.
		"--settings=no",
		"--notify-ready=yes",
		"--console=read-only",
		"--link-journal=try-guest",
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
	if c.ReadOnly {
		args = append(args, "--read-only")
	}
	if c.ResolvConf != "" {
		args = append(args, "--resolv-conf="+c.ResolvConf)
	}
	for _, b := range withIDMap(c.Binds, c.PrivateUsers) {
		if b.ReadOnly {
			args = append(args, "--bind-ro="+b.String())
		} else {
			args = append(args, "--bind="+b.String())
		}
	}
	return args
}
