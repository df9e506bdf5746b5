package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

var outputFlag = &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list every machine, running or not",
		Description: "Machines that machined knows but nsbox did not create are shown too,\n" +
			"marked with * after the name.\n\n   nsbox list\n   nsbox list --output json",
		Flags: []cli.Flag{outputFlag, &cli.BoolFlag{Name: "no-legend", Usage: "no header line"}},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			infos, err := m.List(c.Context)
			if err != nil {
				return fmt.Errorf("list: %w", err)
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, infos)
			}
			writeTable(os.Stdout, infos, !c.Bool("no-legend"))
			return nil
		},
	}
}

func checkOutput(c *cli.Context) error {
	switch c.String("output") {
	case "table", "json":
		return nil
	}
	return usagef("--output %q: use table or json", c.String("output"))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeTable(w io.Writer, infos []machine.Info, legend bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if legend {
		fmt.Fprintln(tw, "NAME\tSTATE\tOS\tVERSION\tUSAGE\tADDRESSES\tROOT\tSINCE")
	}
	for _, i := range infos {
		name := i.Name
		if !i.Managed {
			name += "*"
		}
		since := "-"
		if i.Since != nil {
			since = i.Since.Local().Format(time.DateTime)
		}
		usage := "-"
		if i.Managed {
			usage = humanBytes(i.Usage)
		}
		state := i.State
		if i.ReadOnly {
			state += " (ro)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, state, dash(i.OS), dash(i.Version), usage,
			dash(strings.Join(i.Addresses, ",")), dash(i.Root), since)
	}
	tw.Flush()
	if legend && len(infos) == 0 {
		fmt.Fprintln(w, "(no machines; create one with: nsbox create bookworm)")
	}
}
