package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/machine/argv"
	"github.com/nsbox/nsbox/remote"
)

// hostFlag is -H: the command runs on that host through ssh (remote.go).
// It is read before urfave/cli runs (splitHosts); it is declared for
// --help, the man page and completion.
var hostFlag = &cli.StringSliceFlag{Name: "host", Aliases: []string{"H"},
	Usage: "run the command on `[USER@]HOST[:PORT]` through ssh (or NSBOX_HOST; list takes several)"}

// Metadata keys of a command that runs on other hosts and does part of
// its work here (list of several hosts, cp of host paths).
const (
	metaHosts   = "nsbox.remote.hosts"
	metaGlobals = "nsbox.remote.globals"
)

// splitHosts takes -H and --host out of the global flags of hoisted args
// (the command's own flags and what follows "--" are not touched) and
// returns their values and the rest.
func splitHosts(app *cli.App, args []string) (hosts []string, rest []string, err error) {
	ci := argv.CommandIndex(app, args)
	rest = []string{args[0]}
	for i := 1; i < ci && i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-H" || a == "--host":
			if i+1 >= len(args) {
				return nil, nil, usagef("flag %s needs a value", a)
			}
			hosts = append(hosts, args[i+1])
			i++
		case strings.HasPrefix(a, "-H=") || strings.HasPrefix(a, "--host="):
			_, v, _ := strings.Cut(a, "=")
			hosts = append(hosts, v)
		default:
			rest = append(rest, a)
		}
	}
	if ci < len(args) {
		rest = append(rest, args[ci:]...)
	}
	return hosts, rest, nil
}

// remoteSetup is what every remote command needs: the hosts, ssh's
// command and the remote program.
type remoteSetup struct {
	hosts   []remote.Host
	ssh     []string
	program string
	debug   bool
}

func parseRemote(values []string, globals []string) (*remoteSetup, error) {
	s := &remoteSetup{}
	for _, v := range values {
		h, err := remote.ParseHost(v)
		if err != nil {
			return nil, usagef("-H: %v", err)
		}
		s.hosts = append(s.hosts, h)
	}
	ssh, err := remote.SSHCommand(os.Getenv("NSBOX_SSH"))
	if err != nil {
		return nil, usagef("%v", err)
	}
	s.ssh = ssh
	s.program = os.Getenv("NSBOX_REMOTE_PROGRAM")
	if s.program == "" {
		s.program = "nsbox"
	}
	for _, g := range globals {
		if g == "--debug" {
			s.debug = true
		}
	}
	return s, nil
}

