package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a command in a throwaway machine, removed with every trace when it ends",
		ArgsUsage: "[--release R | --from MACHINE] -- CMD [ARGS...]",
		Description: "The machine is an overlay over the release's cached base (or a stopped\n" +
			"machine's tree) with a fresh upper on a tmpfs, mounted in a mount namespace\n" +
			"of the run's own: when CMD ends, fails or is interrupted, and even when\n" +
			"nsbox is killed, the kernel takes it all away. Exits with CMD's status\n" +
			"(128+N if signal N killed it); stdin, stdout and stderr pass through (a\n" +
			"terminal when stdin and stdout are one). Without --boot, CMD runs under\n" +
			"systemd-nspawn alone, as docker run does, with no network (--network host\n" +
			"shares the host's); with --boot the machine's systemd starts first.\n\n" +
			"   nsbox run --release bookworm -- cat /etc/os-release\n" +
			"   nsbox run --from web --network host -- apt-get -s upgrade\n" +
			"   nsbox run --release trixie --boot -- systemctl is-system-running",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "release", Aliases: []string{"r"}, Usage: "release codename of the base (bookworm, trixie, noble, ...)"},
			&cli.StringFlag{Name: "distro", Usage: "debian or ubuntu (default: follows from the release)"},
			&cli.StringFlag{Name: "from", Usage: "run over a stopped machine's tree instead of a base"},
			&cli.BoolFlag{Name: "boot", Usage: "boot the machine's systemd and run CMD once it is up"},
			&cli.StringFlag{Name: "network", Usage: "none (default) or host; with --boot also veth, bridge:BR or zone:Z"},
			&cli.StringSliceFlag{Name: "bind", KeepSpace: true, Usage: "bind-mount SRC[:DST[:OPTS]] (repeatable)"},
			&cli.StringSliceFlag{Name: "bind-ro", KeepSpace: true, Usage: "bind-mount SRC[:DST[:OPTS]] read-only (repeatable)"},
			&cli.BoolFlag{Name: "force-binds", Usage: "allow binding / or the root directory itself"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "with --boot: give up when the machine is not running by then"},
		},
		Action: func(c *cli.Context) error {
			o, err := runArgs(c)
			if err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			p := newProgress(os.Stderr, quiet(c), logrus.IsLevelEnabled(logrus.InfoLevel))
			o.Progress = p.stage
			status, err := m.Run(c.Context, o)
			p.done()
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			if status != 0 {
				return exitCode(status)
			}
			return nil
		},
	}
}

// runArgs reads run's command line; what is wrong with it is a usage
// error, before anything runs.
func runArgs(c *cli.Context) (machine.RunOptions, error) {
	o := machine.RunOptions{Release: c.String("release"), Distro: c.String("distro"), From: c.String("from"),
		Boot: c.Bool("boot"), Network: c.String("network"), ForceBinds: c.Bool("force-binds"), Timeout: c.Duration("timeout")}
	o.Argv = c.Args().Slice()
	if len(o.Argv) > 0 && o.Argv[0] == "--" {
		o.Argv = o.Argv[1:]
	}
	for _, f := range []struct {
		name string
		ro   bool
	}{{"bind", false}, {"bind-ro", true}} {
		for _, spec := range c.StringSlice(f.name) {
			b, err := machine.ParseBind(spec, f.ro)
			if err != nil {
				return o, usagef("%v", err)
			}
			o.Binds = append(o.Binds, b)
		}
	}
	if err := machine.CheckRun(o); err != nil {
		return o, usagef("%v", err)
	}
	return o, nil
}

// runHelperCommand is the helper a run starts in a mount namespace of its
// own (nsbox __run SPEC): its exit status is its own, without the
// "interrupted" line of nsbox, which the run itself says.
func runHelperCommand() *cli.Command {
	return &cli.Command{
		Name:   machine.RunCommand,
		Hidden: true,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("usage: nsbox %s SPEC", machine.RunCommand)
			}
			os.Exit(machine.RunHelper(c.Args().First()))
			return nil
		},
	}
}
