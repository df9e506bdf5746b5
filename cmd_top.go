package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/urfave/cli/v2"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "show running machines' CPU, memory, tasks, disk and network use, live",
		Description: "Refreshes in place on a terminal until interrupted (Ctrl-C); elsewhere prints\n" +
			"a table each interval, as top -b does. CPU is the share of one CPU since the\n" +
			"last refresh (200% is two CPUs' worth); DISK is block I/O read/written a\n" +
			"second, NET what the machine received/sent a second through its own links\n" +
			"(\"-\" for a machine on the host's network, or where the backend counts\n" +
			"nothing). The first figures come one interval after the start.\n" +
			"With --output json, one JSON object a refresh, a line each (docs/json.md).\n\n" +
			"   nsbox top\n   nsbox top --sort memory\n   nsbox top --once -o json | jq '.machines[] | {name, cpu_percent}'",
		Flags: []cli.Flag{
			outputFlag,
			&cli.StringFlag{Name: "sort", Aliases: []string{"s"}, Value: "cpu", Usage: "sort by `COLUMN`: cpu, memory, tasks, io, net or name"},
			&cli.DurationFlag{Name: "interval", Aliases: []string{"d"}, Value: time.Second, Usage: "time between refreshes (at least 100ms)"},
			&cli.BoolFlag{Name: "once", Usage: "print one refresh, measured over one interval, and exit"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("top takes no arguments (see: nsbox top --help)")
			}
			if err := checkOutput(c); err != nil {
				return err
			}
			interval := c.Duration("interval")
			if interval < 100*time.Millisecond {
				return usagef("--interval %s: at least 100ms", interval)
			}
			column := c.String("sort")
			if err := machine.SortTop(nil, column); err != nil {
				return usagef("%v", err)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			t := &topView{out: os.Stdout, json: c.String("output") == "json", column: column, interval: interval}
			t.live = !c.Bool("once") && !t.json && backend.IsTerminal(os.Stdout)
			if err := t.run(c.Context, m.NewSampler(), c.Bool("once")); err != nil {
				return fmt.Errorf("top: %w", err)
			}
			return nil
		},
	}
}

// topView prints top's refreshes.
type topView struct {
	out      io.Writer
	json     bool
	live     bool // redraw in place on a terminal
	column   string
	interval time.Duration
}

// run samples every interval and prints a refresh from each pair of
// samples until ctx ends (or once).
func (t *topView) run(ctx context.Context, s *machine.Sampler, once bool) error {
	before, err := s.Sample(ctx)
	if err != nil {
		return err
	}
	if t.live {
		// The terminal's other screen, without its cursor, given back as
		// it was at the end.
		fmt.Fprint(t.out, "\x1b[?1049h\x1b[?25l")
		defer fmt.Fprint(t.out, "\x1b[?25h\x1b[?1049l")
	}
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now, err := s.Sample(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		rows := machine.TopRows(before, now)
		_ = machine.SortTop(rows, t.column)
		if err := t.print(rows); err != nil {
			return err
		}
		if once {
			return nil
		}
		before = now
	}
}

// print writes one refresh.
func (t *topView) print(rows []machine.TopRow) error {
	if t.json {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(struct {
			Time     time.Time        `json:"time"`
			Interval int64            `json:"interval_ms"`
			Machines []machine.TopRow `json:"machines"`
		}{time.Now(), t.interval.Milliseconds(), rows}); err != nil {
			return err
		}
		_, err := io.WriteString(t.out, escapeJSONControls(buf.String()))
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "nsbox top: %d running, every %s, by %s", len(rows), t.interval, t.column)
	if t.live {
		b.WriteString(" (Ctrl-C quits)")
	}
	b.WriteString("\n\n")
	cells := [][]string{{"NAME", "CPU", "MEMORY", "TASKS", "DISK R/W", "NET RX/TX"}}
	for _, r := range rows {
		name := backend.Printable(r.Name)
		if !r.Managed {
			name += "*"
		}
		cpu, mem, tasks, disk := "-", "-", "-", "-"
		if r.Accounted {
			cpu = fmt.Sprintf("%.1f%%", r.CPU)
			mem, tasks = humanBytes(int64(r.Memory)), fmt.Sprint(r.Tasks)
		}
		if r.IO {
			disk = rate(r.IORead) + "/" + rate(r.IOWrite)
		}
		net := "-"
		if r.Net {
			net = rate(r.NetRx) + "/" + rate(r.NetTx)
		}
		cells = append(cells, []string{name, cpu, mem, tasks, disk, net})
	}
	writeColumns(&b, cells)
	text := b.String()
	if !t.live {
		_, err := fmt.Fprintln(t.out, text)
		return err
	}
	// Home, each line cleared to its end, and the rest of the screen.
	text = strings.ReplaceAll(strings.TrimSuffix(text, "\n"), "\n", "\x1b[K\n")
	_, err := fmt.Fprint(t.out, "\x1b[H"+text+"\x1b[K\n\x1b[J")
	return err
}

// rate is a byte rate for a table cell.
func rate(perSecond float64) string {
	return humanBytes(int64(perSecond + 0.5))
}

// writeColumns writes cells as a table: the first column to the left,
// the figures to the right, two spaces apart.
func writeColumns(w io.Writer, cells [][]string) {
	width := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, row := range cells {
		var line strings.Builder
		for i, c := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				line.WriteString(c + pad)
			} else {
				line.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, line.String())
	}
}
