package machine

import (
	"context"
	"fmt"
	"os"
)

// loginShell is a backend that runs a login shell and passes its exit
// status back; Manager.Shell prefers it to Backend.Shell.
type loginShell interface {
	LoginShell(ctx context.Context, name, user string) (int, error)
}

// loginShellSpec is how a login shell runs, as ssh runs one: on a pseudo
// terminal when stdin is a terminal, and on the caller's own streams
// otherwise, so that the end of the input ends the shell (nsbox shell web
// </dev/null returns at once).
func loginShellSpec(argv []string) ExecSpec {
	e := ExecSpec{Argv: argv, TTY: isTerminal(os.Stdin), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if e.TTY {
		e.Env = []string{"TERM=" + envOr("TERM", "vt220")}
	}
	return e
}

// LoginShell runs user's login shell with runuser -l and returns its exit
// status. On a terminal it gets a pseudo terminal of the machine's own
// (tty names it inside).
func (d *Direct) LoginShell(ctx context.Context, name, user string) (int, error) {
	if user == "" {
		user = "root"
	}
	return d.Exec(ctx, name, loginShellSpec([]string{"/usr/sbin/runuser", "-l", user}))
}

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
func (m *Machined) LoginShell(ctx context.Context, name, user string) (int, error) {
	if user == "" {
		user = "root"
	}
	if isTerminal(os.Stdin) {
		// On a terminal, machined's own shell (machinectl shell): it
		// gives the shell a pseudo terminal and a session, but no exit
		// status.
		return 0, m.openShell(name, user)
	}
	e := loginShellSpec([]string{"/bin/sh", "-c", machinedLoginShell, "sh", user})
	e.User = user
	return m.Exec(ctx, name, e)
}

// openShell is machined's OpenMachineShell on the caller's terminal.
func (m *Machined) openShell(name, user string) error {
	term := envOr("TERM", "vt220")
	master, err := m.Machines.OpenMachineShell(name, user, []string{"TERM=" + term})
	if err != nil {
		return fmt.Errorf("open shell: %w", err)
	}
	defer master.Close()
	attachTerminal(master)
	return nil
}
