package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/machined"
	"github.com/nsbox/nsbox/machine/nsenter"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/network"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Signals systemd in a container understands (systemd(1)).
var (
	sigPoweroff = syscall.Signal(34 + 4) // SIGRTMIN+4
	sigReboot   = syscall.SIGINT
)

// BootRequest is a boot: options given on the command line override the
// remembered ones, and are remembered in turn.
type BootRequest struct {
	Network      string // "" keeps the remembered one
	Binds        []Bind // replaces the remembered binds when BindsSet
	BindsSet     bool
	PrivateUsers *bool
	Timeout      time.Duration
	// Console runs the machine in the foreground on this terminal.
	Console bool
	// Ports replaces the remembered port forwards when PortsSet.
	Ports    []string
	PortsSet bool
	// Limits change the remembered resource limits (only the set ones).
	Limits LimitFlags
	// ForceBinds allows binding / or the root directory itself.
	ForceBinds bool
	// Ephemeral boots the machine over a throwaway upper: what it
	// writes is gone when it stops (see ephemeral.go).
	Ephemeral bool
	// BindUsers replaces the remembered bound host users when
	// BindUsersSet.
	BindUsers    []string
	BindUsersSet bool
	// Init boots the machine's init (--boot); App runs the command of
	// the image it was made from as an app machine (--app); Cmd, when
	// not nil, runs it as an app machine with Cmd in place of the
	// image's Cmd (--cmd). Each is remembered.
	Init, App bool
	Cmd       []string
}

// checkBinds refuses binds whose source is missing, and binds of the
// host's root or of RootDir unless forced. In a machine with private users
// a writable idmapped bind is refused too, unless forced, when host users
// can reach its source: what the machine's root makes there is uid 0 on the
// host, so a setuid program it leaves is root for every one of them.
func (m *Manager) checkBinds(binds []Bind, privateUsers, force bool) error {
	for i, b := range binds {
		fi, err := os.Stat(b.Source)
		if err != nil || !fi.IsDir() && !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: bind source %s does not exist", ErrInvalidOption, b.Source)
		}
		// What is mounted, now and at every later boot, is the path that
		// was checked: only root's links are followed, and no user but
		// root can change what it names.
		real, err := host.StablePath(b.Source)
		if err != nil && !force {
			return fmt.Errorf("%w: bind %s: %v: a host user could point it elsewhere before the machine mounts it "+
				"(bind a path only root controls, or use --force-binds)", ErrInvalidOption, b.Source, err)
		}
		if err == nil {
			binds[i].Source, b.Source = real, real
		}
		if force {
			continue
		}
		if b.Source == "/" || b.Source == filepath.Clean(m.RootDir) {
			return fmt.Errorf("%w: binding %s into a machine hands it the host's files (use --force-binds if you mean it)", ErrInvalidOption, b.Source)
		}
		idmapped := b.Options == "" || strings.Contains(","+b.Options+",", ",idmap,")
		if privateUsers && !b.ReadOnly && idmapped {
			if who := host.ReachableBy(b.Source); who != "" {
				return fmt.Errorf("%w: bind %s: %s, and the machine's root would make files there as host root "+
					"(a setuid program is root for them): bind it read-only, keep it under a directory only root can enter "+
					"(chmod 700 a parent), or use --force-binds", ErrInvalidOption, b.Source, who)
			}
		}
	}
	return nil
}

// BootError is a boot that did not reach a running system; Log holds the
// machine's last log lines.
type BootError struct {
	Name string
	Why  string
	Log  []string
}

// Error is one line: Why may quote the machine (its state, a program's
// stderr), so its control characters are shown as escapes.
func (e *BootError) Error() string {
	return fmt.Sprintf("%s: %s", ErrBootFailed, backend.Printable(e.Why))
}

// Unwrap makes errors.Is(err, ErrBootFailed) hold.
func (e *BootError) Unwrap() error { return ErrBootFailed }

// Hint names a known cause the log lines show, or is empty.
func (e *BootError) Hint() string {
	for _, l := range e.Log {
		// systemd's "Failed to create control group inotify object: Too
		// many open files" and the like: the kernel's per-user limit of
		// inotify instances, which every machine's systemd draws on.
		if strings.Contains(l, "inotify") && strings.Contains(l, "Too many open files") {
			return "the host's inotify instances are used up (fs.inotify.max_user_instances); see: nsbox doctor"
		}
	}
	return ""
}

