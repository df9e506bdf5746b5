package machine

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/nsbox/nsbox/machine/backend"
)

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
func (m *Manager) Logs(ctx context.Context, name string, o backend.LogOptions, w io.Writer) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	if opts, _ := m.Options(name); o.Host || opts.App != nil {
		// An app machine's output is its nspawn's: the host side.
		return m.Backend.HostLogs(ctx, name, o, w)
	}
	// A stopped overlay machine's tree is mounted while it is read.
	return m.withTree(ctx, name, func() error {
		if _, err := os.Stat(m.Dir(name) + "/var/log/journal"); err != nil {
			return fmt.Errorf("%s has no journal yet (boot it once: nsbox boot %s)", name, name)
		}
		return backend.Journal(ctx, m.Runner, []string{"--root=" + m.Dir(name)}, o, w)
	})
}
