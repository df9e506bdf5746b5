package main

import (
	"fmt"
	"math"
	"net"
	"strconv"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

// limitFlags are the resource limits boot and set take, one per limit.
var limitFlags = func() []cli.Flag {
	var out []cli.Flag
	for _, f := range machine.LimitFlagList() {
		out = append(out, &cli.StringFlag{Name: f.Name, Usage: f.Usage})
	}
	return out
}()

// limitArgs reads the limit flags; one given empty ("--io-weight=")
// clears its limit, as "none" does.
func limitArgs(c *cli.Context) machine.LimitFlags {
	var f machine.LimitFlags
	for _, d := range machine.LimitFlagList() {
		v := c.String(d.Name)
		if v == "" && c.IsSet(d.Name) {
			v = machine.NoLimit
		}
		f.Set(d.Name, v)
	}
	return f
}

// checkLimitArgs refuses limit flags that do not parse, hold a control
// character (which a unit file would take for a new line) or are not a
// number at all (NaN).
func checkLimitArgs(f machine.LimitFlags) error {
	for _, d := range machine.LimitFlagList() {
		if err := machine.ValidateText("--"+d.Name, f.Value(d.Name)); err != nil {
			return usagef("%v", err)
		}
	}
	if v, err := strconv.ParseFloat(f.CPUs, 64); err == nil && math.IsNaN(v) {
		return usagef("%v: cpus %q (use a positive number such as 0.5 or 2)", machine.ErrInvalidOption, f.CPUs)
	}
	if _, err := f.Apply(machine.Limits{}); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func enableCommand() *cli.Command {
	cmd := simple("enable", "boot a machine with the host (installs and enables nsbox@NAME.service; needs systemd)",
		[]cli.Flag{&cli.StringSliceFlag{Name: "socket", Usage: "instead, boot it on the first connection to a host port: `[tcp:]HOST[:MACHINE]`, passed to the machine's port (repeatable)"}},
		func(c *cli.Context, m *machine.Manager, n string) error {
			if socks := c.StringSlice("socket"); len(socks) > 0 {
				for _, s := range socks {
					if _, err := machine.ParseSocket(s); err != nil {
						return usagef("%v", err)
					}
				}
				return m.EnableSockets(c.Context, n, socks)
			}
			return m.Enable(c.Context, n)
		})
	cmd.Description = "Without --socket, the machine boots with the host. With --socket, a socket\n" +
		"unit (nsbox-tcp-PORT.socket) listens on the host port on every address; the\n" +
		"first connection boots the machine with its remembered options, and every\n" +
		"connection is passed to the machine's port until it stops. The next connection\n" +
		"after a stop boots it again. disable removes both.\n\n" +
		"   nsbox enable web\n   nsbox enable web --socket tcp:8080:80 --socket 8443:443"
	return cmd
}

func disableCommand() *cli.Command {
	return simple("disable", "stop booting a machine with the host, and remove its sockets", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Disable(c.Context, n)
		})
}

// socketProxyCommand is what a machine's socket unit activates:
// nsbox __socket-proxy NAME PORT, with the listening sockets passed as
// systemd passes them (LISTEN_FDS).
func socketProxyCommand() *cli.Command {
	return &cli.Command{
		Name: machine.SocketProxyCommand, Hidden: true, ArgsUsage: "NAME PORT",
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef("%s takes a machine and its port", machine.SocketProxyCommand)
			}
			name := c.Args().Get(0)
			port, err := strconv.Atoi(c.Args().Get(1))
			if err != nil || port < 1 || port > 65535 {
				return usagef("%s: port %q", machine.SocketProxyCommand, c.Args().Get(1))
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			listeners, err := activation.Listeners()
			if err != nil {
				return fmt.Errorf("%s %s: %w", machine.SocketProxyCommand, name, err)
			}
			var ls []net.Listener
			for _, l := range listeners {
				if l != nil {
					ls = append(ls, l)
				}
			}
			if err := m.SocketProxy(c.Context, name, port, ls); err != nil {
				return fmt.Errorf("%s %s: %w", machine.SocketProxyCommand, name, err)
			}
			return nil
		},
	}
}

func unitCommand() *cli.Command {
	return simple("unit", "print the unit enable would install, for review (on any host)", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			text, err := m.UnitForReview(n)
			if err != nil {
				return err
			}
			fmt.Print(text)
			return nil
		})
}

func setCommand() *cli.Command {
	cmd := simple("set", "change a machine's resource limits, live when it runs", limitFlags,
		func(c *cli.Context, m *machine.Manager, n string) error {
			f := limitArgs(c)
			if f == (machine.LimitFlags{}) {
				return usagef("set takes at least one limit (see: nsbox set --help)")
			}
			if err := checkLimitArgs(f); err != nil {
				return err
			}
			_, err := m.SetLimits(c.Context, n, f)
			return err
		})
	cmd.Description = "A limit given as none (or empty: --io-weight=) is cleared. Limits this host\n" +
		"cannot apply are refused whether the machine runs or not.\n\n" +
		"   nsbox set web --memory 512M --cpus 1.5 --tasks 200\n   nsbox set web --io-weight none"
	return cmd
}

func networkUpCommand() *cli.Command {
	cmd := simple("__network-up", "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.NetworkUp(c.Context, n)
	})
	cmd.Hidden = true
	return cmd
}

// portsCommand serves a running machine's forwarded ports on the host's
// loopback addresses, beside the machine (its supervisor or a unit bound
// to its unit runs it): nsbox __ports NAME.
func portsCommand() *cli.Command {
	cmd := simple(machine.PortsCommand, "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.ServePorts(c.Context, n)
	})
	cmd.Hidden = true
	return cmd
}

// storageCommand is what an overlay machine's unit runs before its start
// and after its stop: nsbox __storage mount|unmount NAME, and for an
// ephemeral boot mount-ephemeral|unmount-ephemeral NAME.
func storageCommand() *cli.Command {
	mount := simple("mount", "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.MountStorage(c.Context, n)
	})
	unmount := simple("unmount", "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.UnmountStorage(c.Context, n)
	})
	mountEphemeral := simple("mount-ephemeral", "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.MountEphemeral(c.Context, n)
	})
	unmountEphemeral := simple("unmount-ephemeral", "", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.UnmountEphemeralAfterStop(c.Context, n)
	})
	return &cli.Command{Name: machine.StorageCommand, Hidden: true, Subcommands: []*cli.Command{mount, unmount, mountEphemeral, unmountEphemeral}}
}
