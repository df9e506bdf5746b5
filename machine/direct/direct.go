package direct

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/names"
	"github.com/nsbox/nsbox/machine/nsenter"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Backend runs machines without machined: systemd-nspawn --register=no
// under a small nsbox supervisor process that restarts it on reboot and
// records it in a state file under RunDir.
type Backend struct {
	RunDir string // state files: RunDir/machines/NAME.json
	LogDir string // console logs: LogDir/NAME.log
	Runner host.Runner
	// Self is the nsbox binary the supervisor runs (TrustedExecutable).
	Self func() (string, error)
	// Supervisor is the arguments that make Self "nsbox __supervise"; it
	// gets the state file, log file and nspawn command line appended.
	Supervisor []string
}

// state is what the supervisor records of a running machine.
type state struct {
	Name       string       `json:"name"`
	Root       string       `json:"root"`
	Supervisor backend.Proc `json:"supervisor"`
	Nspawn     backend.Proc `json:"nspawn"`
	Leader     backend.Proc `json:"leader"`
	Since      time.Time    `json:"since"`
	Log        string       `json:"log"`
}

// Name implements Backend.
func (d *Backend) Name() string { return "direct" }

// Registered implements Backend: nspawn runs with --register=no.
func (d *Backend) Registered() bool { return false }

func (d *Backend) statePath(name string) string {
	return filepath.Join(d.RunDir, "machines", name+".json")
}

func (d *Backend) logPath(name string) string {
	return filepath.Join(d.LogDir, name+".log")
}

