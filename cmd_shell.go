package main

import (
	"fmt"
	"os"

	"github.com/nsbox/nsbox/machine"

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
			"--env, --workdir, -t and -T are docker exec's: they apply to CMD and to\n" +
			"the login shell alike, on both backends and in stopped machines.\n\n" +
			"   nsbox shell web\n   nsbox shell web -- apt-get install -y nginx\n   nsbox shell --uid www-data web -- id\n" +
			"   nsbox shell -e DEBUG=1 -w /srv/app web -- ./run-tests\n   nsbox shell -T web < script.sh",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "uid", Aliases: []string{"u"}, Usage: "user to run as, a name or a numeric ID (default: root)"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `NAME=VALUE` in the command's environment (NAME alone: its value here); repeatable"},
			&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "start in `DIR`, a path inside the machine (default: PID 1's, or the home of a login shell)"},
			&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "give the command a pseudo terminal even when stdin is none"},
			&cli.BoolFlag{Name: "no-tty", Aliases: []string{"T"}, Usage: "never give a pseudo terminal, even on a terminal (plain pipes)"},
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
			o, err := execOptions(c)
			if err != nil {
				return err
			}
			if o.User, err = m.ResolveUser(name, c.String("uid")); err != nil {
				return fmt.Errorf("shell %s: %w", name, err)
			}
			status, err := m.Shell(c.Context, name, o, argv)
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

// execOptions reads shell's --env, --workdir, -t and -T.
func execOptions(c *cli.Context) (machine.ExecOptions, error) {
	var o machine.ExecOptions
	if c.Bool("tty") && c.Bool("no-tty") {
		return o, usagef("-t (--tty) and -T (--no-tty) ask for opposite things: give one")
	}
	switch {
	case c.Bool("tty"):
		o.TTY = machine.TTYAlways
	case c.Bool("no-tty"):
		o.TTY = machine.TTYNever
	}
	env, err := machine.ParseEnv(c.StringSlice("env"), os.LookupEnv)
	if err != nil {
		return o, usagef("%v", err)
	}
	o.Env = env
	if o.Workdir, err = machine.ValidateWorkdir(c.String("workdir")); err != nil {
		return o, usagef("%v", err)
	}
	return o, nil
}