// Options returns the remembered boot options of name.
func (m *Manager) Options(name string) (BootOptions, error) {
	o, _, err := readSettings(m.settingsPath(name))
	return o, err
}

// validateRoot refuses a tree nspawn cannot boot, before nspawn runs.
func validateRoot(root string) error {
	if _, ok := readOSRelease(root); !ok {
		return fmt.Errorf("%s has no os-release: not an OS tree nspawn can boot", root)
	}
	if fi, err := os.Stat(root + "/usr"); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s has no /usr: not an OS tree nspawn can boot", root)
	}
	return nil
}

// Boot starts machine name and waits until its systemd reports running or
// degraded. On failure or timeout it stops what it started and returns a
// *BootError with the machine's last log lines.
func (m *Manager) Boot(ctx context.Context, name string, req BootRequest) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	// One boot of a machine at a time: a second one, losing the race to
	// nspawn's image lock, would otherwise take the winner for its own
	// failed start and terminate it.
	booting, err := m.bootLock(name)
	if err != nil {
		return err
	}
	defer booting.Unlock()
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return fmt.Errorf("%w: %s (stop it first: nsbox stop %s)", ErrRunning, name, name)
	} else if !errors.Is(err, ErrNotRunning) {
		return err
	}
	// What an ephemeral boot of a host that died left.
	if err := m.sweepEphemeralOf(ctx, name); err != nil {
		return err
	}
	root := m.Dir(name)
	opts, err := m.Options(name)
	if err != nil {
		return err
	}
	if err := m.runMode(name, &opts, req); err != nil {
		return err
	}
	// An overlay machine's tree is mounted further down: its base is
	// what must be bootable. An app machine's command is checked there.
	rec := m.storageOf(name)
	overlay := rec.Kind == storage.Overlay
	if opts.App == nil {
		tree := root
		if overlay {
			if tree, err = m.lowerOf(rec); err != nil {
				return fmt.Errorf("the base of %s: %w", name, err)
			}
		}
		if !hasInit(tree) {
			return fmt.Errorf("%w: %s has no init to boot (no systemd): run a command in it as an app machine with --cmd CMD, or --app for its image's", ErrInvalidOption, name)
		}
		if err := validateRoot(tree); err != nil {
			return err
		}
	}
	if req.Network != "" {
		if err := ValidateNetwork(req.Network); err != nil {
			return err
		}
		opts.Network = req.Network
	}
	if req.BindsSet {
		opts.Binds = req.Binds
	}
	if req.PrivateUsers != nil {
		opts.PrivateUsers = *req.PrivateUsers
	}
	if req.PortsSet {
		opts.Ports = req.Ports
	}
	if req.BindUsersSet {
		opts.BindUsers = uniqueUsers(req.BindUsers)
	}
	if err := m.checkBindUsers(ctx, opts.BindUsers, opts.PrivateUsers); err != nil {
		return err
	}
	if len(opts.Ports) > 0 && opts.Network == "host" {
		return fmt.Errorf("%w: --port needs a network of the machine's own (not --network host)", ErrInvalidOption)
	}
	if err := m.checkBinds(opts.Binds, opts.PrivateUsers, req.ForceBinds); err != nil {
		return err
	}
	// What the last run left of the loopback forwards is not a host
	// process holding the ports.
	m.stopPortsCompanion(ctx, name)
	if err := m.checkPorts(ctx, name, opts.Ports); err != nil {
		return err
	}
	limits, err := m.Limits(name)
	if err != nil {
		return err
	}
	if limits, err = req.Limits.Apply(limits); err != nil {
		return err
	}
	// A hand-started nspawn holds the image lock even where no backend
	// knows the machine.
	lock, err := m.lockImage(root, true)
	if errors.Is(err, ErrBusy) {
		return fmt.Errorf("%w: %s is in use by another systemd-nspawn or nsbox", ErrBusy, root)
	}
	if err != nil {
		return err
	}
	lock.Unlock()
	text, err := opts.SettingsText()
	if err != nil {
		return err
	}
	// nspawn reads the settings file as it starts (--settings=yes), so the
	// options of this boot are written now; they are remembered only if
	// the boot succeeds, and what was there before comes back otherwise.
	restore, err := m.stageSettings(name, text)
	if err != nil {
		return fmt.Errorf("remember options: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			restore()
		}
	}()
	// The tree is mounted now for what is written into it before the
	// start: an ephemeral boot's throwaway upper, or an overlay
	// machine's own (the unit's mount then finds it there). The hook after
	// the stop takes it away; here only what a failed boot mounted.
	var unmount func(context.Context, string) error
	var mountErr error
	switch {
	case req.Ephemeral:
		if !opts.PrivateUsers {
			return fmt.Errorf("%w: an ephemeral boot runs with a user namespace only (leave out --private-users=false)", ErrInvalidOption)
		}
		if overlay {
			// The throwaway upper goes over the machine's own, stored
			// under its range.
			if rec, err = m.alignUpper(ctx, name, true); err != nil {
				return err
			}
		}
		mountErr, unmount = m.MountEphemeral(ctx, name), m.UnmountEphemeral
	case overlay:
		if rec, err = m.alignUpper(ctx, name, opts.PrivateUsers); err != nil {
			return err
		}
		mountErr, unmount = m.MountStorage(ctx, name), m.unmountNow
	}
	if mountErr != nil {
		return mountErr
	}
	if unmount != nil {
		defer func() {
			if !ok || req.Console {
				if err := unmount(context.WithoutCancel(ctx), name); err != nil {
					logrus.Warn(err)
				}
			}
		}()
	}
	// The tree is there now, an overlay machine's too: what nspawn would
	// refuse in it, or the machine would not see, is said in one line.
	if err := checkBindUsersIn(name, root, opts.BindUsers); err != nil {
		return err
	}
	if opts.App != nil {
		if err := checkApp(name, root, opts, m.appExecFor(opts) != nil); err != nil {
			return err
		}
	}
	m.linkImage(name)
	m.unshareMachineID(name)

	link, err := m.prepareNetwork(ctx, name, opts)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if !m.ReadOnly(name) && opts.App == nil {
		m.ensurePersistentJournal(name)
	}
	if er, ok := m.ephemeral(name); ok && req.Ephemeral {
		if err := storage.ShiftPaths(m.ephemeralStack(name, er).Upper, bootWritten, er.UIDBase); err != nil {
			return err
		}
	} else if overlay && !rec.Unshifted {
		// What was just written there by host root is the machine root's.
		if err := storage.ShiftPaths(m.layout(name).Upper(), bootWritten, rec.UIDBase); err != nil {
			return err
		}
	}
	if req.Console {
		// The machine runs in the foreground until it stops: options are
		// kept unless nspawn failed.
		if err := m.console(ctx, m.nspawnConfig(name, opts), limits); err != nil {
			return err
		}
		ok = true
		return m.saveLimits(name, limits)
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	spec, err := m.startSpec(name, opts, limits, timeout)
	if err != nil {
		return err
	}
	// The log lines a failure shows are this boot's, not those of the
	// machine's last run (LogTail reads what is newer).
	logCtx := backend.WithBootStart(ctx, backend.BootClock())
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(why string) error {
		// Read the log before stopping: stopping adds its own lines.
		stopCtx, stopCancel := context.WithTimeout(context.WithoutCancel(logCtx), 30*time.Second)
		defer stopCancel()
		log := m.Backend.LogTail(stopCtx, name, 15)
		// Only a machine this boot started is stopped: one that another
		// program (machinectl start, a hand-run nspawn) started meanwhile
		// under the same name is not ours to end.
		r, err := m.Backend.Get(stopCtx, name)
		started := err == nil && startedBy(r, spec)
		if started {
			m.end(stopCtx, name)
		}
		m.Backend.Cleanup(stopCtx, name)
		if !started && m.Backend.Registered() {
			// A start cut short by the timeout may still bring the machine
			// up after its unit was told to stop: nspawn does not act on
			// SIGTERM before the machine runs. Wait for it, and end it.
			late, cancel := context.WithTimeout(stopCtx, 5*time.Second)
			_ = host.Poll(late, host.Every(100*time.Millisecond), func() (bool, error) {
				r, err := m.Backend.Get(late, name)
				if err != nil || !startedBy(r, spec) {
					return false, nil
				}
				m.end(stopCtx, name)
				m.Backend.Cleanup(stopCtx, name)
				return true, nil
			})
			cancel()
		}
		if len(log) == 0 {
			// A boot that gave up at once (a short --timeout) stops before
			// the machine wrote anything: then nspawn's own lines, as it
			// was stopped, are all there is to show.
			log = m.Backend.LogTail(stopCtx, name, 15)
		}
		if len(log) == 0 && bctx.Err() != nil && ctx.Err() == nil {
			// The README promises a failed boot's last lines: say that
			// there are none rather than leave them out unexplained.
			log = []string{fmt.Sprintf("(none: the machine wrote nothing in %s, before it was stopped)", timeout)}
		}
		return &BootError{Name: name, Why: why, Log: log}
	}
	if err := m.Backend.Start(bctx, spec); err != nil {
		if bctx.Err() != nil && ctx.Err() == nil {
			return fail(fmt.Sprintf("not running after %s", timeout))
		}
		if ctx.Err() != nil {
			_ = fail("interrupted")
			return ctx.Err()
		}
		return fail(err.Error())
	}
	m.finishNetwork(bctx, name, link, opts.App != nil)
	state, err := "running", error(nil)
	if opts.App == nil {
		state, err = m.waitRunning(bctx, name)
	} else {
		err = m.waitApp(bctx, name, m.appExecFor(opts) != nil, opts.App.Argv[0])
	}
	if err != nil {
		if ctx.Err() != nil {
			_ = fail("interrupted")
			return ctx.Err()
		}
		if bctx.Err() != nil {
			return fail(fmt.Sprintf("system state still %q after %s", state, timeout))
		}
		return fail(err.Error())
	}
	ok = true
	if err := m.saveLimits(name, limits); err != nil {
		logrus.Warnf("%s runs, but its limits could not be remembered: %v", name, err)
	}
	m.publishName(ctx, name)
	logrus.Infof("%s is %s", name, state)
	return nil
}

