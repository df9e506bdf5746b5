package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func adoptCommand() *cli.Command {
	return &cli.Command{
		Name:      "adopt",
		Usage:     "make one of machinectl's images in /var/lib/machines an nsbox machine",
		ArgsUsage: "NAME [NEWNAME]",
		Description: "Moves the stopped image NAME (a directory or btrfs subvolume that machinectl\n" +
			"clone, import-tar or pull-tar made) into the root directory as machine NAME\n" +
			"(or NEWNAME), with its settings file; /var/lib/machines/NAME becomes nsbox's link\n" +
			"to it, so machinectl still finds it. Raw images, read-only and running ones are\n" +
			"refused. On one file system this is a rename; across two, a copy, then the\n" +
			"original's removal.\n\n   nsbox adopt web\n   nsbox adopt web web2",
		BashComplete: completeImages,
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return usagef("adopt takes an image name and, if it is to change, the new name (see: nsbox adopt --help)")
			}
			name, newName := c.Args().Get(0), c.Args().Get(1)
			m, err := manager(c)
			if err != nil {
				return err
			}
			done := step(c, "adopting %s", name)
			err = m.Adopt(c.Context, name, newName)
			done(err)
			if err != nil {
				return fmt.Errorf("adopt %s: %w", name, err)
			}
			return nil
		},
	}
}

// completeImages offers the names of machinectl's directory images in
// /var/lib/machines (readable by root only, as completion of adopt is
// useful to root only).
func completeImages(c *cli.Context) {
	if c.NArg() > 0 {
		return
	}
	for _, n := range imageNames(machine.DefaultPaths().ImagesDir) {
		fmt.Println(n)
	}
}

// imageNames are the directories in dir that could be images: not
// hidden, not links (nsbox's own are), with valid names.
func imageNames(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !e.IsDir() || machine.ValidateName(n) != nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, n, "usr")); err == nil {
			out = append(out, n)
		}
	}
	return out
}