func (d *Backend) readState(name string) (state, error) {
	var st state
	b, err := os.ReadFile(d.statePath(name))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// Start implements Backend: it launches the supervisor in a session of its
// own and returns once the supervisor has recorded the container's leader.
func (d *Backend) Start(ctx context.Context, spec backend.StartSpec) error {
	for _, dir := range []string{filepath.Join(d.RunDir, "machines"), d.LogDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	// The cgroups, with their limits, are ready before the supervisor
	// moves into them.
	if err := makeCgroup(spec.Name); err != nil {
		return err
	}
	if err := applyLimits(spec.Name, spec.Limits); err != nil {
		removeCgroup(spec.Name)
		return err
	}
	logPath := d.logPath(spec.Name)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	if d.Self == nil {
		return fmt.Errorf("no nsbox binary to supervise the machine")
	}
	self, err := d.Self()
	if err != nil {
		return err
	}
	if len(spec.PreStart) > 0 {
		if err := d.Runner.Run(ctx, &host.Cmd{Path: spec.PreStart[0], Args: spec.PreStart[1:]}); err != nil {
			removeCgroup(spec.Name)
			return err
		}
	}
	args := append(append([]string{}, d.Supervisor...), d.statePath(spec.Name), logPath, "--")
	args = append(args, spec.Argv...)
	// The supervisor outlives this command: it runs in a session of its
	// own, and nothing here waits for it beyond its first record.
	started := make(chan *os.Process, 1)
	c := &host.Cmd{Path: self, Args: args, Stdin: devnull, Stdout: logf, Stderr: logf, Dir: "/",
		Started: func(p *os.Process) { started <- p }}
	c.Env = hookEnv(spec)
	exited := make(chan error, 1)
	go func() { exited <- d.Runner.Run(context.Background(), c) }()
	var sup *os.Process
	select {
	case sup = <-started:
	case err := <-exited:
		return fmt.Errorf("start supervisor: %w", err)
	}
	err = host.Poll(ctx, host.Every(20*time.Millisecond), func() (bool, error) {
		if st, err := d.readState(spec.Name); err == nil && st.Supervisor.PID == sup.Pid && st.Leader.PID > 0 {
			return true, nil
		}
		select {
		case <-exited:
			return false, fmt.Errorf("systemd-nspawn exited at once")
		default:
			return false, nil
		}
	})
	if ctx.Err() != nil {
		_ = sup.Signal(syscall.SIGTERM)
	}
	return err
}

// Supervise is the body of "nsbox __supervise": it runs nspawn, records the
// machine in statePath, starts nspawn again when the container reboots
// (exit status 133, as systemd-nspawn@.service does) and removes the state
// when the machine is gone. SIGTERM is passed on to nspawn, which then
// shuts the container down.
func Supervise(statePath, logPath string, argv []string) int {
	// StopPost (an overlay machine's unmount) and the companion are
	// nspawn's to never see.
	var post, companion []string
	if v, ok := os.LookupEnv(StopPostEnv); ok {
		os.Unsetenv(StopPostEnv)
		_ = json.Unmarshal([]byte(v), &post)
	}
	if v, ok := os.LookupEnv(CompanionEnv); ok {
		os.Unsetenv(CompanionEnv)
		_ = json.Unmarshal([]byte(v), &companion)
	}
	self, err := backend.ProcOf(os.Getpid())
	if err != nil {
		logrus.Error(err)
		return 1
	}
	name := strings.TrimSuffix(filepath.Base(statePath), ".json")
	root := ""
	for _, a := range argv {
		if v, ok := strings.CutPrefix(a, "--directory="); ok {
			root = v
		}
	}
	// The machine's name goes from the hosts files when it stops, however
	// it stops (its own poweroff, a kill): after the state, last.
	defer func() {
		t := names.Table{Dir: filepath.Join(filepath.Dir(filepath.Dir(statePath)), "names"), HostsFile: names.HostsFile}
		if err := t.Withdraw(name); err != nil {
			fmt.Fprintf(os.Stderr, "nsbox: drop the name of %s: %v\n", name, err)
		}
	}()
	// The state goes with this supervisor, and only if it is this one's: a
	// supervisor that lost a race for the machine leaves the winner's.
	defer func() {
		var st state
		if b, err := os.ReadFile(statePath); err == nil && json.Unmarshal(b, &st) == nil && st.Supervisor == self {
			_ = os.Remove(statePath)
		}
	}()
	// StopPost runs after nspawn, out of the machine's cgroups, and
	// before the state goes: a stop returns once the state is gone, so
	// what comes after a stop finds the tree unmounted, and a next boot
	// never has its tree unmounted by this one's hook.
	if len(post) > 0 {
		defer func() {
			if err := (host.ExecRunner{}).Run(context.Background(), &host.Cmd{Path: post[0], Args: post[1:]}); err != nil {
				fmt.Fprintf(os.Stderr, "nsbox: %v\n", err)
			}
		}()
	}
	// The companion (the loopback forwards) starts before the supervisor
	// joins the machine's cgroups, so the machine's limits, which its root
	// fills at will, are not its; it is ended before the state goes, so a
	// stop returns once it is gone.
	if len(companion) > 0 {
		defer startCompanion(companion, logPath != consoleLog)()
	}
	if err := joinCgroup(name); err != nil {
		fmt.Fprintf(os.Stderr, "nsbox: %v\n", err)
		return 1
	}
	defer func() {
		leaveCgroup()
		removeCgroup(name)
	}()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// The machine writes its console as fast as it likes: the log is kept
	// to two files of at most maxConsoleLog bytes.
	console := &rotatingLog{path: logPath, f: os.Stdout, max: maxConsoleLog}
	if fi, err := os.Stdout.Stat(); err == nil {
		console.size = fi.Size()
	}
	for {
		// nspawn stays in the supervisor's session and process group: the
		// supervisor passes SIGTERM on itself, and with --console nspawn
		// has the caller's terminal.
		c := &host.Cmd{Path: argv[0], Args: argv[1:], Stdout: console, Stderr: console, Foreground: true}
		if logPath == consoleLog {
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		}
		started := make(chan *os.Process, 1)
		c.Started = func(p *os.Process) { started <- p }
		waited := make(chan error, 1)
		go func() { waited <- host.ExecRunner{}.Run(context.Background(), c) }()
		var proc *os.Process
		select {
		case proc = <-started:
		case err := <-waited:
			fmt.Fprintf(os.Stderr, "nsbox: %v\n", err)
			return 1
		}
		nspawn, _ := backend.ProcOf(proc.Pid)
		st := state{Name: name, Root: root, Supervisor: self, Nspawn: nspawn, Since: time.Now(), Log: logPath}
		// The machine is recorded once nspawn has started its PID 1.
		run, stop := context.WithCancel(context.Background())
		recorded := make(chan struct{})
		go func() {
			defer close(recorded)
			_ = host.Poll(run, host.Every(10*time.Millisecond), func() (bool, error) {
				leader, ok := backend.ContainerChild(nspawn.PID)
				if !ok {
					return false, nil
				}
				st.Leader = leader
				if err := host.WriteFileAtomic(statePath, mustJSON(st), 0o644); err != nil {
					fmt.Fprintf(os.Stderr, "nsbox: %v\n", err)
				}
				return true, nil
			})
		}()
		var werr error
	wait:
		for {
			select {
			case werr = <-waited:
				break wait
			case s := <-sigs:
				if s == syscall.SIGTERM {
					_ = proc.Signal(syscall.SIGTERM)
				}
			}
		}
		stop()
		<-recorded
		status := 0
		if werr != nil {
			var ee *host.ExitError
			if !errors.As(werr, &ee) {
				fmt.Fprintf(os.Stderr, "nsbox: %v\n", werr)
				return 1
			}
			status = ee.Status
		}
		if status != 133 {
			return status
		}
		fmt.Fprintln(os.Stderr, "nsbox: container rebooted; starting it again")
	}
}

// StopPostEnv carries StartSpec.StopPost, as JSON, to the supervisor.
const StopPostEnv = "NSBOX_STOP_POST"

// CompanionEnv carries StartSpec.Companion, as JSON, to the supervisor.
const CompanionEnv = "NSBOX_COMPANION"

// hookEnv is the supervisor's environment for spec's StopPost and
// Companion.
func hookEnv(spec backend.StartSpec) []string {
	var env []string
	if len(spec.StopPost) > 0 {
		env = append(env, StopPostEnv+"="+string(mustJSON(spec.StopPost)))
	}
	if len(spec.Companion) > 0 {
		env = append(env, CompanionEnv+"="+string(mustJSON(spec.Companion)))
	}
	return env
}

// startCompanion runs argv in a session of its own beside the machine,
// writing to the supervisor's log when log is set; what it returns ends it (SIGTERM, then
// SIGKILL after five seconds) and waits for it.
func startCompanion(argv []string, log bool) (end func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &host.Cmd{Path: argv[0], Args: argv[1:], Dir: "/", KillGrace: 5 * time.Second}
		if log {
			// On a console (boot --console) the terminal is nspawn's alone.
			c.Stdout, c.Stderr = os.Stderr, os.Stderr
		}
		if err := (host.ExecRunner{}).Run(ctx, c); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "nsbox: %v\n", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// maxConsoleLog is the size at which a machine's console log is rotated.
const maxConsoleLog = 8 << 20

// rotatingLog writes to the file at path and, when it would pass max bytes,
// renames it to path.1 (replacing the one before) and starts it anew.
type rotatingLog struct {
	mu   sync.Mutex
	path string
	f    *os.File
	size int64
	max  int64
}

func (l *rotatingLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size+int64(len(p)) > l.max && l.size > 0 {
		if err := os.Rename(l.path, l.path+".1"); err == nil {
			f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
			if err == nil {
				if l.f != os.Stdout {
					l.f.Close()
				}
				l.f, l.size = f, 0
			}
		}
	}
	n, _ := l.f.Write(p)
	l.size += int64(n)
	// A full disk loses console lines, never the machine: an error here
	// would end the copy and leave nspawn blocked on a full pipe.
	return len(p), nil
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// live returns the state of a running machine. State of a machine whose
// supervisor died is stale: it is removed and ErrNotRunning returned.
func (d *Backend) live(name string) (state, error) {
	st, err := d.readState(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return st, backend.ErrNotRunning
		}
		return st, err
	}
	if !st.Supervisor.Alive() {
		if !st.Leader.Alive() {
			_ = os.Remove(d.statePath(name))
			return st, backend.ErrNotRunning
		}
		// Supervisor killed, container still up: still running, and
		// stop/terminate act on the leader.
	}
	return st, nil
}

// StaleState reports whether name's state file is what a machine that is
// gone left: its supervisor and container both dead (what a read of it
// removes). It reads the file only.
func (d *Backend) StaleState(name string) bool {
	st, err := d.readState(name)
	return err == nil && !st.Supervisor.Alive() && !st.Leader.Alive()
}

// StatePath is where the state file of machine name is.
func (d *Backend) StatePath(name string) string { return d.statePath(name) }

// Get implements Backend.
func (d *Backend) Get(ctx context.Context, name string) (backend.Running, error) {
	st, err := d.live(name)
	if err != nil {
		return backend.Running{}, err
	}
	r := backend.Running{Name: name, Class: "container", Service: "nsbox", RootDirectory: st.Root, Since: st.Since}
	if st.Leader.Alive() {
		r.Leader = st.Leader.PID
	}
	return r, nil
}

// List implements Backend.
func (d *Backend) List(ctx context.Context) ([]backend.Running, error) {
	files, _ := filepath.Glob(filepath.Join(d.RunDir, "machines", "*.json"))
	var out []backend.Running
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		if strings.HasPrefix(name, ".#") {
			continue
		}
		if r, err := d.Get(ctx, name); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Kill implements Backend.
func (d *Backend) Kill(ctx context.Context, name string, all bool, sig syscall.Signal) error {
	st, err := d.live(name)
	if err != nil {
		return err
	}
	if !st.Leader.Alive() {
		return fmt.Errorf("%w: %s is between boots; try again", backend.ErrBusy, name)
	}
	if !all {
		return syscall.Kill(st.Leader.PID, sig)
	}
	for _, pid := range backend.PidNamespaceMembers(st.Leader.PID) {
		_ = syscall.Kill(pid, sig)
	}
	return nil
}

// Terminate implements Backend: the leader is killed, which ends the
// container's PID namespace; nspawn then exits and cleans up.
func (d *Backend) Terminate(ctx context.Context, name string) error {
	st, err := d.live(name)
	if err != nil {
		return err
	}
	// Tell the supervisor first, so it does not take this for a reboot.
	if st.Supervisor.Alive() {
		_ = syscall.Kill(st.Supervisor.PID, syscall.SIGTERM)
	}
	if st.Leader.Alive() {
		_ = syscall.Kill(st.Leader.PID, syscall.SIGKILL)
	}
	gone, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if host.Poll(gone, host.Every(20*time.Millisecond), func() (bool, error) {
		return !st.Supervisor.Alive() && !st.Nspawn.Alive() && !st.Leader.Alive(), nil
	}) == nil {
		_ = os.Remove(d.statePath(name))
		return nil
	}
	if st.Nspawn.Alive() {
		_ = syscall.Kill(st.Nspawn.PID, syscall.SIGKILL)
	}
	if st.Supervisor.Alive() {
		_ = syscall.Kill(st.Supervisor.PID, syscall.SIGKILL)
	}
	_ = os.Remove(d.statePath(name))
	return nil
}

// nsenterArgs enters every namespace of leader, with its root and working
// directory, and runs argv there with a clean environment.
func nsenterArgs(leader int, user string, env []string, argv []string) []string {
	environ, cmd := execEnv(user, env, argv)
	args := append([]string{"-t", fmt.Sprint(leader), "-a", "-r", "-w", "--", "/usr/bin/env", "-i"}, environ...)
	return append(args, cmd...)
}

// Exec implements Backend by entering the leader's namespaces: through
// nsbox's own helper (enterCommand), or where this build lacks it (no
// cgo) through setpriv and nsenter (chainCommand).
func (d *Backend) Exec(ctx context.Context, name string, e backend.ExecSpec) (int, error) {
	st, err := d.live(name)
	if err != nil {
		return 0, err
	}
	if !st.Leader.Alive() {
		return 0, fmt.Errorf("%w: %s is between boots; try again", backend.ErrBusy, name)
	}
	return ExecIn(ctx, d.Runner, name, st.Leader, execCgroup(name), e)
}

// ExecIn runs e in machine name, whose PID 1 is leader, entering its
// namespaces itself rather than asking anything inside to start it: the
// shell helper (or, without cgo, setpriv and nsenter) joins the cgroups
// whose cgroup.procs files procs names, enters every namespace of the
// leader, keeps only its capability bounding set and runs the command.
// The machined backend's app machines, which run no systemd that could
// start a command, are entered so too.
func ExecIn(ctx context.Context, runner host.Runner, name string, leader backend.Proc, procs []string, e backend.ExecSpec) (int, error) {
	if len(e.Argv) == 0 {
		return 0, fmt.Errorf("%s: no command to run", name)
	}
	var c *host.Cmd
	var err error
	if nsenter.Available {
		t, err := openEnterTarget(leader, procs)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		defer t.Close()
		if e.Workdir != "" {
			if err := t.chdir(e.Workdir); err != nil {
				return 0, err
			}
		}
		c = enterCommand(name, t, e.User, e.Env, e.Argv)
	} else if e.Workdir != "" {
		// nsenter opens its --wd on the host, before it enters anything.
		return 0, fmt.Errorf("%w: this nsbox was built without cgo (CGO_ENABLED=0), so it cannot start a command in a directory of a running machine: use %s -- sh -c 'cd DIR && exec CMD', or a build with cgo", backend.ErrInvalidOption, name)
	} else if c, err = chainCommand(name, leader.PID, procs, e); err != nil {
		return 0, err
	}
	if e.TTY {
		// A terminal of the machine's devpts: one of the host's is no
		// terminal inside (tty says "not a tty").
		master, slave, err := backend.OpenMachinePTY(leader)
		if err == nil {
			return backend.RunOnTerminal(ctx, runner, c, master, slave)
		}
		logrus.Debugf("%s: %v; using a pseudo terminal of the host", name, err)
	}
	return backend.RunExec(ctx, runner, c, e)
}

// chainCommand is Exec's command where nsbox has no helper: a shell joins
// the machine's cgroups, setpriv gives the bounding set of the leader,
// nsenter enters its namespaces, env makes the environment.
func chainCommand(name string, leader int, procs []string, e backend.ExecSpec) (*host.Cmd, error) {
	// What runs in the machine gets no more capabilities than its PID 1,
	// which nspawn gave a reduced bounding set.
	bounding, err := capBounding(leader)
	if err != nil {
		return nil, fmt.Errorf("%s: read the capabilities of its PID 1: %w", name, err)
	}
	enter := append([]string{"--bounding-set=" + bounding, "--", "nsenter"}, nsenterArgs(leader, e.User, e.Env, e.Argv)...)
	// The command joins the machine's cgroups, so its limits cover it.
	path, args := inCgroup(procs, "setpriv", enter)
	return &host.Cmd{Path: path, Args: args}, nil
}

// capBoundingMask is the capability bounding set of pid (CapBnd).
func capBoundingMask(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(backend.ProcRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapBnd in /proc/%d/status", pid)
}

// capBounding is the capability bounding set of pid in setpriv's words:
// "-all" and then "+cap_N" for each capability it keeps.
func capBounding(pid int) (string, error) {
	mask, err := capBoundingMask(pid)
	if err != nil {
		return "", err
	}
	out := "-all"
	for i := 0; i < 64; i++ {
		if mask&(1<<i) != 0 {
			out += fmt.Sprintf(",+cap_%d", i)
		}
	}
	return out, nil
}

// Shell implements Backend: LoginShell without its exit status.
func (d *Backend) Shell(ctx context.Context, name, user string) error {
	_, err := d.LoginShell(ctx, name, user)
	return err
}

// Cleanup implements Backend.
func (d *Backend) Cleanup(ctx context.Context, name string) {
	if st, err := d.readState(name); err == nil && !st.Supervisor.Alive() && !st.Leader.Alive() {
		_ = os.Remove(d.statePath(name))
	}
}

// LogTail implements Backend: the end of the console log. Start begins
// the log anew, so during a boot (WithBootStart) a log last written before
// the boot began is the previous run's, and none of this boot's.
func (d *Backend) LogTail(ctx context.Context, name string, n int) []string {
	f, err := os.OpenFile(d.logPath(name), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if since, ok := backend.BootStartOf(ctx); ok && fi.ModTime().Before(since) {
		return nil
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil
	}
	return backend.LastLines(string(b), n)
}

// SetLimits implements Backend by writing the machine's cgroup files.
func (d *Backend) SetLimits(ctx context.Context, name string, l backend.Limits) error {
	if _, err := d.live(name); err != nil {
		return err
	}
	return applyLimits(name, l)
}

// Usage implements Backend from the machine's cgroups.
func (d *Backend) Usage(ctx context.Context, name string) (backend.Usage, error) {
	if _, err := d.live(name); err != nil {
		return backend.Usage{}, err
	}
	return cgroupUsage(name)
}

func timeDuration(ns uint64) time.Duration { return time.Duration(ns) }

// Changes implements Watcher: the state directory changes when a machine
// starts or stops, and inotify says so at once.
func (d *Backend) Changes(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	dir := filepath.Join(d.RunDir, "machines")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return out
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return out
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return out
	}
	f := os.NewFile(uintptr(fd), "inotify")
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}