// end stops a machine whose boot failed: terminated, and killed outright
// when that does not end it (nspawn ignores SIGTERM while it starts, and a
// unit told to stop then waits its whole stop timeout).
func (m *Manager) end(ctx context.Context, name string) {
	_ = m.Backend.Terminate(ctx, name)
	if m.waitGone(ctx, name, 3*time.Second) {
		return
	}
	_ = m.Backend.Kill(ctx, name, true, syscall.SIGKILL)
	m.waitGone(ctx, name, 10*time.Second)
}

// bootLock takes name's boot lock under RunDir without waiting.
func (m *Manager) bootLock(name string) (*host.FileLock, error) {
	l, err := host.LockFile(context.Background(), m.bootLockPath(name), true, false)
	if errors.Is(err, host.ErrLocked) {
		return nil, fmt.Errorf("%w: %s is being booted by another nsbox", ErrBusy, name)
	}
	return l, err
}

// bootLockPath is the lock file a boot of name holds (bootLock), made
// ready to be locked: edit takes it too, to install a settings file
// between boots.
func (m *Manager) bootLockPath(name string) string {
	dir := filepath.Join(m.RunDir, "boot")
	_ = os.MkdirAll(dir, 0o755) // an error shows when the lock is taken
	return filepath.Join(dir, name+".lck")
}

