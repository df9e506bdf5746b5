// Command nsbox manages systemd-nspawn machines: create them from a
// release, boot them as services, open shells in them, list them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/machine/argv"
	"github.com/nsbox/nsbox/remote"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Exit statuses (documented in the README; those that say why a command
// was refused are in exitstatus.go).
const (
	exitError       = 1
	exitUsage       = 2
	exitHangup      = 129
	exitInterrupted = 130
	exitTerminated  = 143
)

// usageError marks a mistake in the command line itself.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitCode is an error that carries a command's own exit status (shell).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newApp() *cli.App {
	// -v is --verbose here, as in most tools; the version has no short flag.
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version and the commit nsbox was built from"}
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, c.App.Name, c.App.Version) }
	return &cli.App{
		Name:    "nsbox",
		Usage:   "manage systemd-nspawn machines with less typing",
		Version: buildVersion(),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root-dir", Value: "/srv", EnvVars: []string{"NSBOX_ROOT"}, Usage: "directory that holds machine roots"},
			&cli.StringFlag{Name: "backend", Value: "auto", EnvVars: []string{"NSBOX_BACKEND"}, Usage: "auto, machined or direct"},
			&cli.StringFlag{Name: "cache-dir", Value: "/var/cache/nsbox", EnvVars: []string{"NSBOX_CACHE_DIR"}, Usage: "where bases and downloaded packages are kept (on btrfs with the root directory: machines are snapshots)"},
			&cli.StringFlag{Name: "address-pool", Value: "10.89.0.0/16", EnvVars: []string{"NSBOX_ADDRESS_POOL"}, Usage: "IPv4 prefix machine veth links are taken from"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "say what is being done"},
			&cli.BoolFlag{Name: "debug", Usage: "log every command run and its output"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only results and errors"},
			hostFlag,
		},
		Before:                    setupLogging,
		After:                     closeManagers,
		Metadata:                  map[string]any{},
		Commands:                  commands(),
		EnableBashCompletion:      true,
		OnUsageError:              func(_ *cli.Context, err error, _ bool) error { return usageError{err.Error()} },
		CommandNotFound:           nil,
		ExitErrHandler:            func(*cli.Context, error) {},
		UseShortOptionHandling:    true,
		Suggest:                   true,
		DisableSliceFlagSeparator: true,
	}
}

func commands() []*cli.Command {
	cmds := []*cli.Command{
		createCommand(), bootCommand(), shellCommand(), listCommand(), statusCommand(),
		stopCommand(), rebootCommand(), terminateCommand(), killCommand(), removeCommand(),
		cloneCommand(), renameCommand(), exportCommand(), pushCommand(), importCommand(), readOnlyCommand(), snapshotCommand(),
		adoptCommand(), enableCommand(), disableCommand(), unitCommand(), setCommand(), logsCommand(), eventsCommand(), topCommand(),
		bindCommand(), cpCommand(), diffCommand(), catCommand(), editCommand(), completionCommand(), manCommand(), runCommand(), runHelperCommand(),
		cacheCommand(), pruneCommand(), sendCommand(), receiveCommand(), doctorCommand(), superviseCommand(), networkUpCommand(), portsCommand(), storageCommand(), socketProxyCommand(),
	}
	quietUsage(cmds)
	for _, c := range cmds {
		switch c.Name {
		case "create", "completion", "man", "doctor", "list", "cache", "events", "cp", "prune", "adopt":
		default:
			c.BashComplete = completeMachines
		}
	}
	return cmds
}

// quietUsage makes a bad flag one line on stderr and exit status 2, as
// every other error, instead of a page of help on stdout.
func quietUsage(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err.Error()} }
		quietUsage(c.Subcommands)
	}
}

func setupLogging(c *cli.Context) error {
	logrus.SetOutput(os.Stderr)
	logrus.SetFormatter(lineFormatter{timestamps: c.Bool("debug") && !term.IsTerminal(int(os.Stderr.Fd()))})
	switch {
	case c.Bool("debug"):
		logrus.SetLevel(logrus.DebugLevel)
	case c.Bool("verbose"):
		logrus.SetLevel(logrus.InfoLevel)
	default:
		logrus.SetLevel(logrus.WarnLevel)
	}
	return nil
}

