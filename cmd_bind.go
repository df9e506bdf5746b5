package main

import (
	"fmt"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func bindCommand() *cli.Command {
	return &cli.Command{
		Name:      "bind",
		Usage:     "bind-mount a host directory or file into a running machine, until it stops",
		ArgsUsage: "NAME SRC DST",
		Description: "SRC appears at DST with the machine's users mapped (host root is the\n" +
			"machine's root). A directory is bound onto a directory, a file onto a file;\n" +
			"--mkdir creates DST (an empty file for a file) and its parents, owned by the\n" +
			"machine's root, and removes them again if the bind fails. For a bind that\n" +
			"lasts across boots: nsbox boot --bind.\n\n" +
			"   nsbox bind web /srv/data /mnt/data --mkdir\n   nsbox bind web /etc/ssl /mnt/ssl --read-only --mkdir\n" +
			"   nsbox bind web /etc/hosts /etc/hosts --read-only",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "read-only", Usage: "mount it read-only"},
			&cli.BoolFlag{Name: "mkdir", Usage: "create DST inside the machine first"},
			// boot's name for it; --force is kept for earlier scripts.
			&cli.BoolFlag{Name: "force-binds", Aliases: []string{"force"}, Usage: "allow binding / or the root directory itself, or a writable directory other host users can reach"},
		},
		BashComplete: completeMachines,
		Action: func(c *cli.Context) error {
			if c.NArg() != 3 {
				return usagef("bind takes a machine name, a host directory or file and a path inside (see: nsbox bind --help)")
			}
			name, src, dst := c.Args().Get(0), c.Args().Get(1), c.Args().Get(2)
			for _, v := range []struct{ what, s string }{{"bind source", src}, {"bind destination", dst}} {
				if err := machine.ValidateText(v.what, v.s); err != nil {
					return usagef("%v", err)
				}
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			if err := m.Bind(c.Context, name, src, dst, c.Bool("read-only"), c.Bool("mkdir"), c.Bool("force-binds")); err != nil {
				return fmt.Errorf("bind %s: %w", name, err)
			}
			return nil
		},
	}
}
