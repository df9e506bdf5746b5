package main

import (
	"io"
	"os"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
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
			if err := machine.ValidateText("--since", c.String("since")); err != nil {
				return usagef("%v", err)
			}
			// What a machine logs is the machine's: on a terminal, its
			// escape sequences are dropped and other control characters
			// shown as escapes (journalctl, which does this itself on a
			// terminal, then writes to nsbox). Piped or redirected, the
			// bytes pass unchanged.
			var w io.Writer = os.Stdout
			var pw *machine.PrintableWriter
			if term.IsTerminal(int(os.Stdout.Fd())) {
				pw = machine.NewPrintableWriter(os.Stdout)
				w = pw
			}
			err := m.Logs(c.Context, n, machine.LogOptions{
				Follow: c.Bool("follow"), Lines: c.Int("lines"), Since: c.String("since"), Host: c.Bool("host"),
			}, w)
			if pw != nil {
				_ = pw.Flush()
			}
			return err
		})
	cmd.Description = "On a terminal, escape sequences in the log are dropped and other control\n" +
		"characters shown as escapes (\\x1b); piped or redirected, the log is passed as it is.\n\n" +
		"   nsbox logs web -n 50\n   nsbox logs web -f\n   nsbox logs web --host"
	return cmd
}
