package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func shellCommand() *cli.Command {
	return &cli.Command{
		Name:      "shell",
		Usage:     "open a root shell in a machine, or run a command there",
		ArgsUsage: "NAME [-- CMD ARGS...]",
		Description: "Without CMD (or with \"--\" alone), opens a login shell: on a pseudo\n" +
			"terminal of the machine's own when stdin is a terminal, reading stdin\n" +
			"to its end otherwise, as ssh does (nsbox shell web </dev/null returns at\n" +
			"once). Exits with the shell's or CMD's exit status (128+N if signal N\n" +
			"killed it). A stopped machine is entered with systemd-nspawn -D, for\n" +
			"customising its tree.\n\n" +
			"   nsbox shell web\n   nsbox shell web -- apt-get install -y nginx\n   nsbox shell --uid www-data web -- id",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "uid", Aliases: []string{"u"}, Usage: "user to run as, a name or a numeric ID (default: root)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("shell takes a machine name (see: nsbox shell --help)")
			}
			name := c.Args().First()
			argv := c.Args().Tail()
			if len(argv) > 0 && argv[0] == "--" {
				argv = argv[1:]
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			user, err := m.ResolveUser(name, c.String("uid"))
			if err != nil {
				return fmt.Errorf("shell %s: %w", name, err)
			}
			status, err := m.Shell(c.Context, name, user, argv)
			if err != nil {
				return fmt.Errorf("shell %s: %w", name, err)
			}
			if status != 0 {
				return exitCode(status)
			}
			return nil
		},
	}
}
