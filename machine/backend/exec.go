package backend

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/creack/pty"
	"github.com/nsbox/nsbox/machine/host"
)

// RunExec runs c with e's streams, on a pseudo terminal of its own when
// e.TTY, and returns its exit status.
func RunExec(ctx context.Context, r host.Runner, c *host.Cmd, e ExecSpec) (int, error) {
	if e.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			return 0, err
		}
		return RunOnTerminal(ctx, r, c, master, slave)
	}
	stdin, done, err := ShieldReader(e.Stdin)
	if err != nil {
		return 0, err
	}
	defer done()
	c.Stdin, c.Stdout, c.Stderr = stdin, ShieldWriter(e.Stdout), ShieldWriter(e.Stderr)
	return StatusOf(r.Run(ctx, c))
}

// RunOnTerminal runs c with slave as its controlling terminal, in a
// session of its own, proxies master to the caller's terminal and returns
// c's exit status. It closes both sides.
func RunOnTerminal(ctx context.Context, r host.Runner, c *host.Cmd, master, slave *os.File) (int, error) {
	defer master.Close()
	c.TTY = slave
	done := make(chan struct{})
	go func() { AttachTerminal(master); close(done) }()
	err := r.Run(ctx, c)
	slave.Close()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return StatusOf(err)
}

func StatusOf(err error) (int, error) {
	var ee *host.ExitError
	if errors.As(err, &ee) {
		return ee.Status, nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// LastLines returns the last n lines of s that are not blank, as they
// may be printed on a terminal: a machine writes its console and journal,
// so escape sequences are dropped and other control characters shown as
// escapes (stripANSI).
func LastLines(s string, n int) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(stripANSI(strings.TrimRight(l, "\r"))); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// stripANSI drops terminal escape sequences from one line of console
// output and makes every other control character visible (\x1b, \r,
// \u009b): the line is the machine's, and it is printed to a terminal.
func stripANSI(s string) string {
	return Printable(StripTerminal(s))
}
