package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// ErrToolMissing is returned when a program nsbox needs is not installed.
var ErrToolMissing = errors.New("not installed")

// Cmd is one external program to run. The runner is shared by every package
// that starts programs; it lives here because bootstrap is the lowest layer
// that needs one.
type Cmd struct {
	Path   string
	Args   []string
	Env    []string // appended to the environment; nil keeps it as is
	Stdin  io.Reader
	Stdout io.Writer // nil: kept in the error's tail
	Stderr io.Writer // nil: kept in the error's tail
	// TTY, when set, becomes the program's stdin, stdout, stderr and
	// controlling terminal, in a session of its own.
	TTY *os.File
	// Foreground keeps the program in the caller's process group, for
	// programs that read the caller's terminal themselves.
	Foreground bool
	// Lines, when set, receives every line the program writes to stdout
	// and stderr, for progress reporting.
	Lines func(line string)
	// KillGrace is how long the process group gets between SIGTERM and
	// SIGKILL when the context ends; zero means 5 seconds.
	KillGrace time.Duration
	// ExtraFiles are the program's fds 3, 4, ... (os/exec's ExtraFiles).
	ExtraFiles []*os.File
	// Dir is the program's working directory; empty keeps the caller's.
	Dir string
	// Started, when set, is told the process once it runs, for callers
	// that signal it themselves or wait for what it records.
	Started func(*os.Process)
	// UserNS, when set, starts the program in a user namespace of its
	// own whose ids InsideID.. are host ids HostID.., for Size ids.
	UserNS *IDMap
	// MountNS starts the program in a mount namespace of its own (Go
	// cannot unshare one once it runs threads; a child can be cloned
	// into one). The mounts it makes go with the namespace's last
	// process.
	MountNS bool
	// Pdeathsig is the signal the program gets when the thread that
	// started it ends (PR_SET_PDEATHSIG): zero sends none.
	Pdeathsig syscall.Signal
}

// IDMap maps ids InsideID..InsideID+Size-1 of a user namespace to
// HostID.. on the host.
type IDMap struct {
	InsideID, HostID, Size int
}

// String is the command line as a user would type it.
func (c *Cmd) String() string {
	return strings.Join(append([]string{c.Path}, c.Args...), " ")
}

// Runner runs external programs. Tests replace it, never exec.
type Runner interface {
	Run(ctx context.Context, c *Cmd) error
}

// ExitError reports a program that ran and failed.
type ExitError struct {
	Cmd    string
	Status int    // exit status, or 128+N for a signal
	Tail   string // last lines of its output
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s failed with exit status %d", e.Cmd, e.Status)
	if e.Tail != "" {
		msg += ": " + e.Tail
	}
	return msg
}

// ExecRunner runs programs with os/exec, each in its own process group so a
// cancelled context stops the program and everything it started.
type ExecRunner struct{}

// Run starts c and waits for it. When ctx ends the whole process group gets
// SIGTERM, then SIGKILL after c.KillGrace.
func (ExecRunner) Run(ctx context.Context, c *Cmd) error {
	logrus.Debugf("run: %s", c)
	cmd := exec.Command(c.Path, c.Args...)
	if c.Env != nil {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	cmd.ExtraFiles = c.ExtraFiles
	cmd.Dir = c.Dir
	tail := &tailBuffer{max: 12, lines: c.Lines}
	cmd.Stdout, cmd.Stderr = tail, tail
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	// A copy from a terminal blocks until the next key press; do not let
	// Wait hang on it once the program has exited.
	cmd.WaitDelay = 200 * time.Millisecond
	switch {
	case c.TTY != nil:
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.TTY, c.TTY, c.TTY
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	case c.Foreground:
	default:
		// A session of its own: the program has no controlling terminal, so
		// nothing it runs (a machine's payload above all) can open the
		// caller's through /dev/tty or push input into it (TIOCSTI). Being
		// a session leader also makes it the leader of its process group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if c.UserNS != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		m := []syscall.SysProcIDMap{{ContainerID: c.UserNS.InsideID, HostID: c.UserNS.HostID, Size: c.UserNS.Size}}
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings, cmd.SysProcAttr.GidMappings = m, m
	}
	if c.MountNS || c.Pdeathsig != 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		if c.MountNS {
			cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS
		}
		cmd.SysProcAttr.Pdeathsig = c.Pdeathsig
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s: %w", c.Path, ErrToolMissing)
		}
		return fmt.Errorf("start %s: %w", c.Path, err)
	}
	if c.Started != nil {
		c.Started(cmd.Process)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			grace := c.KillGrace
			if grace == 0 {
				grace = 5 * time.Second
			}
			target := -cmd.Process.Pid
			if c.Foreground {
				target = cmd.Process.Pid
			}
			_ = syscall.Kill(target, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(grace):
			}
			// The group may outlive its leader (debootstrap's children).
			_ = syscall.Kill(target, syscall.SIGKILL)
		case <-done:
		}
	}()
	err := cmd.Wait()
	close(done)
	tail.flush()
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	if ctx.Err() != nil {
		if !c.Foreground {
			// Sweep stragglers of the group even when the leader exited.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		return ctx.Err()
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &ExitError{Cmd: c.Path, Status: ExitStatus(ee.ProcessState), Tail: tail.String()}
		}
		return fmt.Errorf("%s: %w", c.Path, err)
	}
	return nil
}

// ExitStatus turns a finished process's state into a shell-style status:
// the exit code, or 128+N when signal N killed it.
func ExitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// tailBuffer keeps the last max lines written to it and hands each complete
// line to an optional callback.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	partial bytes.Buffer
	kept    []string
	lines   func(string)
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial.Write(p)
	for {
		b := t.partial.Bytes()
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		t.add(string(b[:i]))
		t.partial.Next(i + 1)
	}
	return len(p), nil
}

func (t *tailBuffer) add(line string) {
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return
	}
	logrus.Debug(line)
	if t.lines != nil {
		t.lines(line)
	}
	t.kept = append(t.kept, line)
	if len(t.kept) > t.max {
		t.kept = t.kept[len(t.kept)-t.max:]
	}
}

func (t *tailBuffer) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.partial.Len() > 0 {
		t.add(t.partial.String())
		t.partial.Reset()
	}
}

// String joins the kept lines with " | " so the tail fits one error line.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.kept)
	if n > 4 {
		n = 4
	}
	return strings.Join(t.kept[len(t.kept)-n:], " | ")
}
