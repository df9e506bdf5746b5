package machine

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/nsbox/nsbox/bootstrap"
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

// ensurePersistentJournal makes the machine's journald keep its journal
// in /var/log/journal, so logs outlive the machine's runs.
func (m *Manager) ensurePersistentJournal(name string) {
	r, err := os.OpenRoot(m.Dir(name))
	if err != nil {
		return
	}
	defer r.Close()
	_ = r.MkdirAll("var/log/journal", 0o755)
}

// Logs shows the machine's own journal, read from its tree (so a stopped
// machine's too), or with o.Host the host side of it.
func (m *Manager) Logs(ctx context.Context, name string, o LogOptions, w io.Writer) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	if o.Host {
		return m.Backend.HostLogs(ctx, name, o, w)
	}
	if _, err := os.Stat(m.Dir(name) + "/var/log/journal"); err != nil {
		return fmt.Errorf("%s has no journal yet (boot it once: nsbox boot %s)", name, name)
	}
	args := append([]string{"--root=" + m.Dir(name)}, journalArgs(o)...)
	return m.Runner.Run(ctx, &bootstrap.Cmd{Path: "journalctl", Args: args, Stdout: w, Foreground: o.Follow})
}

// HostLogs implements Backend: the unit's journal.
func (m *Machined) HostLogs(ctx context.Context, name string, o LogOptions, w io.Writer) error {
	args := append([]string{"--unit=" + UnitName(name), "--unit=" + AutostartUnitName(name)}, journalArgs(o)...)
	return m.Runner.Run(ctx, &bootstrap.Cmd{Path: "journalctl", Args: args, Stdout: w, Foreground: o.Follow})
}

// HostLogs implements Backend: the console log nspawn wrote.
func (d *Direct) HostLogs(ctx context.Context, name string, o LogOptions, w io.Writer) error {
	args := []string{}
	if o.Lines > 0 {
		args = append(args, fmt.Sprintf("--lines=%d", o.Lines))
	} else {
		args = append(args, "--lines=+1")
	}
	if o.Follow {
		args = append(args, "--follow=name", "--retry")
	}
	if o.Since != "" {
		return fmt.Errorf("%w: --since needs a journal; the console log has no times", ErrInvalidOption)
	}
	if _, err := os.Stat(d.logPath(name)); err != nil {
		return fmt.Errorf("%s has no console log yet (boot it once: nsbox boot %s)", name, name)
	}
	return d.Runner.Run(ctx, &bootstrap.Cmd{Path: "tail", Args: append(args, d.logPath(name)), Stdout: w, Foreground: o.Follow})
}