func (s *remoteSetup) spec(h remote.Host, tty remote.TTY, args []string) remote.Spec {
	sp := remote.Spec{SSH: s.ssh, Host: h, TTY: tty, Program: s.program, Args: args,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	if s.debug {
		sp.Debug = func(a []string) {
			q := make([]string, len(a))
			for i, w := range a {
				q[i] = remote.Quote(w)
			}
			fmt.Fprintln(os.Stderr, "+ "+strings.Join(q, " "))
		}
	}
	return sp
}

// runRemote is nsbox -H: args are hoisted, -H taken out. Most commands
// are passed whole to the remote nsbox, which parses them itself (so a
// newer remote's flags work through an older nsbox here); list of
// several hosts and cp with a path on this host run here, in the app,
// and use the hosts from its Metadata.
func runRemote(ctx context.Context, app *cli.App, values, args []string) int {
	ci := argv.CommandIndex(app, args)
	globals := append([]string{}, args[1:ci]...)
	s, err := parseRemote(values, globals)
	if err != nil {
		return report(err)
	}
	cmd := ""
	if ci < len(args) {
		cmd = args[ci]
	}
	if len(s.hosts) > 1 && cmd != "list" && cmd != "ls" {
		return report(usagef("only list takes several hosts (-H %s -H %s ...); %s runs on one", s.hosts[0], s.hosts[1], dash(cmd)))
	}
	if (cmd == "list" || cmd == "ls") && len(s.hosts) > 1 || cmd == "cp" {
		app.Metadata[metaHosts] = s
		app.Metadata[metaGlobals] = globals
		return report(app.RunContext(ctx, args))
	}
	sp := s.spec(s.hosts[0], remoteTTY(cmd, args[ci:]), args[1:])
	if !readsStdin[cmd] {
		// As ssh -n: a "while read h; do nsbox -H $h list; done"
		// keeps its input.
		sp.Stdin = nil
	}
	res, err := remote.Run(ctx, sp)
	if err != nil {
		return report(err)
	}
	code, err := remote.Explain(ctx, sp, res, buildVersion())
	if err != nil {
		reportTo(os.Stderr, err)
	}
	return code
}

// readsStdin are the commands that may read their standard input (a
// command's, a tar stream, an image, an editor's answers); the others get
// none through -H, as with ssh -n.
var readsStdin = map[string]bool{"shell": true, "run": true, "cp": true, "import": true, "create": true, "edit": true, "boot": true, "top": true}

// remoteTTY chooses ssh -t or -T for a command: a remote terminal for
// what is interactive (shell, run, edit, top, boot --console) when this
// side's stdin is a terminal; shell -t forces one, shell -T refuses one.
func remoteTTY(cmd string, words []string) remote.TTY {
	has := func(names ...string) bool {
		for _, w := range words {
			if w == "--" {
				return false
			}
			for _, n := range names {
				if w == n {
					return true
				}
			}
		}
		return false
	}
	// As a local shell: a terminal when stdin is one (ssh -t asks for
	// one only then).
	interactive := term.IsTerminal(int(os.Stdin.Fd()))
	switch cmd {
	case "shell", "run":
		switch {
		case has("-T", "--no-tty"):
			return remote.NoTTY
		case has("-t", "--tty"):
			return remote.ForceTTY
		}
	case "edit", "top":
	case "boot":
		if !has("--console") {
			return remote.NoTTY
		}
	default:
		return remote.NoTTY
	}
	if interactive {
		return remote.WantTTY
	}
	return remote.NoTTY
}

// remoteOf returns the remote setup when the command runs on other hosts.
func remoteOf(c *cli.Context) (*remoteSetup, []string) {
	s, _ := c.App.Metadata[metaHosts].(*remoteSetup)
	g, _ := c.App.Metadata[metaGlobals].([]string)
	return s, g
}

// serveRemote is the remote side: nsbox __remote VERSION ARGS..., run by
// ssh for an nsbox -H elsewhere. It writes its header first, refuses a
// version it does not speak (exit 126, the header says what it speaks),
// and runs the command as if typed here, with its exit status. When the
// connection goes (ssh's end of its output closes, or its terminal hangs
// up) it stops the command as SIGHUP would.
func serveRemote(args []string) int {
	fmt.Fprint(os.Stderr, remote.FormatHeader(remote.Header{Min: remote.MinProtocol, Max: remote.Protocol, Version: buildVersion()}))
	if len(args) < 3 {
		return remote.ExitProtocol
	}
	v, err := strconv.Atoi(args[2])
	if err != nil || v < remote.MinProtocol || v > remote.Protocol {
		return remote.ExitProtocol
	}
	// An NSBOX_HOST of this host's would send the command on again.
	os.Unsetenv("NSBOX_HOST")
	// A write to ssh's end once it is gone fails with EPIPE, which the
	// command handles (cleaning up as it does on any error), instead of
	// Go's exit on SIGPIPE for stdout and stderr. A handler, not
	// SIG_IGN: the programs it starts keep SIGPIPE's default.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	go watchHangup()
	return runCommandLine(append([]string{args[0]}, args[3:]...), false)
}

// watchHangup sends this process SIGHUP when its standard output or
// error is gone: without a terminal, sshd does not signal a command whose
// client went away; the pipe or socket it writes to reports the hang-up.
func watchHangup() {
	fds := []unix.PollFd{{Fd: 1}, {Fd: 2}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, f := range fds {
			if f.Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
				return
			}
			if f.Revents&unix.POLLNVAL != 0 {
				return
			}
		}
	}
}

