package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show one machine's state, leader, unit, addresses and boot options",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{outputFlag, usageFlag},
		Action: func(c *cli.Context) error {
			if err := checkOutput(c); err != nil {
				return err
			}
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			i, err := m.Status(c.Context, name, machine.ListOptions{Usage: c.Bool("usage")})
			if err != nil {
				return fmt.Errorf("status %s: %w", name, err)
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, statusJSON{i, c.App.Version})
			}
			writeStatus(os.Stdout, i)
			return nil
		},
	}
}

// statusJSON is status -o json: the machine, and which nsbox answered
// (for bug reports, where the version matters).
type statusJSON struct {
	machine.Info
	NsboxVersion string `json:"nsbox_version"`
}

// writeStatus prints machine i as status shows it. Every value goes
// through cell: the OS and version come from the machine's os-release,
// and a foreign machine's name, root and unit from whoever registered it.
func writeStatus(w io.Writer, i machine.Info) {
	row := func(k, v string) { fmt.Fprintf(w, "%11s: %s\n", k, machine.Printable(v)) }
	fmt.Fprintln(w, machine.Printable(i.Name))
	row("State", i.State)
	if i.Since != nil {
		row("Since", fmt.Sprintf("%s (%s ago)", i.Since.Local().Format(time.DateTime), time.Since(*i.Since).Round(time.Second)))
	}
	if i.Leader > 0 {
		row("Leader", fmt.Sprint(i.Leader))
	}
	if i.Unit != "" {
		row("Unit", i.Unit)
	}
	row("Backend", i.Backend)
	row("OS", strings.TrimSpace(dash(i.OS)+" "+i.Version))
	row("Root", dash(i.Root))
	if i.Managed {
		storage := i.Storage
		if i.Base != "" && i.Storage == "overlay" {
			storage += " over " + i.Base
		} else if i.Base != "" {
			storage += " of " + i.Base
		}
		row("Storage", storage)
		var disk []string
		if i.Usage > 0 {
			disk = append(disk, humanBytes(i.Usage))
		}
		if i.BaseUsage > 0 {
			disk = append(disk, humanBytes(i.BaseUsage)+" in its base")
		}
		if i.ReadOnly {
			disk = append(disk, "read-only")
		}
		if len(disk) > 0 {
			row("Disk", strings.Join(disk, ", "))
		}
	}
	if len(i.Interfaces) > 0 {
		row("Interfaces", strings.Join(i.Interfaces, ", "))
	}
	if len(i.Addresses) > 0 {
		row("Addresses", strings.Join(i.Addresses, ", "))
	}
	if !i.Managed {
		row("Managed", "no (not an nsbox machine)")
	}
	if len(i.Sockets) > 0 {
		row("Sockets", strings.Join(i.Sockets, " ")+" (boot on a connection)")
	}
	if i.ImageType != "" {
		img := "machinectl's " + i.ImageType + " in " + i.ImageDir
		if i.ImageType != machine.ImageRaw && i.State == "stopped" {
			img += " (make it nsbox's: nsbox adopt " + i.Name + ")"
		}
		row("Image", img)
		var disk []string
		if i.Usage > 0 {
			disk = append(disk, humanBytes(i.Usage))
		}
		if i.ReadOnly {
			disk = append(disk, "read-only")
		}
		if len(disk) > 0 {
			row("Disk", strings.Join(disk, ", "))
		}
	}
	if i.Autostart != "" {
		row("Autostart", i.Autostart)
	}
	if l := i.Limits; l != nil {
		row("Limits", strings.Join(l.Describe(func(n uint64) string { return humanBytes(int64(n)) }), ", "))
	}
	if u := i.Use; u != nil {
		row("Use", fmt.Sprintf("memory %s, %d tasks, CPU %s", humanBytes(int64(u.Memory)), u.Tasks, u.CPUTime.Round(time.Millisecond)))
	}
	if a := i.App; a != nil {
		row("Runs", "app: "+dash(machine.CommandLine(a.Argv)))
		if a.User != "" {
			row("User", a.User)
		}
		if a.Workdir != "" {
			row("Workdir", a.Workdir)
		}
	}
	if o := i.Options; o != nil {
		row("Network", o.Network)
		pu := "pick (user namespace)"
		if !o.PrivateUsers {
			pu = "no (shares the host's users)"
		}
		row("Users", pu)
		for _, p := range o.Ports {
			row("Port", p)
		}
		for _, b := range o.Binds {
			kind := "Bind"
			if b.ReadOnly {
				kind = "Bind (ro)"
			}
			row(kind, b.String())
		}
		for _, u := range o.BindUsers {
			row("Bind user", u)
		}
	}
}