// startedBy reports whether running machine r is the one spec started:
// under nsbox's unit on machined, under nsbox's supervisor otherwise.
func startedBy(r backend.Running, spec backend.StartSpec) bool {
	if r.Unit == "" {
		return r.Service == "nsbox"
	}
	return r.Unit == machined.UnitName(spec.Name) || r.Unit == machined.AutostartUnitName(spec.Name)
}

// nspawnConfig is the nspawn configuration of machine name with opts.
func (m *Manager) nspawnConfig(name string, opts BootOptions) NspawnConfig {
	return NspawnConfig{
		Name: name, Root: m.Dir(name), BootOptions: opts, ReadOnly: m.ReadOnly(name),
		Registered: m.Backend.Registered(),
		ResolvConf: network.ResolvConfMode("/etc/resolv.conf", opts.Network != "host"),
		appExec:    m.appExecFor(opts),
	}
}

// startSpec is what the backend needs to run machine name. A machine
// whose veth nsbox configures, or that forwards ports, gets "nsbox
// __network-up NAME" once it is up, so a start by systemd alone
// (autostart) configures it too; without machined the supervisor runs
// the loopback forwards (nsbox __ports NAME) itself.
func (m *Manager) startSpec(name string, opts BootOptions, limits backend.Limits, timeout time.Duration) (backend.StartSpec, error) {
	spec := backend.StartSpec{Name: name, Root: m.Dir(name), Timeout: timeout, Limits: limits,
		Argv: append([]string{"systemd-nspawn"}, NspawnArgs(m.nspawnConfig(name, opts))...)}
	companion, err := m.portsCompanion(name, opts)
	if err != nil {
		return spec, err
	}
	switch {
	case !m.Backend.Registered():
		spec.Companion = companion
	case (m.ownVeth(opts) || companion != nil) && m.Self != nil:
		// The unit's ExecStartPost= starts the companion (in a unit of
		// its own, bound to the machine's) and configures the veth.
		self, err := m.Self()
		if err != nil {
			return spec, err
		}
		spec.PostStart = []string{self, "--root-dir", m.RootDir, "__network-up", name}
	}
	pre, post, err := m.storageHooks(name)
	if err != nil {
		return spec, err
	}
	spec.PreStart, spec.StopPost = pre, post
	return spec, nil
}

