package machine

import (
	"context"
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

// LoginShell runs user's login shell through systemd-run --machine, as
// Exec runs commands, and returns its exit status: machined's
// OpenMachineShell (machinectl shell) reports none. On a terminal
// systemd-run gets a pseudo terminal in the machine (--pty); otherwise the
// shell reads the caller's stdin (--pipe) and ends with it.
func (m *Machined) LoginShell(ctx context.Context, name, user string) (int, error) {
	if user == "" {
		user = "root"
	}
	e := loginShellSpec([]string{"/bin/sh", "-c", machinedLoginShell, "sh", user})
	e.User = user
	return m.Exec(ctx, name, e)
}