// lineFormatter writes log entries in nsbox's own one-line style, as its
// errors are: "nsbox: warning: MSG" for a warning ("nsbox: error: MSG"
// for a logged error), info and debug lines as they are, each field as
// " key=value". Under --debug with stderr not a terminal, lines start with
// the time, for logs read later. A message may quote a machine (a
// program's output, a hostname): its control characters are escaped.
type lineFormatter struct{ timestamps bool }

// Format implements logrus.Formatter.
func (f lineFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b strings.Builder
	if f.timestamps {
		b.WriteString(e.Time.Format(time.RFC3339Nano) + " ")
	}
	switch {
	case e.Level <= logrus.ErrorLevel:
		b.WriteString("nsbox: error: ")
	case e.Level == logrus.WarnLevel:
		b.WriteString("nsbox: warning: ")
	}
	b.WriteString(machine.PrintableText(strings.TrimRight(e.Message, "\n")))
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", machine.Printable(k), machine.Printable(fmt.Sprint(e.Data[k])))
	}
	b.WriteByte('\n')
	return []byte(b.String()), nil
}

// manager opens the machine manager for the global flags.
func manager(c *cli.Context) (*machine.Manager, error) {
	root := c.String("root-dir")
	if !filepath.IsAbs(root) {
		return nil, usagef("--root-dir %q must be an absolute path", root)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("root directory %s does not exist (create it, or pass --root-dir)", root)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("root directory %s is not a directory", root)
	}
	switch b := c.String("backend"); b {
	case "auto", "machined", "direct":
	default:
		return nil, usagef("--backend %q: use auto, machined or direct", b)
	}
	paths := machine.DefaultPaths()
	paths.RootDir = filepath.Clean(root)
	if cache := c.String("cache-dir"); cache != "" {
		if !filepath.IsAbs(cache) {
			return nil, usagef("--cache-dir %q must be an absolute path", cache)
		}
		paths.CacheDir = filepath.Clean(cache)
	}
	m, err := machine.Open(c.Context, machine.Config{
		Paths:   paths,
		Backend: c.String("backend"),
		// Resolved when a unit or supervisor needs it, not on every command.
		Self:       sync.OnceValues(func() (string, error) { return machine.TrustedExecutable(paths.StateDir) }),
		Supervisor: []string{"--root-dir", paths.RootDir, "--cache-dir", paths.CacheDir, superviseName},
		Pool:       c.String("address-pool"),
	})
	if err != nil {
		return nil, err
	}
	// Closed when the command ends (closeManagers, the app's After).
	c.App.Metadata[openManagers] = append(managers(c), m)
	return m, nil
}

// openManagers is where manager keeps what it opened, in the app's
// Metadata, so that their connections close when the command ends.
const openManagers = "nsbox.managers"

func managers(c *cli.Context) []*machine.Manager {
	ms, _ := c.App.Metadata[openManagers].([]*machine.Manager)
	return ms
}

// closeManagers closes the system bus connection of every manager the
// command opened.
func closeManagers(c *cli.Context) error {
	for _, m := range managers(c) {
		m.Close()
	}
	c.App.Metadata[openManagers] = nil
	return nil
}

// nameArg returns the single machine name argument of a command.
func nameArg(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", usagef("%s takes one machine name (see: nsbox %s --help)", c.Command.Name, c.Command.Name)
	}
	return c.Args().First(), nil
}

// quiet reports whether -q was given.
func quiet(c *cli.Context) bool { return c.Bool("quiet") }

func main() {
	if len(os.Args) > 1 && os.Args[1] == machine.AppExecCommand {
		// In an app machine, as its payload: nothing of the rest of
		// nsbox runs, and the files the program is given stay open.
		os.Exit(machine.AppExec(os.Args[2:]))
	}
	keepInheritedFiles()
	os.Exit(run(os.Args))
}