// waitRunning polls the container's systemd until it reports running or
// degraded; it returns the last state seen.
func (m *Manager) waitRunning(ctx context.Context, name string) (string, error) {
	last := "unknown"
	// Short waits at first: a machine is usually up within a second.
	err := host.Poll(ctx, pollDelay, func() (bool, error) {
		if _, err := m.Backend.Get(ctx, name); errors.Is(err, ErrNotRunning) {
			return false, fmt.Errorf("machine stopped during boot (last state %q)", last)
		}
		// The machine's root controls what systemctl prints: keep a line.
		out := &cappedBuffer{max: 256}
		if _, err := m.Backend.Exec(ctx, name, backend.ExecSpec{Argv: []string{"systemctl", "is-system-running"}, Stdout: out}); err != nil {
			return false, nil
		}
		if s := strings.TrimSpace(out.String()); s != "" {
			last = s
		}
		switch last {
		case "running", "degraded":
			return true, nil
		case "stopping":
			return false, fmt.Errorf("system is %s", last)
		}
		return false, nil
	})
	return last, err
}

// cappedBuffer keeps the first max bytes written to it and drops the rest,
// for output a machine controls.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}

// pollDelay is how long to wait between looks at a booting machine.
func pollDelay(elapsed time.Duration) time.Duration {
	if elapsed < 3*time.Second {
		return 15 * time.Millisecond
	}
	return 100 * time.Millisecond
}

// foregroundConsole is a backend that runs boot --console itself: the
// direct backend, whose nspawn needs a cgroup of its own.
type foregroundConsole interface {
	Console(ctx context.Context, spec backend.StartSpec) error
}

// console runs the machine in the foreground on the caller's terminal,
// with the limits of this boot; nsbox's own veth gets its host end once
// the machine is up.
func (m *Manager) console(ctx context.Context, cfg NspawnConfig, limits backend.Limits) error {
	args := NspawnArgs(cfg)
	for i, a := range args {
		switch a {
		case "--console=read-only", "--console=pipe":
			args[i] = "--console=interactive"
		case "--keep-unit":
			// machined then makes a scope of its own for the machine.
			if cfg.Registered {
				args[i] = "--quiet"
			}
		}
	}
	if m.ownVeth(cfg.BootOptions) && !cfg.ReadOnly {
		if link, err := m.machineLink(ctx, cfg.Name); err == nil {
			netCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			go m.finishNetwork(netCtx, cfg.Name, &link, cfg.App != nil)
		}
	}
	companion, err := m.portsCompanion(cfg.Name, cfg.BootOptions)
	if err != nil {
		return err
	}
	if fc, ok := m.Backend.(foregroundConsole); ok {
		return fc.Console(ctx, backend.StartSpec{Name: cfg.Name, Root: cfg.Root, Limits: limits,
			Argv: append([]string{"systemd-nspawn"}, args...), Companion: companion})
	}
	if companion != nil {
		// The loopback forwards last as long as this foreground run.
		portsCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			if err := m.ServePorts(portsCtx, cfg.Name); err != nil {
				logrus.Warnf("%s: %v", cfg.Name, err)
			}
		}()
	}
	c := &host.Cmd{Path: "systemd-nspawn", Args: args, Foreground: true,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	return m.Runner.Run(ctx, c)
}

