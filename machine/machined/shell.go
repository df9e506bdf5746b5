package machined

import (
	"context"
	"fmt"
	"os"

	"github.com/nsbox/nsbox/machine/backend"
)

// machinedLoginShell starts the login shell of the user named in $1, as
// machined's OpenMachineShell does: the shell from the user database,
// with -l, in the home directory.
const machinedLoginShell = `shell=$(getent passwd "$1" 2>/dev/null | { IFS=: read -r _ _ _ _ _ _ x; echo "$x"; }); ` +
	`cd "$HOME" 2>/dev/null || cd /; exec "${shell:-/bin/sh}" -l`

// LoginShell runs user's login shell. Without a terminal it runs through
// systemd-run --machine --pipe, as Exec runs commands: the shell reads the
// caller's stdin, ends with it, and its exit status comes back. On a
// terminal it is machined's OpenMachineShell, whose exit status machined
// does not report.
func (m *Backend) LoginShell(ctx context.Context, name, user string) (int, error) {
	if user == "" {
		user = "root"
	}
	if backend.IsTerminal(os.Stdin) {
		// On a terminal, machined's own shell (machinectl shell): it
		// gives the shell a pseudo terminal and a session, but no exit
		// status.
		return 0, m.openShell(name, user)
	}
	e := backend.LoginShellSpec([]string{"/bin/sh", "-c", machinedLoginShell, "sh", user})
	e.User = user
	return m.Exec(ctx, name, e)
}

// openShell is machined's OpenMachineShell on the caller's terminal.
func (m *Backend) openShell(name, user string) error {
	term := backend.EnvOr("TERM", "vt220")
	master, err := m.Machines.OpenMachineShell(name, user, []string{"TERM=" + term})
	if err != nil {
		return fmt.Errorf("open shell: %w", err)
	}
	defer master.Close()
	backend.AttachTerminal(master)
	return nil
}
