package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func snapshotCommand() *cli.Command {
	return &cli.Command{
		Name: "snapshot", Usage: "take a snapshot of a machine; list, restore or remove its snapshots", ArgsUsage: "NAME [SNAP]",
		Description: "SNAP is a name (the rules of machine names); without one the snapshot is\n" +
			"named after the time (20261130-023501), and its name is printed. A running\n" +
			"machine is refused unless --live: its processes are then frozen (cgroup\n" +
			"freezer) for the moment of the copy. An overlay machine's snapshot holds its\n" +
			"upper directory, a btrfs machine's is a read-only subvolume snapshot, any\n" +
			"other's a copy of its tree. Snapshots live in the root-only store and go\n" +
			"with the machine.\n\n" +
			"   nsbox snapshot web before-upgrade\n" +
			"   nsbox snapshot list web\n" +
			"   nsbox snapshot restore web before-upgrade\n" +
			"   nsbox snapshot remove web before-upgrade",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "live", Usage: "snapshot a running machine, frozen for the moment of the copy"}},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return usagef("snapshot takes a machine name and optionally a snapshot name (see: nsbox snapshot --help)")
			}
			name, snap := c.Args().Get(0), c.Args().Get(1)
			if c.NArg() == 2 && snap == "" {
				return usagef("snapshot %s \"\": an empty snapshot name (leave it out for one named after the time)", name)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			done := step(c, "taking a snapshot of %s", name)
			snap, err = m.Snapshot(c.Context, name, snap, c.Bool("live"))
			done(err)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", name, err)
			}
			fmt.Println(snap)
			return nil
		},
		BashComplete: completeMachines,
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list a machine's snapshots with their time and size", ArgsUsage: "NAME",
				Flags:        []cli.Flag{outputFlag, &cli.BoolFlag{Name: "no-legend", Usage: "no header line"}},
				BashComplete: completeMachines,
				Action: func(c *cli.Context) error {
					if err := checkOutput(c); err != nil {
						return err
					}
					if c.NArg() != 1 {
						return usagef("snapshot list takes one machine name (see: nsbox snapshot list --help)")
					}
					name := c.Args().First()
					m, err := manager(c)
					if err != nil {
						return err
					}
					list, err := m.Snapshots(c.Context, name)
					if err != nil {
						return fmt.Errorf("snapshot list %s: %w", name, err)
					}
					if c.String("output") == "json" {
						return writeJSON(os.Stdout, list)
					}
					tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					if !c.Bool("no-legend") {
						fmt.Fprintln(tw, "SNAPSHOT\tCREATED\tSIZE\tKIND")
					}
					for _, s := range list {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Created.Local().Format(time.DateTime), humanBytes(s.Size), s.Kind)
					}
					return tw.Flush()
				},
			},
			{
				Name: "restore", Usage: "put a stopped machine back as a snapshot has it (the snapshot stays)", ArgsUsage: "NAME SNAP",
				BashComplete: completeSnapshots,
				Action: func(c *cli.Context) error {
					name, snap, err := snapshotArgs(c)
					if err != nil {
						return err
					}
					m, err := manager(c)
					if err != nil {
						return err
					}
					done := step(c, "restoring %s from %s", name, snap)
					err = m.RestoreSnapshot(c.Context, name, snap)
					done(err)
					if err != nil {
						return fmt.Errorf("snapshot restore %s: %w", name, err)
					}
					return nil
				},
			},
			{
				Name: "remove", Aliases: []string{"rm"}, Usage: "remove a snapshot", ArgsUsage: "NAME SNAP",
				BashComplete: completeSnapshots,
				Action: func(c *cli.Context) error {
					name, snap, err := snapshotArgs(c)
					if err != nil {
						return err
					}
					m, err := manager(c)
					if err != nil {
						return err
					}
					if err := m.RemoveSnapshot(c.Context, name, snap); err != nil {
						return fmt.Errorf("snapshot remove %s: %w", name, err)
					}
					return nil
				},
			},
		},
	}
}

// snapshotArgs returns the machine and snapshot names of restore and
// remove.
func snapshotArgs(c *cli.Context) (string, string, error) {
	if c.NArg() != 2 {
		return "", "", usagef("snapshot %s takes a machine name and a snapshot name (see: nsbox snapshot %s --help)", c.Command.Name, c.Command.Name)
	}
	return c.Args().Get(0), c.Args().Get(1), nil
}

// completeSnapshots offers machine names, then that machine's snapshots
// (which only root can read).
func completeSnapshots(c *cli.Context) {
	if c.NArg() != 1 {
		completeMachines(c)
		return
	}
	root := c.String("root-dir")
	if root == "" {
		root = "/srv"
	}
	for _, s := range (machine.Paths{RootDir: filepath.Clean(root)}).SnapshotNames(c.Args().First()) {
		fmt.Println(s)
	}
}