// waitGone waits until the backend no longer knows name.
func (m *Manager) waitGone(ctx context.Context, name string, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return host.Poll(ctx, host.Every(50*time.Millisecond), func() (bool, error) {
		_, err := m.Backend.Get(ctx, name)
		return errors.Is(err, ErrNotRunning), nil
	}) == nil
}

// running checks that name is a running machine.
func (m *Manager) running(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	if _, err := m.Backend.Get(ctx, name); errors.Is(err, ErrNotRunning) {
		if m.exists(name) {
			return fmt.Errorf("%w: %s (start it: nsbox boot %s)", ErrNotRunning, name, name)
		}
		if img, ok := m.machinectlImage(name); ok {
			return fmt.Errorf("%w: %s (machinectl's image in %s)", ErrNotRunning, name, img.Dir)
		}
		return fmt.Errorf("%w %q (see: nsbox list)", ErrNotFound, name)
	} else if err != nil {
		return err
	}
	return nil
}

// Stop powers name off cleanly and waits; after timeout it terminates it.
func (m *Manager) Stop(ctx context.Context, name string, timeout time.Duration) error {
	if err := m.running(ctx, name); err != nil {
		return err
	}
	if timeout <= 0 {
		timeout = time.Minute
	}
	if !m.stopApp(ctx, name) {
		if err := m.Backend.Kill(ctx, name, false, sigPoweroff); err != nil && !errors.Is(err, ErrNotRunning) {
			logrus.Warnf("poweroff %s: %v; terminating", name, err)
		}
	}
	if !m.waitGone(ctx, name, timeout) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logrus.Warnf("%s did not power off within %s; terminating it", name, timeout)
		if err := m.Backend.Terminate(ctx, name); err != nil && !errors.Is(err, ErrNotRunning) {
			return err
		}
		if !m.waitGone(ctx, name, 15*time.Second) {
			return fmt.Errorf("%s is still running after terminate", name)
		}
	}
	m.Backend.Cleanup(ctx, name)
	m.withdrawName(name)
	return m.endEphemeral(ctx, name)
}

// Reboot asks name's systemd to reboot; the backend starts it again.
func (m *Manager) Reboot(ctx context.Context, name string) error {
	if err := m.running(ctx, name); err != nil {
		return err
	}
	return m.Backend.Kill(ctx, name, false, sigReboot)
}

// Terminate ends name at once, without a clean shutdown.
func (m *Manager) Terminate(ctx context.Context, name string) error {
	if err := m.running(ctx, name); err != nil {
		return err
	}
	if err := m.Backend.Terminate(ctx, name); err != nil {
		return err
	}
	m.waitGone(ctx, name, 15*time.Second)
	m.Backend.Cleanup(ctx, name)
	m.withdrawName(name)
	return m.endEphemeral(ctx, name)
}

// Kill sends sig to name's leader, or with all to all its processes.
func (m *Manager) Kill(ctx context.Context, name string, all bool, sig syscall.Signal) error {
	if err := m.running(ctx, name); err != nil {
		return err
	}
	return m.Backend.Kill(ctx, name, all, sig)
}

// Remove deletes a stopped machine: its root, its settings and its link in
// ImagesDir. A running machine is refused unless force, which stops it.
func (m *Manager) Remove(ctx context.Context, name string, force bool) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		if !force {
			return fmt.Errorf("%w: %s (stop it first, or use --force)", ErrRunning, name)
		}
		if err := m.Stop(ctx, name, 30*time.Second); err != nil {
			return err
		}
	}
	root := m.Dir(name)
	if m.ReadOnly(name) {
		return fmt.Errorf("%s is read-only (make it writable first: nsbox read-only %s false)", name, name)
	}
	lock, err := m.lockImage(root, true)
	if errors.Is(err, ErrBusy) {
		return fmt.Errorf("%w: %s is in use by a systemd-nspawn nsbox did not start, or another nsbox", ErrBusy, root)
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	// Its snapshots go first: a new machine of the name must not find them.
	if err := m.removeSnapshots(ctx, name); err != nil {
		return err
	}
	if err := m.sweepEphemeralOf(ctx, name); err != nil {
		return err
	}
	// An overlay machine's upper goes first (its base stays), then the
	// tree. If the tree cannot go (a mount inside), the machine keeps its
	// settings and stays whole enough to boot.
	if m.storageOf(name).Kind == storage.Overlay {
		if err := m.removeStorage(name); err != nil {
			return err
		}
	}
	if err := host.RemoveTree(root); err != nil {
		return err
	}
	_ = os.Remove(m.storagePath(name))
	_ = os.Remove(m.settingsPath(name))
	_ = os.Remove(m.linkPath(name))
	_ = os.Remove(m.limitsPath(name))
	_ = os.Remove(m.imagePath(name))
	if a, ok := m.Backend.(backend.Autostart); ok {
		a.Forget(ctx, name)
	}
	if err := m.removeSockets(ctx, name); err != nil {
		logrus.Warnf("remove the sockets of %s: %v", name, err)
	}
	m.unlinkImage(name)
	_ = os.Remove(m.LogDir + "/" + name + ".log")
	_ = os.Remove(m.LogDir + "/" + name + ".log.1")
	m.unpublish(name)
	m.withdrawName(name)
	m.release(name)
	return nil
}

