package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func bootCommand() *cli.Command {
	return &cli.Command{
		Name:      "boot",
		Aliases:   []string{"start"},
		Usage:     "boot machines as systemd services and wait until they run",
		ArgsUsage: "NAME...",
		Description: "Options given here are remembered in /etc/systemd/nspawn/NAME.nspawn\n" +
			"once the boot succeeds, and used on later boots (and by machinectl start);\n" +
			"a failed boot leaves the remembered options and limits as they were.\n" +
			"Every name is checked before any machine boots. A --port whose host port a\n" +
			"host process listens on, or another running machine forwards, is refused\n" +
			"before the boot, naming who holds it.\n\n" +
			"--bind-user USER makes a host user appear in the machine with their\n" +
			"private group and their home, bound to /run/host/home/USER: files they\n" +
			"write there are theirs on the host (nspawn's --bind-user; the machine\n" +
			"needs a user namespace and nss-systemd, which machines nsbox makes have).\n\n" +
			"With --ephemeral the machine's tree is the lower layer of an overlay whose\n" +
			"upper is thrown away when the machine stops: the tree stays as it was.\n\n" +
			"An app machine (one made from an image without an init, or booted with\n" +
			"--cmd) runs one command under nspawn's stub init instead of booting:\n" +
			"boot returns once it started, stop sends it SIGTERM, logs shows its\n" +
			"output, shell runs commands beside it. --boot boots the init again.\n\n" +
			"   nsbox boot web\n   nsbox boot web --bind /srv/data:/data --network none\n   nsbox boot a b c\n   nsbox boot --ephemeral web\n   nsbox boot dev --bind-user alice\n   nsbox boot web --cmd 'python3 -m http.server 8080'",
		// KeepSpace: a value is taken as given, so that a control character
		// at its end is refused, not trimmed away unseen.
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "bind", KeepSpace: true, Usage: "bind-mount SRC[:DST[:OPTS]] (repeatable)"},
			&cli.StringSliceFlag{Name: "bind-ro", KeepSpace: true, Usage: "bind-mount SRC[:DST[:OPTS]] read-only (repeatable)"},
			&cli.BoolFlag{Name: "no-binds", Usage: "forget the remembered binds (--bind given with it replaces them)"},
			&cli.BoolFlag{Name: "force-binds", Usage: "allow binding / or the root directory itself"},
			&cli.StringFlag{Name: "network", Usage: "veth (default), none, host, bridge:BR or zone:Z"},
			&cli.StringSliceFlag{Name: "port", Aliases: []string{"p"}, KeepSpace: true, Usage: "forward a host port: [tcp|udp:]HOST[:MACHINE] (repeatable)"},
			&cli.BoolFlag{Name: "no-ports", Usage: "forget the remembered port forwards (--port given with it replaces them)"},
			&cli.StringSliceFlag{Name: "bind-user", KeepSpace: true, Usage: "make host `USER`, their private group and their home (as /run/host/home/USER) appear in the machine (repeatable)"},
			&cli.BoolFlag{Name: "no-bind-users", Usage: "forget the remembered bound users (--bind-user given with it replaces them)"},
			&cli.BoolFlag{Name: "private-users", Value: true, Usage: "map the machine's users to an unused host range (--private-users=false to share the host's)"},
			&cli.BoolFlag{Name: "console", Usage: "run in the foreground on this terminal"},
			&cli.BoolFlag{Name: "ephemeral", Usage: "boot over a throwaway upper: what the machine writes is gone when it stops"},
			&cli.BoolFlag{Name: "boot", Usage: "boot the machine's init (an app machine becomes a system again)"},
			&cli.BoolFlag{Name: "app", Usage: "run the command of the image the machine was made from, as an app machine"},
			&cli.StringFlag{Name: "cmd", Usage: "run `CMD` (words split as a shell would, nothing expanded) as an app machine, in place of its image's Cmd"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up when the machine is not running by then"},
		}, limitFlags...),
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("boot takes one or more machine names (see: nsbox boot --help)")
			}
			if n := c.String("network"); n != "" {
				if err := machine.ValidateNetwork(n); err != nil {
					return usagef("%v", err)
				}
			}
			req := machine.BootRequest{Network: c.String("network"), Timeout: c.Duration("timeout"), Console: c.Bool("console"), Limits: limitArgs(c), ForceBinds: c.Bool("force-binds"), Ephemeral: c.Bool("ephemeral")}
			if err := checkLimitArgs(req.Limits); err != nil {
				return err
			}
			if c.IsSet("private-users") {
				pu := c.Bool("private-users")
				req.PrivateUsers = &pu
			}
			if err := machine.ValidatePool(c.String("address-pool")); err != nil {
				return usagef("--address-pool: %v", err)
			}
			// --no-binds, --no-ports and --no-bind-users forget the
			// remembered ones; those given with them are the new ones.
			if c.Bool("no-binds") {
				req.Binds, req.BindsSet = nil, true
			}
			if c.Bool("no-ports") {
				req.Ports, req.PortsSet = nil, true
			}
			for _, spec := range c.StringSlice("bind") {
				b, err := machine.ParseBind(spec, false)
				if err != nil {
					return usagef("%v", err)
				}
				req.Binds, req.BindsSet = append(req.Binds, b), true
			}
			for _, spec := range c.StringSlice("bind-ro") {
				b, err := machine.ParseBind(spec, true)
				if err != nil {
					return usagef("%v", err)
				}
				req.Binds, req.BindsSet = append(req.Binds, b), true
			}
			if c.Bool("no-bind-users") {
				req.BindUsers, req.BindUsersSet = nil, true
			}
			for _, u := range c.StringSlice("bind-user") {
				if err := machine.ValidateBindUser(u); err != nil {
					return usagef("%v", err)
				}
				req.BindUsers, req.BindUsersSet = append(req.BindUsers, u), true
			}
			for _, p := range c.StringSlice("port") {
				if err := machine.ValidatePort(p); err != nil {
					return usagef("%v", err)
				}
				req.Ports, req.PortsSet = append(req.Ports, p), true
			}
			n := 0
			for _, f := range []string{"boot", "app", "cmd"} {
				if c.IsSet(f) {
					n++
				}
			}
			if n > 1 {
				return usagef("--boot, --app and --cmd each say how the machine runs: give one")
			}
			req.Init, req.App = c.Bool("boot"), c.Bool("app")
			if c.IsSet("cmd") {
				cmd, err := machine.SplitCommand(c.String("cmd"))
				if err != nil {
					return usagef("%v", err)
				}
				req.Cmd = cmd
			}
			if req.Console && c.NArg() > 1 {
				return usagef("--console boots one machine")
			}
			names := c.Args().Slice()
			if err := distinct("boot", names); err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			// A mistyped or unknown name boots nothing: all are checked first.
			for _, n := range names {
				if err := m.Known(c.Context, n); err != nil {
					return fmt.Errorf("boot %s: %w", n, err)
				}
			}
			if len(names) == 1 {
				if err := m.Boot(c.Context, names[0], req); err != nil {
					return fmt.Errorf("boot %s: %w", names[0], err)
				}
				if !quiet(c) && !req.Console {
					fmt.Fprintf(os.Stderr, "%s is running; open a shell with: nsbox shell %s\n", names[0], names[0])
				}
				return nil
			}
			// Several machines boot in parallel; each result is reported and
			// one failure does not stop the others.
			errs := eachAtOnce(names, func(n string) error { return m.Boot(c.Context, n, req) })
			failed := 0
			for i, n := range names {
				if errs[i] != nil {
					failed++
					report(fmt.Errorf("boot %s: %w", n, errs[i]))
				} else if !quiet(c) {
					fmt.Fprintf(os.Stderr, "%s is running\n", n)
				}
			}
			if failed > 0 {
				return exitCode(commonStatus(errs))
			}
			return nil
		},
	}
}
