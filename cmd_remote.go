package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

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
	go remote.WatchHangup()
	return runCommandLine(append([]string{args[0]}, args[3:]...), false)
}