// maxListAnswer caps what one host's list may answer (its JSON).
const maxListAnswer = 64 << 20

// cappedBuffer keeps up to max bytes and says when more came.
type cappedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		b.over = true
		return 0, fmt.Errorf("more than %d bytes", b.max)
	}
	return b.buf.Write(p)
}

// listHosts is list of several hosts: each host's list -o json, asked in
// parallel, in one table with a HOST column (a "host" field in JSON).
// A host that fails is reported on stderr and the others are listed;
// the exit status is then 1.
func listHosts(c *cli.Context, s *remoteSetup, globals []string) error {
	args := append(append([]string{}, globals...), "list", "--output", "json")
	if c.Bool("usage") {
		args = append(args, "--usage")
	}
	type answer struct {
		out    cappedBuffer
		stderr cappedBuffer
		err    error
	}
	answers := make([]*answer, len(s.hosts))
	var wg sync.WaitGroup
	for i, h := range s.hosts {
		a := &answer{out: cappedBuffer{max: maxListAnswer}, stderr: cappedBuffer{max: 1 << 20}}
		answers[i] = a
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp := s.spec(h, remote.NoTTY, args)
			sp.Stdin, sp.Stdout, sp.Stderr = nil, &a.out, &a.stderr
			res, err := remote.Run(c.Context, sp)
			if err != nil {
				a.err = err
				return
			}
			code, err := remote.Explain(c.Context, sp, res, buildVersion())
			switch {
			case a.out.over:
				a.err = fmt.Errorf("%s: list answered more than %d bytes", h, maxListAnswer)
			case err != nil:
				a.err = err
			case code != 0:
				a.err = fmt.Errorf("%s: list failed (exit status %d)", h, code)
			}
		}()
	}
	wg.Wait()
	var infos []machine.Info
	var raws []json.RawMessage
	var hosts []string
	failed := 0
	for i, a := range answers {
		h := s.hosts[i].String()
		for _, l := range strings.Split(strings.TrimRight(a.stderr.buf.String(), "\n"), "\n") {
			if l = strings.TrimSuffix(l, "\r"); l != "" {
				fmt.Fprintf(os.Stderr, "%s: %s\n", machine.Printable(h), machine.Printable(l))
			}
		}
		var hostInfos []machine.Info
		var hostRaws []json.RawMessage
		if a.err == nil {
			if err := json.Unmarshal(a.out.buf.Bytes(), &hostRaws); err != nil {
				a.err = fmt.Errorf("%s: list did not answer JSON: %v", h, err)
			} else if err := json.Unmarshal(a.out.buf.Bytes(), &hostInfos); err != nil {
				a.err = fmt.Errorf("%s: list answered JSON nsbox does not read: %v", h, err)
			}
		}
		if a.err != nil {
			failed++
			fmt.Fprintf(os.Stderr, "nsbox: %s\n", machine.Printable(a.err.Error()))
			continue
		}
		for j, r := range hostRaws {
			r = bytes.TrimSpace(r)
			if len(r) < 2 || r[0] != '{' {
				failed++
				fmt.Fprintf(os.Stderr, "nsbox: %s: list answered something other than machines\n", machine.Printable(h))
				break
			}
			name, _ := json.Marshal(h)
			sep := ","
			if bytes.Equal(bytes.TrimSpace(r[1:]), []byte("}")) {
				sep = ""
			}
			raws = append(raws, json.RawMessage(`{"host":`+string(name)+sep+string(r[1:])))
			infos = append(infos, hostInfos[j])
			hosts = append(hosts, h)
		}
	}
	if c.String("output") == "json" {
		if raws == nil {
			raws = []json.RawMessage{}
		}
		if err := writeJSON(os.Stdout, raws); err != nil {
			return err
		}
	} else {
		if hosts == nil {
			hosts = []string{}
		}
		writeTable(os.Stdout, infos, hosts, !c.Bool("no-legend"), c.Bool("usage"))
	}
	if failed > 0 {
		return exitCode(exitError)
	}
	return nil
}

