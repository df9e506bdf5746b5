package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/nsbox/nsbox/machine"
)

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "show what a machine changed against the base it was made from",
		ArgsUsage: "NAME [PATH]",
		Description: "One line an entry, sorted by path: A added, D deleted, T type changed (a\n" +
			"file that became a link), M modified, with what: content, mode, owner, group,\n" +
			"target of a link, device numbers, xattrs. An overlay machine's upper directory\n" +
			"is read against its base (whiteouts are deletions); a copy or btrfs machine's\n" +
			"tree is walked beside its base's, and a file's bytes are read only where its\n" +
			"size is the same and its time is not. Owners are as the machine sees them.\n" +
			"What nsbox wrote (the hostname at create, the network files at the first boot)\n" +
			"counts as a change. PATH limits the report to what is under it; it resolves in\n" +
			"the machine and must not pass through a link. A running machine is read as it\n" +
			"is, without stopping it. A machine that was not made from a cached base\n" +
			"(imported, --no-cache) has nothing to compare with, and says so.\n\n" +
			"   nsbox diff web\n" +
			"   nsbox diff web /etc\n" +
			"   nsbox diff web --stat\n" +
			"   nsbox diff web -o json",
		Flags: []cli.Flag{
			outputFlag,
			&cli.BoolFlag{Name: "stat", Usage: "only the counts of each change and their bytes"},
		},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			if c.NArg() < 1 || c.NArg() > 2 {
				return usagef("usage: nsbox diff NAME [PATH] [--stat] [-o json]")
			}
			name, path := c.Args().Get(0), c.Args().Get(1)
			if err := machine.ValidateName(name); err != nil {
				return usagef("diff: %v", err)
			}
			if c.NArg() == 2 {
				if _, err := machine.CheckDiffPath(path); err != nil {
					return usagef("diff %s: %v", name, err)
				}
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			rep, err := m.Diff(c.Context, name, machine.DiffOptions{Path: path})
			if err != nil {
				return fmt.Errorf("diff %s: %w", name, err)
			}
			if c.Bool("stat") {
				rep.Entries = rep.Entries[:0]
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, rep)
			}
			w := bufio.NewWriter(os.Stdout)
			if c.Bool("stat") {
				writeDiffStat(w, rep)
			} else {
				writeDiff(w, rep)
			}
			return w.Flush()
		},
	}
}

// writeDiff prints a diff one line an entry: "M /etc/x (mode 0644 -> 0600)".
// Paths are the machine's: control characters in them are escaped.
func writeDiff(w io.Writer, rep machine.DiffReport) {
	for _, e := range rep.Entries {
		fmt.Fprintf(w, "%s %s", e.Change.Letter(), machine.Printable(e.Path))
		if n := e.Note(); n != "" {
			fmt.Fprintf(w, " (%s)", machine.Printable(n))
		}
		fmt.Fprintln(w)
	}
}

// writeDiffStat prints a diff's counts and bytes on one line.
func writeDiffStat(w io.Writer, rep machine.DiffReport) {
	s := rep.Summary
	fmt.Fprintf(w, "%d added (%s), %d modified (%s), %d deleted (%s), %d type changed\n",
		s.Added, humanBytes(s.AddedBytes), s.Modified, humanBytes(s.ModifiedBytes),
		s.Deleted, humanBytes(s.DeletedBytes), s.TypeChanged)
}
