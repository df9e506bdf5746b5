package main

import (
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"

	"github.com/urfave/cli/v2"
)

// step says on stderr what a long operation does, and when it is done
// how long it took: on a terminal or with --verbose, never with --quiet.
func step(c *cli.Context, format string, a ...any) func(err error) {
	start := time.Now()
	show := !quiet(c) && (term.IsTerminal(int(os.Stderr.Fd())) || logrus.IsLevelEnabled(logrus.InfoLevel))
	if show {
		fmt.Fprintf(os.Stderr, format+"...\n", a...)
	}
	return func(err error) {
		if err == nil && show {
			fmt.Fprintf(os.Stderr, "done in %s\n", time.Since(start).Round(100*time.Millisecond))
		}
	}
}

// twoNames returns the two machine names of clone and rename.
func twoNames(c *cli.Context) (string, string, error) {
	if c.NArg() != 2 {
		return "", "", usagef("%s takes two machine names (see: nsbox %s --help)", c.Command.Name, c.Command.Name)
	}
	return c.Args().Get(0), c.Args().Get(1), nil
}

func cloneCommand() *cli.Command {
	return &cli.Command{
		Name: "clone", Usage: "copy a stopped machine to a new one", ArgsUsage: "SRC DST",
		Description: "The copy gets its own hostname and machine id, and SRC's boot options.\n" +
			"On btrfs or XFS the copy shares blocks with SRC (reflink).",
		Action: func(c *cli.Context) error {
			src, dst, err := twoNames(c)
			if err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			done := step(c, "cloning %s into %s", src, dst)
			err = m.Clone(c.Context, src, dst)
			done(err)
			if err != nil {
				return fmt.Errorf("clone %s %s: %w", src, dst, err)
			}
			return nil
		},
	}
}

func renameCommand() *cli.Command {
	return &cli.Command{
		Name: "rename", Usage: "rename a stopped machine", ArgsUsage: "OLD NEW",
		Action: func(c *cli.Context) error {
			old, new, err := twoNames(c)
			if err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			if err := m.Rename(c.Context, old, new); err != nil {
				return fmt.Errorf("rename %s %s: %w", old, new, err)
			}
			return nil
		},
	}
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name: "export", Usage: "write a stopped machine's tree as a tarball", ArgsUsage: "NAME FILE.tar[.gz|.zst|.xz]",
		Description: "An existing FILE is kept unless --force is given. The archive is written\n" +
			"under no name (mode 0600) and gets its name once it is complete.\n\n" +
			"   nsbox export web /var/tmp/web.tar.zst",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "replace FILE if it exists"}},
		Action: func(c *cli.Context) error {
			name, file := c.Args().Get(0), c.Args().Get(1)
			if c.NArg() != 2 {
				return usagef("export takes a machine name and a file (see: nsbox export --help)")
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			done := step(c, "exporting %s to %s", name, file)
			err = m.ExportTo(c.Context, name, file, c.Bool("force"))
			done(err)
			if err != nil {
				return fmt.Errorf("export %s: %w", name, err)
			}
			return nil
		},
	}
}

func importCommand() *cli.Command {
	return &cli.Command{
		Name: "import", Usage: "make a machine from a tarball of a root file system", ArgsUsage: "NAME FILE.tar[.gz|.zst|.xz]|-",
		Description: "Takes what nsbox export or docker export writes. Archives with absolute\n" +
			"paths, '..' members, members written through their own symbolic links,\n" +
			"sparse files or headers that GNU tar reads otherwise are refused, and\n" +
			"nothing of them is kept. Device nodes are left out (systemd-nspawn\n" +
			"provides /dev). An archive that needs more than the free space of the\n" +
			"root dir, less 5% (at most 1 GiB), is refused.\n\n" +
			"   docker export web | nsbox import web -",
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef("import takes a machine name and a file or - (see: nsbox import --help)")
			}
			name, file := c.Args().Get(0), c.Args().Get(1)
			m, err := manager(c)
			if err != nil {
				return err
			}
			done := step(c, "importing %s from %s", name, file)
			err = m.Import(c.Context, name, file, os.Stdin)
			done(err)
			if err != nil {
				return fmt.Errorf("import %s: %w", name, err)
			}
			return nil
		},
	}
}

func readOnlyCommand() *cli.Command {
	return &cli.Command{
		Name: "read-only", Usage: "mark a stopped machine read-only, or writable again", ArgsUsage: "NAME [true|false]",
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return usagef("read-only takes a machine name and optionally true or false")
			}
			name, ro := c.Args().Get(0), true
			switch c.Args().Get(1) {
			case "", "true", "yes", "1":
			case "false", "no", "0":
				ro = false
			default:
				return usagef("read-only %q: use true or false", c.Args().Get(1))
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			if err := m.SetReadOnly(c.Context, name, ro); err != nil {
				return fmt.Errorf("read-only %s: %w", name, err)
			}
			return nil
		},
	}
}
