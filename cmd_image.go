package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nsbox/nsbox/machine"

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
		Name: "export", Usage: "write a stopped machine's tree as a tarball, or as an OCI image layout", ArgsUsage: "NAME FILE.tar[.gz|.zst|.xz] | NAME --format oci DIR",
		Description: "An existing FILE is kept unless --force is given. The archive is written\n" +
			"under no name (mode 0600) and gets its name once it is complete.\n\n" +
			"With --format oci, DIR becomes an OCI image layout (oci-layout, index.json,\n" +
			"blobs/sha256) of one image tagged latest (--tag), which podman, skopeo and\n" +
			"nsbox create --from oci:DIR take. DIR must not exist, or be an empty\n" +
			"directory; it is written beside it as .#DIR.XXXX (root's, 0700) and renamed\n" +
			"into place when whole, so a failure or Ctrl-C leaves nothing. The layers are\n" +
			"those of nsbox push (see there).\n\n" +
			"   nsbox export web /var/tmp/web.tar.zst\n" +
			"   nsbox export web --format oci /var/tmp/web-oci\n" +
			"   podman run --rm oci:/var/tmp/web-oci cat /etc/os-release",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "replace FILE if it exists (tar only)"},
			&cli.StringFlag{Name: "format", Value: "tar", Usage: "tar (a tarball, compressed as FILE's name says) or oci (an OCI image layout)"},
			&cli.StringFlag{Name: "tag", Usage: "the image's tag in the layout (--format oci)", DefaultText: "latest"},
			outputFlag,
		},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			name, file := c.Args().Get(0), c.Args().Get(1)
			switch c.String("format") {
			case "tar":
				if c.IsSet("tag") {
					return usagef("--tag goes with --format oci")
				}
				if c.String("output") == "json" {
					return usagef("-o json goes with --format oci")
				}
			case "oci":
				if c.NArg() != 2 {
					return usagef("export --format oci takes a machine name and a directory (see: nsbox export --help)")
				}
				if c.Bool("force") {
					return usagef("--force does not go with --format oci: nsbox never replaces a directory; remove %s or name a new one", file)
				}
				if err := checkTag(c.String("tag")); err != nil {
					return err
				}
				return exportOCI(c, name, file)
			default:
				return usagef("--format %q: use tar or oci", c.String("format"))
			}
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

// checkTag checks an OCI layout's tag (its ref.name), as OCI's grammar
// for tags has it.
func checkTag(tag string) error {
	if tag == "" {
		return nil
	}
	if len(tag) > 128 {
		return usagef("--tag %q: at most 128 characters", tag)
	}
	for i, r := range tag {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || (i > 0 && (r == '.' || r == '-'))) {
			return usagef("--tag %q: letters, digits, _, and . or - after the first", tag)
		}
	}
	return nil
}

func exportOCI(c *cli.Context, name, dir string) error {
	m, err := manager(c)
	if err != nil {
		return err
	}
	p := newProgress(os.Stderr, quiet(c), logrus.IsLevelEnabled(logrus.InfoLevel))
	res, err := m.ExportOCI(c.Context, name, dir, machine.OCIOptions{Progress: p.stage, Tag: c.String("tag")})
	p.done()
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	return ociResult(c, res, "exported")
}

// ociResult prints what an export --format oci or a push made: the JSON,
// and a last line on stderr.
func ociResult(c *cli.Context, res *machine.OCIResult, verb string) error {
	if !quiet(c) {
		fmt.Fprintf(os.Stderr, "%s %s to %s: %d layers, %s, %s in %s\n", verb, res.Name, machine.Printable(res.Destination),
			len(res.Layers), machine.FormatSize(res.Size), res.Digest, res.Time.Round(100*time.Millisecond))
	}
	if c.String("output") == "json" {
		return writeJSON(os.Stdout, res)
	}
	return nil
}

func pushCommand() *cli.Command {
	return &cli.Command{
		Name: "push", Usage: "send a stopped machine to a registry as a container image", ArgsUsage: "NAME docker://[REGISTRY/]REPO[:TAG]",
		Description: "The image runs elsewhere: podman, docker and nsbox create --from pull it.\n" +
			"Credentials are the user's Docker config and credential helpers (docker\n" +
			"login), as for pulls; plain HTTP is spoken to loopback only.\n\n" +
			"Layers: an overlay machine is its base version's layer and a layer of what\n" +
			"it changed (deletions as OCI whiteouts); the base version's layer is built\n" +
			"once and kept in the image cache, so later pushes and exports of any machine\n" +
			"over it read nothing, and a registry that has it is not sent it again. Any\n" +
			"other machine (a copy, a btrfs snapshot, one made from an image) is one\n" +
			"layer. Owners are as the machine sees them; setuid bits, file capabilities\n" +
			"and ACLs are kept; device nodes, sockets and trusted.* attributes are not.\n" +
			"The configuration is the image's a machine was made from; otherwise the\n" +
			"command is /sbin/init (systemd) where the machine has one, or /bin/sh.\n\n" +
			"   nsbox push web docker://registry.example.com/team/web:1.0\n" +
			"   podman run --rm registry.example.com/team/web:1.0 cat /etc/os-release",
		Flags: []cli.Flag{outputFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			if c.NArg() != 2 {
				return usagef("push takes a machine name and docker://REF (see: nsbox push --help)")
			}
			name, dst := c.Args().Get(0), c.Args().Get(1)
			if err := machine.CheckPushRef(dst); err != nil {
				return usagef("push %s: %v", name, err)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			p := newProgress(os.Stderr, quiet(c), logrus.IsLevelEnabled(logrus.InfoLevel))
			res, err := m.Push(c.Context, name, dst, machine.OCIOptions{Progress: p.stage})
			p.done()
			if err != nil {
				return fmt.Errorf("push %s: %w", name, err)
			}
			return ociResult(c, res, "pushed")
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
