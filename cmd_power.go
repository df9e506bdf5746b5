package main

import (
	"fmt"
	"sync"
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

// several builds a command that acts on one or more machines, as
// machinectl's do: side by side, each failure reported on its own line,
// one failure stopping none of the others; the exit status is that of
// the failures when they agree (all were running, say), 1 otherwise.
func several(name, usage string, flags []cli.Flag, act func(c *cli.Context, m *machine.Manager, n string) error) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "NAME...", Flags: flags,
		Action: func(c *cli.Context) error {
			names := c.Args().Slice()
			if len(names) == 0 {
				return usagef("%s takes machine names (see: nsbox %s --help)", name, name)
			}
			if err := distinct(name, names); err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			// A mistyped or unknown name changes nothing: all are checked first.
			for _, n := range names {
				if err := m.Known(c.Context, n); err != nil {
					return fmt.Errorf("%s %s: %w", name, n, err)
				}
			}
			if len(names) == 1 {
				if err := act(c, m, names[0]); err != nil {
					return fmt.Errorf("%s %s: %w", name, names[0], err)
				}
				return nil
			}
			errs := eachAtOnce(names, func(n string) error { return act(c, m, n) })
			failed := false
			for i, n := range names {
				if errs[i] != nil {
					failed = true
					report(fmt.Errorf("%s %s: %w", name, n, errs[i]))
				}
			}
			if failed {
				return exitCode(commonStatus(errs))
			}
			return nil
		},
	}
}

// distinct refuses a name given twice: two of one operation on one
// machine at once would race each other.
func distinct(cmd string, names []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			return usagef("%s: %s is named twice", cmd, n)
		}
		seen[n] = true
	}
	return nil
}

// eachAtOnce runs fn for every name side by side and returns their
// errors, in the order of names.
func eachAtOnce(names []string, fn func(string) error) []error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(n)
		}()
	}
	wg.Wait()
	return errs
}

func stopCommand() *cli.Command {
	return several("stop", "power machines off cleanly; terminate those still up after --timeout",
		[]cli.Flag{&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "how long to wait for a clean power-off"}},
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Stop(c.Context, n, c.Duration("timeout"))
		})
}

func rebootCommand() *cli.Command {
	return several("reboot", "reboot machines", nil, func(c *cli.Context, m *machine.Manager, n string) error {
		return m.Reboot(c.Context, n)
	})
}

func terminateCommand() *cli.Command {
	return several("terminate", "end machines at once, without a clean shutdown", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Terminate(c.Context, n)
		})
}

func killCommand() *cli.Command {
	flags := func(c *cli.Context) (syscall.Signal, bool, error) {
		sig, err := machine.ParseSignal(c.String("signal"))
		if err != nil {
			return 0, false, usagef("%v", err)
		}
		whom := c.String("kill-whom")
		if whom != "leader" && whom != "all" {
			return 0, false, usagef("--kill-whom %q: use leader or all", whom)
		}
		return sig, whom == "all", nil
	}
	cmd := several("kill", "send a signal to machines' init, or to all their processes",
		[]cli.Flag{
			&cli.StringFlag{Name: "signal", Aliases: []string{"s"}, Value: "SIGTERM", Usage: "signal name or number"},
			&cli.StringFlag{Name: "kill-whom", Value: "leader", Usage: "leader or all"},
		},
		func(c *cli.Context, m *machine.Manager, n string) error {
			sig, all, err := flags(c)
			if err != nil {
				return err
			}
			return m.Kill(c.Context, n, all, sig)
		})
	// Bad flags are one usage error, before any machine is looked up.
	cmd.Before = func(c *cli.Context) error {
		if _, _, err := flags(c); err != nil {
			return fmt.Errorf("kill: %w", err)
		}
		return nil
	}
	return cmd
}

func removeCommand() *cli.Command {
	return several("remove", "delete stopped machines: their trees and nsbox's files for them",
		[]cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop a running machine first"}},
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Remove(c.Context, n, c.Bool("force"))
		})
}
