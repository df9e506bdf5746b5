package main

import (
	"os"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func logsCommand() *cli.Command {
	cmd := simple("logs", "show a machine's journal (also of a stopped machine), or with --host its host-side log",
		[]cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new entries"},
			&cli.IntFlag{Name: "lines", Aliases: []string{"n"}, Usage: "only the last N entries"},
			&cli.StringFlag{Name: "since", Usage: "entries since, e.g. \"1 hour ago\" or 2026-11-29"},
			&cli.BoolFlag{Name: "host", Usage: "the host side: the unit's journal, or the console log without machined"},
		},
		func(c *cli.Context, m *machine.Manager, n string) error {
			if c.Int("lines") < 0 {
				return usagef("--lines must not be negative")
			}
			return m.Logs(c.Context, n, machine.LogOptions{
				Follow: c.Bool("follow"), Lines: c.Int("lines"), Since: c.String("since"), Host: c.Bool("host"),
			}, os.Stdout)
		})
	cmd.Description = "   nsbox logs web -n 50\n   nsbox logs web -f\n   nsbox logs web --host"
	return cmd
}