// copyRemote is cp on another host. Machine paths and streams are the
// remote nsbox's; a path on this host becomes a tar stream made or
// unpacked here and passed through ssh: "nsbox cp ./site web:/srv" is
// this side's tar of ./site into the remote "nsbox cp - web:/srv", and
// "nsbox cp web:/etc ./etc" the remote "nsbox cp web:/etc -" unpacked
// here. The streams are pipes ssh holds itself: a tar that fails here
// cuts the connection, and never ends the stream as if it were whole.
func copyRemote(c *cli.Context, s *remoteSetup, globals []string, src, dst machine.CopyEnd) error {
	h := s.hosts[0]
	args := append(append([]string{}, globals...), "cp")
	if o := c.String("owner"); o != "" {
		args = append(args, "--owner", o)
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	var (
		sp    remote.Spec
		local = make(chan error, 1)
		ours  *os.File // this side's end, closed once ssh has ended
		ended atomic.Bool
	)
	switch {
	case src.Machine == "" && !src.Stream:
		if _, err := os.Lstat(src.Path); err != nil {
			return fmt.Errorf("cp: cannot stat %s: %s", src.Path, errnoText(err))
		}
		sp = s.spec(h, remote.NoTTY, append(args, "-", dst.String()))
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		sp.Stdin, ours = r, w
		go func() {
			_, err := machine.WriteHostTar(ctx, src.Path, w)
			if err != nil {
				cancel()
			} else {
				w.Close()
			}
			local <- err
		}()
	case dst.Machine == "" && !dst.Stream:
		sp = s.spec(h, remote.NoTTY, append(args, src.String(), "-"))
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		sp.Stdout, ours = w, w
		go func() {
			res, err := machine.ExtractHostTar(ctx, r, dst.Path)
			// What the remote still writes goes nowhere: ssh ends.
			r.Close()
			if err != nil && ended.Load() {
				// The stream ended with ssh: the remote's failure
				// (reported there) cut it short.
				err = errConsequence{err}
			}
			if err == nil && res.Stripped > 0 {
				logrus.Warnf("cp: %d setuid, setgid or file capability bits of what came from %s were dropped on the way to the host", res.Stripped, src.Machine)
			}
			local <- err
		}()
	default:
		sp = s.spec(h, remote.NoTTY, append(args, src.String(), dst.String()))
		local <- nil
	}
	res, err := remote.Run(ctx, sp)
	ended.Store(true)
	if ours != nil {
		ours.Close()
	}
	lerr := <-local
	if err != nil {
		return err
	}
	code, rerr := remote.Explain(ctx, sp, res, buildVersion())
	var cons errConsequence
	switch {
	case lerr != nil && !errors.Is(lerr, syscall.EPIPE) && !errors.As(lerr, &cons):
		// The failure here ended the copy (the remote's end is its
		// consequence); a broken pipe, or a stream cut short, is the
		// remote's ending first.
		return fmt.Errorf("cp: %w", lerr)
	case rerr != nil:
		return rerr
	case code != 0:
		return exitCode(code)
	case lerr != nil:
		return fmt.Errorf("cp: %w", lerr)
	}
	return nil
}

// errConsequence is a failure here that followed the remote's.
type errConsequence struct{ error }

func (e errConsequence) Unwrap() error { return e.error }

// errnoText is a system error's text as cp writes it: "No such file or
// directory".
func errnoText(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			break
		}
		err = u
	}
	t := err.Error()
	if t != "" {
		t = strings.ToUpper(t[:1]) + t[1:]
	}
	return t
}