// Shell runs argv in name as o says (a login shell when argv is empty)
// and returns its exit status. A stopped machine is entered with
// systemd-nspawn -D instead, for customising its tree.
func (m *Manager) Shell(ctx context.Context, name string, o ExecOptions, argv []string) (int, error) {
	if err := m.checkRootAndName(name, false); err != nil {
		return 0, err
	}
	r, err := m.Backend.Get(ctx, name)
	if errors.Is(err, ErrNotRunning) {
		if !m.exists(name) {
			return 0, m.notNsboxs(name, fmt.Errorf("%w %q (see: nsbox list)", ErrNotFound, name))
		}
		return m.enterStopped(ctx, name, o, argv)
	}
	if err != nil {
		return 0, err
	}
	if o.Workdir != "" {
		// Said here, in one line, for both backends; the direct one
		// enters the directory it opens again, machined's by its path.
		if err := m.inRunning(ctx, name, r, func(root int) error { return backend.CheckWorkdir(root, o.Workdir) }); err != nil {
			return 0, err
		}
	}
	opts, _ := m.Options(name)
	app, login := opts.App != nil, len(argv) == 0
	if login {
		switch {
		case app:
			// No login program need be there: the user's shell, as
			// the machine's passwd names it, as a login shell.
			argv = []string{m.appShell(r, o.User), "-l"}
		case o.plain():
			// A login shell, ended by the end of its input and with its
			// exit status passed back ("shell web --" is the same).
			if ls, ok := m.Backend.(backend.LoginShells); ok {
				return ls.LoginShell(ctx, name, o.User)
			}
			return 0, m.Backend.Shell(ctx, name, o.User)
		default:
			argv = loginShellArgv(o.User, o.Workdir != "")
		}
	}
	spec := backend.ExecSpec{
		Argv: argv, User: o.User, TTY: o.terminal(login && app), Workdir: o.Workdir,
		Env:   withEnv([]string{"TERM=" + backend.EnvOr("TERM", "vt220")}, o.Env),
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
	}
	if app && m.Backend.Registered() {
		// Nothing in an app machine starts commands for machined's
		// systemd-run: nsbox enters it as it does without machined.
		return m.execInApp(ctx, name, r, spec)
	}
	return m.Backend.Exec(ctx, name, spec)
}

// inRunning runs fn with the root directory of running machine name as
// its processes see it (r is what the backend reported of it), checked
// to be still that machine's after it was opened.
func (m *Manager) inRunning(ctx context.Context, name string, r backend.Running, fn func(root int) error) error {
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/root", r.Leader), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the root of %s: %w", name, err)
	}
	defer unix.Close(fd)
	// The leader is still the machine's: its PID was not reused between
	// the two looks.
	if again, err := m.Backend.Get(ctx, name); err != nil || again.Leader != r.Leader {
		return fmt.Errorf("%w: %s stopped meanwhile", ErrNotRunning, name)
	}
	return fn(fd)
}

