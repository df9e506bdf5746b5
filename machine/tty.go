package machine

import (
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/term"
)

// attachTerminal joins the caller's terminal to master, the controlling
// side of a pseudo terminal whose other side the payload holds, until the
// payload closes it. The caller's terminal is put in raw mode meanwhile and
// window size changes are passed on. The payload never sees the caller's
// terminal itself, so it cannot push input into it (TIOCSTI).
func attachTerminal(master *os.File) {
	in := int(os.Stdin.Fd())
	if term.IsTerminal(in) {
		if st, err := term.MakeRaw(in); err == nil {
			defer term.Restore(in, st)
		}
		_ = pty.InheritSize(os.Stdin, master)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				_ = pty.InheritSize(os.Stdin, master)
			}
		}()
	}
	go func() { _, _ = io.Copy(master, os.Stdin) }()
	// Ends with EIO once every holder of the other side has closed it.
	_, _ = io.Copy(os.Stdout, master)
}

// isTerminal reports whether v is a terminal file.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// shieldReader hides a terminal behind a pipe, so that the program reads
// the pipe and never holds the terminal itself. The copy from the terminal
// is nsbox's own and is left behind when the program ends: a copy made by
// os/exec would hold Wait until the next key press. Other readers are
// returned as they are; the caller calls done when the program ended.
func shieldReader(r io.Reader) (io.Reader, func(), error) {
	if !isTerminal(r) {
		return r, func() {}, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	go func() {
		_, _ = io.Copy(pw, r)
		pw.Close()
	}()
	return pr, func() { pr.Close() }, nil
}

// shieldWriter hides a terminal behind a pipe: exec then copies through a
// pipe instead of handing the terminal to the program.
func shieldWriter(w io.Writer) io.Writer {
	if isTerminal(w) {
		return struct{ io.Writer }{w}
	}
	return w
}
