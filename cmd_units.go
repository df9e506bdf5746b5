package main

import (
	"fmt"
	"math"
	"strconv"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

// limitFlags are the resource limits boot and set take.
var limitFlags = []cli.Flag{
	&cli.StringFlag{Name: "memory", Usage: "memory limit, e.g. 512M or 2G, or none (MemoryMax=)"},
	&cli.StringFlag{Name: "memory-swap", Usage: "swap limit, or none (MemorySwapMax=)"},
	&cli.StringFlag{Name: "cpus", Usage: "CPU quota in CPUs, e.g. 0.5 or 2, or none (CPUQuota=)"},
	&cli.StringFlag{Name: "cpu-weight", Usage: "CPU weight 1-10000, or none (CPUWeight=)"},
	&cli.StringFlag{Name: "tasks", Usage: "most tasks, or none (TasksMax=)"},
	&cli.StringFlag{Name: "io-weight", Usage: "IO weight 1-10000, or none (IOWeight=)"},
}

// limitArgs reads the limit flags; one given empty ("--io-weight=")
// clears its limit, as "none" does.
func limitArgs(c *cli.Context) machine.LimitFlags {
	get := func(flag string) string {
		if v := c.String(flag); v != "" || !c.IsSet(flag) {
			return v
		}
		return machine.NoLimit
	}
	return machine.LimitFlags{
		Memory: get("memory"), MemorySwap: get("memory-swap"), CPUs: get("cpus"),
		CPUWeight: get("cpu-weight"), Tasks: get("tasks"), IOWeight: get("io-weight"),
	}
}

// checkLimitArgs refuses limit flags that do not parse, hold a control
// character (which a unit file would take for a new line) or are not a
// number at all (NaN).
func checkLimitArgs(f machine.LimitFlags) error {
	for _, v := range []struct{ flag, s string }{
		{"--memory", f.Memory}, {"--memory-swap", f.MemorySwap}, {"--cpus", f.CPUs},
		{"--cpu-weight", f.CPUWeight}, {"--tasks", f.Tasks}, {"--io-weight", f.IOWeight},
	} {
		if err := machine.ValidateText(v.flag, v.s); err != nil {
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
	return simple("enable", "boot a machine with the host (installs and enables nsbox@NAME.service; needs systemd)", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Enable(c.Context, n)
		})
}

func disableCommand() *cli.Command {
	return simple("disable", "stop booting a machine with the host", nil,
		func(c *cli.Context, m *machine.Manager, n string) error {
			return m.Disable(c.Context, n)
		})
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
