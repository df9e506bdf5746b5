package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "print machines being created, started, stopped and removed, as it happens",
		Description: "Runs until interrupted. With --output json, one JSON object a line.\n\n" +
			"   nsbox events\n   nsbox events -o json | jq .",
		Flags: []cli.Flag{outputFlag, &cli.DurationFlag{Name: "interval", Value: 500 * time.Millisecond, Usage: "how often to look when the backend does not say"}},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			asJSON := c.String("output") == "json"
			enc := json.NewEncoder(os.Stdout)
			err = m.Events(c.Context, c.Duration("interval"), func(e machine.Event) {
				if asJSON {
					_ = enc.Encode(e)
					return
				}
				mark := ""
				if !e.Managed {
					mark = " (not nsbox's)"
				}
				fmt.Printf("%s %-8s %s%s\n", e.Time.Local().Format("15:04:05.000"), e.Event, e.Machine, mark)
			})
			if err != nil {
				return fmt.Errorf("events: %w", err)
			}
			return nil
		},
	}
}
