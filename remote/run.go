package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Exit statuses nsbox -H gives beside the remote command's own.
const (
	// ExitConnect: ssh could not connect or authenticate (ssh's own 255).
	ExitConnect = 255
	// ExitMissing: there is no nsbox on the host (the remote shell's 127).
	ExitMissing = 127
	// ExitProtocol: the host's nsbox does not speak this protocol version.
	ExitProtocol = 126
)

// Error is a failure of the remote connection itself, which nsbox reports
// in a line of its own, with its exit status.
type Error struct {
	Host   Host
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Spec is one nsbox command run on a host.
type Spec struct {
	SSH     []string // the ssh program and its own options
	Host    Host
	TTY     TTY
	Program string // nsbox's name or path on the host
	Args    []string
	// Version is the protocol version asked for: CommandProtocol when 0.
	Version int
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	// Debug, when set, is told ssh's command line.
	Debug func(argv []string)
}

// Result is how a remote command ended.
type Result struct {
	// Status is ssh's exit status: the remote command's own, or 255.
	Status int
	// Header is the remote nsbox's header; Seen says whether one came.
	Header Header
	Seen   bool
	// Asked is the protocol version that was asked for.
	Asked int
}

func (s Spec) version() int {
	if s.Version == 0 {
		return CommandProtocol
	}
	return s.Version
}

func (r Result) asked() int {
	if r.Asked == 0 {
		return CommandProtocol
	}
	return r.Asked
}

// Run runs the command through ssh and waits for it. The header the
// remote nsbox writes first is taken out of its standard error (or, with
// a remote terminal, out of its output, where its standard error goes
// too); everything else passes through. When ctx ends, ssh is sent
// SIGTERM: the connection closes, and the remote nsbox, which watches for
// that, stops its work.
func Run(ctx context.Context, s Spec) (Result, error) {
	line, err := CommandLine(s.Program, s.version(), s.Args)
	if err != nil {
		return Result{}, err
	}
	argv := SSHArgs(s.SSH, s.Host, s.TTY, line)
	if s.Debug != nil {
		s.Debug(argv)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Stdin = s.Stdin
	var f *Filter
	if s.TTY == NoTTY {
		f = NewFilter(s.Stderr)
		cmd.Stdout, cmd.Stderr = s.Stdout, f
	} else {
		f = NewFilter(s.Stdout)
		cmd.Stdout, cmd.Stderr = f, s.Stderr
	}
	err = cmd.Run()
	_ = f.Flush()
	res := Result{Asked: s.version()}
	res.Header, res.Seen = f.Header()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Status = ee.ExitCode()
		if res.Status < 0 {
			// ssh killed by a signal: the connection is gone.
			res.Status = ExitConnect
		}
	case errors.Is(err, exec.ErrNotFound):
		return res, fmt.Errorf("%s: not found (install openssh-client, or set NSBOX_SSH)", argv[0])
	default:
		return res, fmt.Errorf("ssh %s: %w", s.Host, err)
	}
	return res, nil
}

// Outcome turns a Result into nsbox's exit status, and an *Error to
// report when the status is not the remote command's own. local is this
// nsbox's version text, for messages.
func Outcome(h Host, r Result, local string) (int, error) {
	asked := r.asked()
	if r.Seen {
		if r.Header.Speaks(asked) {
			return r.Status, nil
		}
		fix := "upgrade nsbox on " + h.String()
		if r.Header.Min > asked {
			fix = "upgrade nsbox here"
		}
		return ExitProtocol, &Error{Host: h, Status: ExitProtocol, Msg: fmt.Sprintf(
			"%s: nsbox there speaks remote protocol %s (nsbox %s), this one speaks %d (nsbox %s): %s",
			h, span(r.Header.Min, r.Header.Max), r.Header.Version, asked, local, fix)}
	}
	switch r.Status {
	case ExitConnect:
		return ExitConnect, &Error{Host: h, Status: ExitConnect, Msg: fmt.Sprintf(
			"%s: ssh could not connect or log in (its message is above)", h)}
	case ExitMissing:
		return ExitMissing, &Error{Host: h, Status: ExitMissing, Msg: fmt.Sprintf(
			"nsbox is not installed on %s (install it there, or set NSBOX_REMOTE_PROGRAM to its path there)", h)}
	}
	return ExitProtocol, &Error{Host: h, Status: ExitProtocol, Msg: fmt.Sprintf(
		"%s: nsbox there did not answer in the remote protocol (exit status %d; an nsbox without -H support, older than this one (nsbox %s, protocol %d)? upgrade nsbox on %s)",
		h, r.Status, local, asked, h)}
}

// Explain is Outcome, and where a host answered without the protocol's
// header (an nsbox from before it, say), it asks that host's nsbox for
// its version (nsbox --version, a second connection made only then) to
// name it in the message.
func Explain(ctx context.Context, s Spec, r Result, local string) (int, error) {
	code, err := Outcome(s.Host, r, local)
	var e *Error
	if r.Seen || !errors.As(err, &e) || e.Status != ExitProtocol {
		return code, err
	}
	if v := RemoteVersion(ctx, s); v != "" {
		e.Msg = fmt.Sprintf("%s: nsbox there (%s) does not speak the remote protocol; this one speaks %d (nsbox %s): upgrade nsbox on %s",
			s.Host, v, r.asked(), local, s.Host)
	}
	return code, err
}

// RemoteVersion is the first line of "nsbox --version" on the host, or
// "" when it does not answer so within 30 seconds.
func RemoteVersion(ctx context.Context, s Spec) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	argv := SSHArgs(s.SSH, s.Host, NoTTY, Quote(s.Program)+" "+Quote("--version"))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out cappedWriter
	out.max = 4096
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out.b), "\n")
	if !strings.HasPrefix(line, "nsbox ") {
		return ""
	}
	return line
}

// cappedWriter keeps the first max bytes written to it.
type cappedWriter struct {
	b   []byte
	max int
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func span(lo, hi int) string {
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d to %d", lo, hi)
}
