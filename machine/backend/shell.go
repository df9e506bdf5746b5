package backend

import (
	"context"
	"os"
)

// LoginShells is a backend that runs a login shell and passes its exit
// status back; Manager.Shell prefers it to Backend.Shell.
type LoginShells interface {
	LoginShell(ctx context.Context, name, user string) (int, error)
}

// LoginShellSpec is how a login shell runs, as ssh runs one: on a pseudo
// terminal when stdin is a terminal, and on the caller's own streams
// otherwise, so that the end of the input ends the shell (nsbox shell web
// </dev/null returns at once).
func LoginShellSpec(argv []string) ExecSpec {
	e := ExecSpec{Argv: argv, TTY: IsTerminal(os.Stdin), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if e.TTY {
		e.Env = []string{"TERM=" + EnvOr("TERM", "vt220")}
	}
	return e
}

func EnvOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
