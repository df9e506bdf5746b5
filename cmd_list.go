package main

import (
	"bytes"
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

// usageFlag asks list and status for each tree's disk usage, which takes
// a walk of the tree.
var usageFlag = &cli.BoolFlag{Name: "usage", Aliases: []string{"u"}, Usage: "show the disk usage of each tree (walks it: slower)"}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list every machine, running or not",
		Description: "Machines that machined knows but nsbox did not create, and machinectl's\n" +
			"images in /var/lib/machines (running or not), are shown too, marked with *\n" +
			"after the name (nsbox adopt NAME makes one nsbox's).\n\n   nsbox list\n   nsbox list --output json",
		Flags: []cli.Flag{outputFlag, &cli.BoolFlag{Name: "no-legend", Usage: "no header line"}, usageFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			if s, globals := remoteOf(c); s != nil {
				return listHosts(c, s, globals)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			infos, err := m.List(c.Context, machine.ListOptions{Usage: c.Bool("usage")})
			if err != nil {
				return fmt.Errorf("list: %w", err)
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, infos)
			}
			writeTable(os.Stdout, infos, nil, !c.Bool("no-legend"), c.Bool("usage"))
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

// writeJSON prints v as indented JSON. encoding/json escapes C0 controls
// and U+2028/U+2029 but leaves DEL, the C1 controls (U+009B is a CSI to
// some terminals) and bidirectional overrides raw; they are written as
// \u escapes too, which decode to the same strings: the JSON stays exact
// and is inert on a terminal.
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := io.WriteString(w, escapeJSONControls(buf.String()))
	return err
}

// escapeJSONControls writes DEL, C1 controls and invisible reordering
// marks in JSON text as \u escapes. Outside strings JSON has only ASCII,
// so every such character is inside a string, where the escape is valid.
func escapeJSONControls(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == 0x7f || r >= 0x80 && r <= 0x9f || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0x200e || r == 0x200f {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell is a value for one field of a table or status row: text a machine
// controls (its os-release, names and paths machined reports) with every
// control character, tab and newline shown as an escape, so it can
// neither steer the terminal nor break the columns.
func cell(s string) string { return machine.Printable(dash(s)) }

// writeTable writes list's table; with hosts (one for each of infos), a
// HOST column first.
func writeTable(w io.Writer, infos []machine.Info, hosts []string, legend, usage bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if legend {
		head := "NAME\tSTATE\tOS\tVERSION\tADDRESSES\tROOT\tSINCE"
		if usage {
			head = "NAME\tSTATE\tOS\tVERSION\tUSAGE\tADDRESSES\tROOT\tSINCE"
		}
		if hosts != nil {
			head = "HOST\t" + head
		}
		fmt.Fprintln(tw, head)
	}
	for n, i := range infos {
		name := i.Name
		if !i.Managed {
			name += "*"
		}
		since := "-"
		if i.Since != nil {
			since = i.Since.Local().Format(time.DateTime)
		}
		state := i.State
		if i.ReadOnly {
			state += " (ro)"
		}
		if i.App != nil {
			state += " (app)"
		}
		row := []string{cell(name), cell(state), cell(i.OS), cell(i.Version)}
		if hosts != nil {
			row = append([]string{cell(hosts[n])}, row...)
		}
		if usage {
			u := "-"
			if i.Managed || i.ImageType != "" {
				u = humanBytes(i.Usage)
			}
			row = append(row, u)
		}
		row = append(row, cell(strings.Join(i.Addresses, ",")), cell(i.Root), since)
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	if legend && len(infos) == 0 {
		fmt.Fprintln(w, "(no machines; create one with: nsbox create bookworm)")
	}
}
