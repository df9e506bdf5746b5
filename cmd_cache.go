package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
)

func cacheCommand() *cli.Command {
	return &cli.Command{
		Name:  "cache",
		Usage: "list, refresh, prune or remove the cached bases machines are made from",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list cached bases (of releases and of images) with their size and age, then the cached image layers",
				Description: "A base made from a container image (create --from) is named image-DIGEST-PLATFORM and\n" +
					"shows the image in RELEASE. Image layers are kept by digest, shared between images:\n" +
					"IMAGES says whose, USED BY the machines and image bases that name them.\n\n" +
					"   nsbox cache list -o json              # the bases\n   nsbox cache list --layers -o json     # the layers",
				Flags: []cli.Flag{outputFlag, &cli.BoolFlag{Name: "no-legend", Usage: "no header line"},
					&cli.BoolFlag{Name: "layers", Usage: "list the cached image layers alone"}},
				Action: func(c *cli.Context) error {
					if err := checkOutput(c); err != nil {
						return err
					}
					m, err := manager(c)
					if err != nil {
						return err
					}
					layers, err := m.ImageLayers()
					if err != nil {
						return fmt.Errorf("cache list: %w", err)
					}
					if c.Bool("layers") {
						if c.String("output") == "json" {
							return writeJSON(os.Stdout, layers)
						}
						return printLayers(c, layers)
					}
					bc := m.Bases()
					current, err := bc.List()
					if err != nil {
						return fmt.Errorf("cache list: %w", err)
					}
					// Each base, then the earlier versions of it that
					// machines are over.
					var list []machine.BaseInfo
					for _, b := range current {
						list = append(list, b)
						list = append(list, bc.Versions(b.Key)...)
					}
					// Versions received from other hosts, of keys
					// that have no base here.
					list = append(list, bc.KeptOnly()...)
					if c.String("output") == "json" {
						// docs/json.md: empty lists are [], never null.
						if list == nil {
							list = []machine.BaseInfo{}
						}
						for i := range list {
							if list[i].Packages == nil {
								list[i].Packages = []string{}
							}
						}
						return writeJSON(os.Stdout, list)
					}
					tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					if !c.Bool("no-legend") {
						fmt.Fprintln(tw, "BASE\tRELEASE\tVERSION\tSIZE\tAGE\tBOOTSTRAPPER\tMACHINES")
					}
					for _, b := range list {
						version := b.Version
						if !b.Current {
							version += " (earlier)"
						}
						users := machine.Printable(strings.Join(b.Machines, ","))
						if b.Runs {
							users = strings.TrimPrefix(users+",(a run)", ",")
						}
						release, bootstrapper := b.Distro+" "+b.Release, b.Bootstrapper
						if b.Image != nil {
							release, bootstrapper = b.Image.Source, "image"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", machine.Printable(b.Key), machine.Printable(release), version,
							humanBytes(b.Size), humanAge(b.Age()), machine.Printable(bootstrapper), dash(users))
					}
					if err := tw.Flush(); err != nil || len(layers) == 0 {
						return err
					}
					fmt.Println()
					return printLayers(c, layers)
				},
			},
			{
				Name:      "refresh",
				Usage:     "bootstrap a base anew, so new machines get current packages (overlay machines keep the version they were made from)",
				ArgsUsage: "BASE|RELEASE",
				Action: func(c *cli.Context) error {
					return eachBase(c, func(bc *machine.BaseCache, b machine.BaseInfo) error {
						p := newProgress(os.Stderr, quiet(c), logrus.IsLevelEnabled(logrus.InfoLevel))
						_, err := bc.Refresh(c.Context, b, p.stage)
						p.done()
						if err != nil {
							return fmt.Errorf("cache refresh %s: %w", b.Key, err)
						}
						if !quiet(c) {
							fmt.Fprintf(os.Stderr, "refreshed %s (%s)\n", b.Key, p.elapsed())
						}
						return nil
					})
				},
			},
			{
				Name:  "prune",
				Usage: "delete the earlier versions of bases that no machine is over, and the bases of images no machine was made from",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "only say what would be deleted"}},
				Action: func(c *cli.Context) error {
					m, err := manager(c)
					if err != nil {
						return err
					}
					gone, err := m.Bases().Prune(c.Context, c.Bool("dry-run"))
					verb := "removed"
					if c.Bool("dry-run") {
						verb = "would remove"
					}
					for _, v := range gone {
						fmt.Printf("%s %s version %s (%s)\n", verb, v.Key, v.Version, humanBytes(v.Size))
					}
					if err != nil {
						return fmt.Errorf("cache prune: %w", err)
					}
					return nil
				},
			},
			{
				Name:      "remove",
				Usage:     "delete a cached base (refused while overlay machines are over it, or for a base made from an image while machines were made from it) or an image layer no machine or base names",
				ArgsUsage: "BASE|RELEASE|sha256:LAYER",
				Action: func(c *cli.Context) error {
					if d := c.Args().First(); c.NArg() == 1 && strings.HasPrefix(d, "sha256:") {
						m, err := manager(c)
						if err != nil {
							return err
						}
						if err := m.RemoveLayer(c.Context, d); err != nil {
							return fmt.Errorf("cache remove %s: %w", machine.Printable(d), err)
						}
						return nil
					}
					return eachBase(c, func(bc *machine.BaseCache, b machine.BaseInfo) error {
						if err := bc.Remove(c.Context, b.Key); err != nil {
							return fmt.Errorf("cache remove %s: %w", b.Key, err)
						}
						return nil
					})
				},
			},
		},
	}
}

// eachBase runs fn for every cached base the command's argument names
// (a key, or a release such as bookworm).
func eachBase(c *cli.Context, fn func(*machine.BaseCache, machine.BaseInfo) error) error {
	if c.NArg() != 1 {
		return usagef("%s takes one base: a key or a release (see: nsbox cache list)", c.Command.Name)
	}
	m, err := manager(c)
	if err != nil {
		return err
	}
	bc := m.Bases()
	found, err := bc.Find(c.Args().First())
	if err != nil {
		return err
	}
	if len(found) == 0 {
		return fmt.Errorf("no cached base %q (see: nsbox cache list)", c.Args().First())
	}
	for _, b := range found {
		if err := fn(bc, b); err != nil {
			return err
		}
	}
	return nil
}

// printLayers writes the cached image layers as a table.
func printLayers(c *cli.Context, layers []machine.LayerInfo) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	if !c.Bool("no-legend") {
		fmt.Fprintln(tw, "LAYER\tSIZE\tLAST USED\tIMAGES\tUSED BY")
	}
	for _, l := range layers {
		users := append(append([]string{}, l.Machines...), l.Bases...)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", machine.Printable(l.Digest), humanBytes(l.Size), humanAge(time.Since(l.LastUsed))+" ago",
			dash(machine.Printable(strings.Join(l.Images, ","))), dash(machine.Printable(strings.Join(users, ","))))
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func humanAge(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dm", int(d.Minutes()))
}
