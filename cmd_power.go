package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

// simple builds a command that acts on one machine by name.
func simple(name, usage string, flags []cli.Flag, act func(c *cli.Context, m *machine.Manager, n string) error) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "NAME", Flags: flags,
		Action: func(c *cli.Context) error {
			n, err := nameArg(c)
			if err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			if err := act(c, m, n); err != nil {
				return fmt.Errorf("%s %s: %w", name, n, err)
			}
			return nil
		},
	}
}

func stopCommand() *cli.Command {
	return simple("stop", "power a machine off cleanly; terminate it after --timeout",
		[]cli.Flag{&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "how long to wait for a clean power-off"}},
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Stop(c.Context, n, c.Duration("timeout"))
		})
}

func rebootCommand() *cli.Command {
	return simple("reboot", "reboot a machine", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.Reboot(c.Context, n)
	})
}

func terminateCommand() *cli.Command {
	return simple("terminate", "end a machine at once, without a clean shutdown", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Terminate(c.Context, n)
		})
}

func killCommand() *cli.Command {
	return simple("kill", "send a signal to a machine's init, or to all its processes",
		[]cli.Flag{
			&cli.StringFlag{Name: "signal", Aliases: []string{"s"}, Value: "SIGTERM", Usage: "signal name or number"},
			&cli.StringFlag{Name: "kill-whom", Value: "leader", Usage: "leader or all"},
		},
		func(c *cli.Context, m *machine.Manager, n string) error {
			sig, err := parseSignal(c.String("signal"))
			if err != nil {
				return err
			}
			whom := c.String("kill-whom")
			if whom != "leader" && whom != "all" {
				return usagef("--kill-whom %q: use leader or all", whom)
			}
			return m.Kill(c.Context, n, whom == "all", sig)
		})
}

// parseSignal reads TERM, SIGTERM, 15, RTMIN+4 or SIGRTMIN+4.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	u := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if off, ok := strings.CutPrefix(u, "RTMIN+"); ok {
		if n, err := strconv.Atoi(off); err == nil && n >= 0 && 34+n < 65 {
			return syscall.Signal(34 + n), nil
		}
	}
	names := map[string]syscall.Signal{
		"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
		"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT,
		"STOP": syscall.SIGSTOP, "PWR": syscall.SIGPWR, "WINCH": syscall.SIGWINCH,
	}
	if sig, ok := names[u]; ok {
		return sig, nil
	}
	return 0, usagef("unknown signal %q", s)
}

func removeCommand() *cli.Command {
	return simple("remove", "delete a stopped machine: its tree and nsbox's files for it",
		[]cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop a running machine first"}},
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Remove(c.Context, n, c.Bool("force"))
		})
}
