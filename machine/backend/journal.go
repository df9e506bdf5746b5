package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
)

// LogOptions select what logs shows.
type LogOptions struct {
	Follow bool
	Lines  int    // 0: all
	Since  string // journalctl --since syntax
	Host   bool   // the host side: the unit's journal, or the console log
}

// journalArgs are journalctl's arguments for o.
func journalArgs(o LogOptions) []string {
	args := []string{"--no-pager"}
	if o.Lines > 0 {
		args = append(args, fmt.Sprintf("--lines=%d", o.Lines))
	}
	if o.Since != "" {
		args = append(args, "--since="+o.Since)
	}
	if o.Follow {
		args = append(args, "--follow")
	}
	return args
}

// Journal runs journalctl on the journal that which selects. With both
// --lines and --since, journalctl (252) shows the first N entries since
// then, where logs promises the last N, as it shows without --since: so
// nsbox first asks for the cursor of the Nth entry from the end among
// those since then, and shows from that entry on.
func Journal(ctx context.Context, r host.Runner, which []string, o LogOptions, w io.Writer) error {
	args := append(append([]string{}, which...), journalArgs(o)...)
	if o.Lines > 0 && o.Since != "" {
		cursor, err := nthLastCursor(ctx, r, which, o)
		if err != nil {
			return err
		}
		all := o
		all.Lines = 0
		if cursor == "" {
			// Nothing since then: follow from there, or show nothing.
			if !o.Follow {
				return nil
			}
			args = append(append([]string{}, which...), journalArgs(all)...)
		} else {
			all.Since = ""
			args = append(append(append([]string{}, which...), journalArgs(all)...), "--cursor="+cursor, "--no-tail")
		}
	}
	return r.Run(ctx, &host.Cmd{Path: "journalctl", Args: args, Stdout: w, Foreground: o.Follow})
}

// nthLastCursor is the cursor of the o.Lines-th entry from the end among
// those since o.Since ("" when there is none).
func nthLastCursor(ctx context.Context, r host.Runner, which []string, o LogOptions) (string, error) {
	var out bytes.Buffer
	args := append(append([]string{}, which...), "--no-pager", "--quiet", "--reverse", fmt.Sprintf("--lines=%d", o.Lines),
		"--since="+o.Since, "--output=json", "--output-fields=__CURSOR")
	if err := r.Run(ctx, &host.Cmd{Path: "journalctl", Args: args, Stdout: &out}); err != nil {
		return "", err
	}
	cursor := ""
	for _, l := range strings.Split(out.String(), "\n") {
		var e struct {
			Cursor string `json:"__CURSOR"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Cursor != "" {
			cursor = e.Cursor
		}
	}
	if err := ValidateText("journal cursor", cursor); err != nil {
		return "", err
	}
	return cursor, nil
}
