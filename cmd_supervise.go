package main

import (
	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

// superviseName is the hidden command the direct backend runs to keep a
// machine's systemd-nspawn: "nsbox __supervise STATE LOG -- NSPAWN...".
const superviseName = "__supervise"

func superviseCommand() *cli.Command {
	return &cli.Command{
		Name:   superviseName,
		Hidden: true,
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) < 4 || args[2] != "--" {
				return usagef("usage: nsbox %s STATE LOG -- NSPAWN...", superviseName)
			}
			if code := machine.Supervise(args[0], args[1], args[3:]); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
}
