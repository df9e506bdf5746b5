package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

// pruneReport is what prune -o json prints (docs/json.md).
type pruneReport struct {
	DryRun bool                `json:"dry_run"`
	Items  []machine.PruneItem `json:"items"`
	// FreedBytes adds up the bytes of the items removed (with a dry
	// run: of those that would be).
	FreedBytes int64 `json:"freed_bytes"`
}

func pruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove what nothing needs: trees and records that killed commands and removed machines left, unused base versions and cached packages",
		Description: "Removes what nothing needs, each known by nsbox's own naming: staging trees of creates, clones, imports, snapshots and base\n" +
			"bootstraps that were killed; records, links, logs and locks of machines that are gone; throwaway uppers of ephemeral boots\n" +
			"the host died under; earlier versions of cached bases that no machine or run is over; cached packages no current base has\n" +
			"installed. What runs, boots or is being made, and what it is over, is left. Snapshots are never removed.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "only say what would be removed"}, outputFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			if c.NArg() > 0 {
				return usagef("prune takes no arguments (see: nsbox prune --help)")
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			dry := c.Bool("dry-run")
			items, err := m.Prune(c.Context, dry)
			if items == nil {
				return err
			}
			rep := pruneReport{DryRun: dry, Items: items}
			failed := 0
			for _, it := range items {
				if it.Removed || dry {
					rep.FreedBytes += it.Bytes
				}
				if it.Error != "" {
					failed++
					fmt.Fprintf(os.Stderr, "nsbox: prune: could not remove %s: %s\n", machine.Printable(it.Path), machine.Printable(it.Error))
				}
			}
			if c.String("output") == "json" {
				if werr := writeJSON(os.Stdout, rep); werr != nil {
					return werr
				}
			} else {
				printPrune(os.Stdout, rep)
			}
			if err != nil {
				return fmt.Errorf("prune: %d of %d leftovers could not be removed (see above)", failed, len(items))
			}
			return nil
		},
	}
}

// printPrune writes what prune removed, one line an item, with the
// packages of one cache directory on one line, and the total.
func printPrune(w io.Writer, rep pruneReport) {
	verb, total := "removed", "freed"
	if rep.DryRun {
		verb, total = "would remove", "would free"
	}
	items := rep.Items
	for i := 0; i < len(items); i++ {
		it := items[i]
		if it.Kind == machine.PrunePackages {
			dir := filepath.Dir(it.Path)
			n, bytes := 0, int64(0)
			for ; i < len(items) && items[i].Kind == machine.PrunePackages && filepath.Dir(items[i].Path) == dir; i++ {
				if items[i].Removed || rep.DryRun {
					n++
					bytes += items[i].Bytes
				}
			}
			i--
			if n > 0 {
				s := "s"
				if n == 1 {
					s = ""
				}
				fmt.Fprintf(w, "%s %s %s: %d cached package%s (%s)\n", verb, it.Kind, machine.Printable(dir), n, s, humanBytes(bytes))
			}
			continue
		}
		if it.Removed || rep.DryRun {
			fmt.Fprintf(w, "%s %s %s (%s)\n", verb, it.Kind, machine.Printable(it.Path), humanBytes(it.Bytes))
		}
	}
	if len(items) == 0 {
		fmt.Fprintln(w, "nothing to prune")
		return
	}
	fmt.Fprintf(w, "%s %s\n", total, humanBytes(rep.FreedBytes))
}