// keepInheritedFiles marks every file nsbox was started with, beyond
// stdin, stdout and stderr, close-on-exec: what nsbox starts (nspawn, the
// supervisor of a machine that outlives the command, a machine's command)
// gets none of its caller's files. Go opens its own so; an inherited one
// (a lock flock(1) holds, a terminal, a socket) would otherwise live on in
// a machine's supervisor until the machine stops. nsbox's helpers read the
// files they are given themselves (and a socket's service the sockets
// systemd passes it), which close-on-exec leaves open.
func keepInheritedFiles() {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	// Before Linux 5.11: one by one.
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range fds {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// run executes the command line and returns the exit status: here, on
// another host (-H, NSBOX_HOST), or as the remote side of one
// (nsbox __remote).
func run(args []string) int {
	if len(args) > 1 && args[1] == remote.Command {
		return serveRemote(args)
	}
	return runCommandLine(args, true)
}

// runCommandLine executes the command line and returns the exit status. The
// first SIGINT or SIGTERM (and, on the remote side of -H, SIGHUP) cancels
// the context so the running operation cleans up what it made; a second
// one exits at once. With allowRemote false (the remote side itself), -H
// is refused.
func runCommandLine(args []string, allowRemote bool) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if !allowRemote {
		// The remote side of -H: its connection gone is a hang-up
		// (watchHangup, or its terminal's), which stops the work as
		// Ctrl-C would here.
		signal.Notify(sigs, syscall.SIGHUP)
	}
	// The exit status of the first signal; read after the context ends.
	var interrupted atomic.Int32
	go func() {
		first := <-sigs
		switch first {
		case syscall.SIGTERM:
			interrupted.Store(exitTerminated)
		case syscall.SIGHUP:
			interrupted.Store(exitHangup)
		default:
			interrupted.Store(exitInterrupted)
		}
		cancel()
		second := <-sigs
		fmt.Fprintln(os.Stderr, "nsbox: interrupted again; exiting now (a temporary .#NAME tree or mount may be left; the next create sweeps it)")
		switch second {
		case syscall.SIGTERM:
			os.Exit(exitTerminated)
		case syscall.SIGHUP:
			os.Exit(exitHangup)
		}
		os.Exit(exitInterrupted)
	}()
	app := newApp()
	if flag, ok := argv.CompletingValue(app, args); ok {
		completeFlagValue(flag)
		return 0
	}
	if name, unknown := argv.UnknownCommand(app, args); unknown {
		return report(usagef("unknown command %q (see: nsbox --help)", name))
	}
	// Flags may follow the machine name; one without its value is a usage
	// error.
	hoisted, err := argv.Hoist(app, args)
	if err != nil {
		return report(usagef("%v", err))
	}
	values, rest, err := splitHosts(app, hoisted)
	if err != nil {
		return report(err)
	}
	if len(values) == 0 && allowRemote {
		if env := os.Getenv("NSBOX_HOST"); env != "" {
			hosts, err := remote.ParseHosts(env)
			if err != nil {
				return report(usagef("NSBOX_HOST: %v", err))
			}
			for _, h := range hosts {
				values = append(values, h.String())
			}
		}
	}
	if len(values) > 0 {
		if !allowRemote {
			return report(usagef("-H is not taken by nsbox run through -H"))
		}
		code := runRemote(ctx, app, values, rest)
		if c := interrupted.Load(); ctx.Err() != nil && c != 0 {
			fmt.Fprintln(os.Stderr, "nsbox: interrupted")
			return int(c)
		}
		return code
	}
	err = app.RunContext(ctx, rest)
	if code := interrupted.Load(); ctx.Err() != nil && code != 0 {
		fmt.Fprintln(os.Stderr, "nsbox: interrupted")
		return int(code)
	}
	return report(err)
}

// report prints err as one line and maps it to an exit status.
func report(err error) int { return reportTo(os.Stderr, err) }

// reportTo is report writing to w. The message may carry text a machine
// controls (its log lines, its state, a program's stderr), so it is made
// printable: control characters, newlines among them, become visible
// escapes, and the error stays one line that cannot steer the terminal.
func reportTo(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	var re *remote.Error
	if errors.As(err, &re) {
		fmt.Fprintf(w, "nsbox: %s\n", machine.Printable(re.Msg))
		return re.Status
	}
	// The problems of an edited settings file, one a line, before the
	// summary.
	var se *machine.SettingsError
	if errors.As(err, &se) && !se.Shown {
		for _, l := range se.Lines() {
			fmt.Fprintln(w, machine.Printable(l))
		}
	}
	msg := machine.Printable(strings.TrimSpace(err.Error()))
	fmt.Fprintf(w, "nsbox: %s\n", msg)
	var be *machine.BootError
	if errors.As(err, &be) && len(be.Log) > 0 {
		fmt.Fprintf(w, "last log lines of %s:\n", machine.Printable(be.Name))
		for _, l := range be.Log {
			fmt.Fprintf(w, "  %s\n", machine.Printable(l))
		}
		if hint := be.Hint(); hint != "" {
			fmt.Fprintf(w, "hint: %s\n", machine.Printable(hint))
		}
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return statusOf(err)
}
