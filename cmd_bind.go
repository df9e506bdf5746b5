package main

import (
	"fmt"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func bindCommand() *cli.Command {
	return &cli.Command{
		Name:      "bind",
		Usage:     "bind-mount a host directory into a running machine, until it stops",
		ArgsUsage: "NAME SRC DST",
		Description: "The directory appears with the machine's users mapped (host root is the\n" +
			"machine's root). For a bind that lasts across boots: nsbox boot --bind.\n\n" +
			"   nsbox bind web /srv/data /mnt/data --mkdir\n   nsbox bind web /etc/ssl /mnt/ssl --read-only --mkdir",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "read-only", Usage: "mount it read-only"},
			&cli.BoolFlag{Name: "mkdir", Usage: "create DST inside the machine first"},
			&cli.BoolFlag{Name: "force", Usage: "allow binding / or the root directory itself"},
		},
		BashComplete: completeMachines,
		Action: func(c *cli.Context) error {
			if c.NArg() != 3 {
				return usagef("bind takes a machine name, a host directory and a path inside (see: nsbox bind --help)")
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
			if err := m.Bind(c.Context, name, src, dst, c.Bool("read-only"), c.Bool("mkdir"), c.Bool("force")); err != nil {
				return fmt.Errorf("bind %s: %w", name, err)
			}
			return nil
		},
	}
}
