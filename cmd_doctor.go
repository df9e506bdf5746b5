package main

import (
	"fmt"
	"os"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host for what nsbox needs, with a fix for each problem",
		Flags: []cli.Flag{outputFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			// A manager that cannot be opened is a failed check, not an error.
			m, err := manager(c)
			// The first line says which nsbox this is: a report of a
			// problem names it.
			checks := append([]machine.Check{{Name: "nsbox", OK: true, Detail: c.App.Version, Version: c.App.Version}},
				machine.Doctor{Manager: m, OpenErr: err, Pool: c.String("address-pool")}.Checks(c.Context)...)
			if c.String("output") == "json" {
				if err := writeJSON(os.Stdout, checks); err != nil {
					return err
				}
			} else {
				for _, ch := range checks {
					fmt.Println(checkLine(ch))
				}
			}
			for _, ch := range checks {
				if ch.Needed && !ch.OK {
					return exitCode(exitError)
				}
			}
			return nil
		},
	}
}

// checkLine is one check as doctor prints it: "ok", "FAIL" for a failed
// needed check, "warn" for another, the detail, and the fix of a failure.
func checkLine(ch machine.Check) string {
	mark := "ok  "
	if !ch.OK {
		mark = "FAIL"
		if !ch.Needed {
			mark = "warn"
		}
	}
	line := fmt.Sprintf("%s %-16s %s", mark, ch.Name, ch.Detail)
	if !ch.OK && ch.Fix != "" {
		line += " (fix: " + ch.Fix + ")"
	}
	return line
}