// enterStopped runs argv (or a shell) in the stopped machine's tree with
// systemd-nspawn, which takes the image lock for the duration.
func (m *Manager) enterStopped(ctx context.Context, name string, o ExecOptions, argv []string) (int, error) {
	opts, err := m.Options(name)
	if err != nil {
		return 0, err
	}
	args := []string{"--quiet", "--directory=" + m.Dir(name), "--machine=" + name,
		"--settings=no", "--register=no"}
	if !m.Backend.Registered() {
		// Without systemd nobody can make nspawn a scope: it stays in ours.
		// With systemd, nspawn asks for a scope of its own.
		args = append(args, "--keep-unit")
	}
	rec, err := m.alignUpper(ctx, name, opts.PrivateUsers)
	if err != nil {
		return 0, err
	}
	overlay := rec.Kind == storage.Overlay
	if opts.PrivateUsers {
		args = append(args, "--private-users=pick", "--private-users-ownership=auto")
	}
	if opts.PrivateUsers && slices.Contains(opts.BindUsers, o.User) {
		// A bound user exists in the machine only as nspawn binds them.
		args = append(args, "--bind-user="+o.User)
	}
	if o.User != "" {
		args = append(args, "--user="+o.User)
	}
	if o.Workdir != "" {
		args = append(args, "--chdir="+o.Workdir)
	}
	for _, kv := range o.Env {
		args = append(args, "--setenv="+kv)
	}
	tty := o.terminal(len(argv) == 0)
	switch {
	case !tty:
		args = append(args, "--pipe")
	case !backend.IsTerminal(os.Stdin) || !backend.IsTerminal(os.Stdout):
		// -t without a terminal here: nspawn makes one and proxies it.
		args = append(args, "--console=interactive")
	}
	args = append(args, "--")
	args = append(args, argv...)
	c := &host.Cmd{Path: "systemd-nspawn", Args: args}
	run := func() (int, error) {
		if o.Workdir != "" {
			fd, err := unix.Open(m.Dir(name), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return 0, fmt.Errorf("the tree of %s: %w", name, err)
			}
			err = backend.CheckWorkdir(fd, o.Workdir)
			unix.Close(fd)
			if err != nil {
				return 0, err
			}
		}
		fmt.Fprintf(os.Stderr, "nsbox: %s is not running; entering its tree with systemd-nspawn (boot it with: nsbox boot %s)\n", name, name)
		return m.runStopped(ctx, name, c, tty)
	}
	if overlay {
		var code int
		err := m.withTree(ctx, name, func() error {
			var err error
			code, err = run()
			return err
		})
		return code, err
	}
	return run()
}

// runStopped runs nspawn command c in a stopped machine, on the caller's
// terminal when tty.
func (m *Manager) runStopped(ctx context.Context, name string, c *host.Cmd, tty bool) (int, error) {
	// On a host whose /run is no tmpfs nspawn ends every run with a line
	// about its propagation directory that means nothing here (see
	// propagateNoise); that one line is dropped, every other passes.
	stderr := newLineFilter(os.Stderr, propagateNoise(name))
	defer stderr.Flush()
	if tty {
		// nspawn gives the payload a pseudo terminal of its own.
		c.Foreground = true
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, stderr
		return backend.StatusOf(m.Runner.Run(ctx, c))
	}
	return backend.RunExec(ctx, m.Runner, c, backend.ExecSpec{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: stderr})
}

// Bind mounts host directory src on dst inside running machine name, now
// and until it stops (boot --bind makes a bind that lasts).
func (m *Manager) Bind(ctx context.Context, name, src, dst string, readOnly, mkdir, force bool) error {
	if !nsenter.Available {
		return fmt.Errorf("%w: this nsbox was built without cgo (CGO_ENABLED=0), so it cannot bind into a running machine: bind at boot instead (nsbox boot %s --bind SRC:DST), or use a build with cgo", ErrInvalidOption, name)
	}
	if err := m.running(ctx, name); err != nil {
		return err
	}
	if !filepath.IsAbs(src) || !filepath.IsAbs(dst) {
		return fmt.Errorf("%w: bind %s %s: both paths must be absolute", ErrInvalidOption, src, dst)
	}
	src = filepath.Clean(src)
	opts, err := m.Options(name)
	if err != nil {
		return err
	}
	binds := []Bind{{Source: src, Dest: dst, ReadOnly: readOnly}}
	if err := m.checkBinds(binds, opts.PrivateUsers, force); err != nil {
		return err
	}
	src = binds[0].Source
	r, err := m.Backend.Get(ctx, name)
	if err != nil {
		return err
	}
	if r.Leader <= 0 {
		return fmt.Errorf("%w: %s is between boots; try again", ErrBusy, name)
	}
	still := func() bool {
		now, err := m.Backend.Get(ctx, name)
		return err == nil && now.Leader == r.Leader
	}
	return BindIntoMachine(ctx, m.Runner, r.Leader, still, src, dst, readOnly, mkdir)
}
