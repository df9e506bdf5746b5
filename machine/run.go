package machine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/network"
)

// RunOptions is a throwaway run (nsbox run): a command in a fresh machine
// over a base or a stopped machine, gone without a trace when it ends.
type RunOptions struct {
	// Release (with Distro) names the base; From a stopped machine
	// instead.
	Release, Distro string
	From            string
	Argv            []string
	// Boot starts the machine's systemd first and runs Argv once it is
	// up; otherwise Argv runs under nspawn alone, as docker run does.
	Boot bool
	// Network is none (the default), host, or with Boot also veth,
	// bridge:BR or zone:Z.
	Network    string
	Binds      []Bind
	ForceBinds bool
	// Timeout bounds a boot; zero is 2 minutes.
	Timeout  time.Duration
	Progress func(Stage)
}

// RunCommand is the hidden command a run starts in a mount namespace of
// its own: nsbox __run SPEC.
const RunCommand = "__run"

// runSpec is what nsbox run tells its helper (as JSON): the helper mounts
// the tree in its own mount namespace and runs nspawn there.
type runSpec struct {
	Name string `json:"name"`
	// Dir is where the helper mounts the run's tmpfs, in its namespace
	// only: RunDir/run, the same empty directory for every run.
	Dir     string          `json:"dir"`
	Lowers  []storage.Lower `json:"lowers"`
	UIDBase int             `json:"uid_base"`
	// Nspawn is nspawn's command line, the tree's --directory= left out.
	Nspawn []string `json:"nspawn"`
	TTY    bool     `json:"tty"`
	Boot   bool     `json:"boot,omitempty"`
	// Supervisor, for a boot on the direct backend, is the command that
	// makes nsbox "__supervise" and the machine's state file.
	Supervisor []string `json:"supervisor,omitempty"`
	State      string   `json:"state,omitempty"`
}

// runResult is the helper's last word, on its fd 3: the command's exit
// status, or why it could not run.
type runResult struct {
	Status int      `json:"status"`
	Error  string   `json:"error,omitempty"`
	Log    []string `json:"log,omitempty"`
}

// Paths of the run's tmpfs, in the helper's namespace.
func (s runSpec) tree() string    { return filepath.Join(s.Dir, "root") }
func (s runSpec) upper() string   { return filepath.Join(s.Dir, "upper") }
func (s runSpec) work() string    { return filepath.Join(s.Dir, "work") }
func (s runSpec) scratch() string { return filepath.Join(s.Dir, "lower") }
func (s runSpec) console() string { return filepath.Join(s.Dir, "console.log") }

// argv is the run's nspawn command line, on its tree.
func (s runSpec) argv() []string {
	return append([]string{"systemd-nspawn", "--directory=" + s.tree()}, s.Nspawn...)
}

// runName is a fresh name for a throwaway machine: nspawn's hostname for
// it, and its name in list while it runs.
func runName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "run-" + hex.EncodeToString(b[:])
}

// CheckRun checks a run's options before anything is started.
func CheckRun(o RunOptions) error {
	if len(o.Argv) == 0 {
		return fmt.Errorf("%w: no command to run (nsbox run [--release R | --from MACHINE] -- CMD ARGS...)", ErrInvalidOption)
	}
	if o.From != "" && (o.Release != "" || o.Distro != "") {
		return fmt.Errorf("%w: --from takes the machine's tree; --release and --distro do not go with it", ErrInvalidOption)
	}
	if o.From == "" && o.Release == "" {
		return fmt.Errorf("%w: say what to run on: --release R (bookworm, trixie, noble, ...) or --from MACHINE", ErrInvalidOption)
	}
	switch n := o.Network; {
	case n == "" || n == "none" || n == "host":
	case !o.Boot:
		return fmt.Errorf("%w: --network %s needs --boot: without systemd nothing in the machine configures its interface (use none or host)", ErrInvalidOption, n)
	default:
		if err := ValidateNetwork(n); err != nil {
			return err
		}
	}
	return nil
}

// runNspawnArgs is nspawn's command line for a run without --boot
// (without --directory=): a user namespace from the tree's owner, no
// registration, a stub PID 1 so that CMD is not init (whom no signal
// kills), and CMD under sh, which reports a signal as 128+N where nspawn
// reports 255.
func runNspawnArgs(name string, o RunOptions, registered, tty bool) []string {
	args := []string{"--quiet", "--machine=" + name, "--settings=no", "--register=no",
		"--private-users=pick", "--private-users-ownership=auto", "--link-journal=no", "--as-pid2"}
	if !registered {
		// Without systemd nobody makes nspawn a scope: it stays in ours.
		args = append(args, "--keep-unit")
	}
	if o.Network != "host" {
		args = append(args, "--private-network")
	}
	args = append(args, "--resolv-conf="+network.ResolvConfMode("/etc/resolv.conf", o.Network != "host"))
	args = append(args, bindArgs(o.Binds)...)
	if !tty {
		args = append(args, "--pipe")
	}
	return append(append(args, "--", "/bin/sh", "-c", `"$@"; exit $?`, "sh"), o.Argv...)
}

// bootNspawnArgs is nspawn's command line for a run with --boot: a boot's
// (NspawnArgs), with nothing linked into the host's journal and, where
// machined registers it, a scope of machined's instead of a unit's.
func bootNspawnArgs(name string, o RunOptions, registered bool) []string {
	opts := BootOptions{Network: o.Network, Binds: o.Binds, PrivateUsers: true}
	if opts.Network == "" {
		opts.Network = "none"
	}
	cfg := NspawnConfig{Name: name, BootOptions: opts, Registered: registered,
		ResolvConf: network.ResolvConfMode("/etc/resolv.conf", opts.Network != "host")}
	var args []string
	for _, a := range NspawnArgs(cfg) {
		switch {
		case strings.HasPrefix(a, "--directory="):
		case a == "--keep-unit" && registered:
		default:
			args = append(args, a)
		}
	}
	return args
}

func bindArgs(binds []Bind) []string {
	var args []string
	for _, b := range withIDMap(binds, true) {
		if b.ReadOnly {
			args = append(args, "--bind-ro="+b.String())
		} else {
			args = append(args, "--bind="+b.String())
		}
	}
	return args
}

// Run runs o.Argv in a throwaway machine and returns its exit status
// (128+N when signal N killed it). The machine's tree is an overlay over
// the base or the stopped machine o.From with an upper on a tmpfs, both
// mounted in a mount namespace of the run's own: a thread of nsbox's for
// a command (runHere), a helper process for a boot. Whatever ends the
// run, even a SIGKILL of nsbox, the kernel takes the mounts and the upper
// away with the namespace's last process, and nspawn (or the helper) gets
// SIGTERM when the thread that started it dies.
func (m *Manager) Run(ctx context.Context, o RunOptions) (int, error) {
	if err := CheckRun(o); err != nil {
		return 0, err
	}
	if err := m.requireRoot(); err != nil {
		return 0, err
	}
	if err := m.checkBinds(o.Binds, true, o.ForceBinds); err != nil {
		return 0, err
	}
	lowers, done, err := m.runLowers(ctx, o)
	if err != nil {
		return 0, err
	}
	defer done()
	uid, release, err := m.reserveUIDBase()
	if err != nil {
		return 0, err
	}
	defer release()
	dir := filepath.Join(m.RunDir, "run")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	tty := backend.IsTerminal(os.Stdin) && backend.IsTerminal(os.Stdout)
	spec := runSpec{Name: runName(), Dir: dir, Lowers: lowers, UIDBase: uid, TTY: tty, Boot: o.Boot}
	if !o.Boot {
		spec.Nspawn = runNspawnArgs(spec.Name, o, m.Backend.Registered(), tty)
		return runHere(ctx, spec)
	}
	if m.Self == nil {
		return 0, errors.New("no nsbox binary to run the helper")
	}
	self, err := m.Self()
	if err != nil {
		return 0, err
	}
	spec.Nspawn = bootNspawnArgs(spec.Name, o, m.Backend.Registered())
	if db, ok := m.Backend.(*direct.Backend); ok {
		spec.Supervisor = append([]string{self}, db.Supervisor...)
		spec.State = filepath.Join(m.RunDir, "machines", spec.Name+".json")
		if err := os.MkdirAll(filepath.Dir(spec.State), 0o755); err != nil {
			return 0, err
		}
	}
	return m.runBooted(ctx, self, spec, o)
}

// runLowers are the layers of a run's tree, and what to call once the
// run is over: the base's root, or a stopped machine's tree (an overlay
// machine's upper over its base), held with a shared image lock so that
// it neither boots nor goes meanwhile.
func (m *Manager) runLowers(ctx context.Context, o RunOptions) ([]storage.Lower, func(), error) {
	if o.From == "" {
		rel, err := bootstrap.LookupRelease(o.Release, o.Distro)
		if err != nil {
			return nil, nil, err
		}
		bo := bootstrap.Options{Release: rel, CacheDir: filepath.Join(m.CacheDir, "debs", rel.Distro.Name+"-"+rel.Name)}
		root, _, unlock, err := m.Bases().Get(ctx, bo, o.Progress)
		if err != nil {
			return nil, nil, err
		}
		// The base's lock keeps out a refresh only while it is held; a
		// run holds it no longer than a create does, so that runs go
		// side by side. Its hold on the version keeps a refresh, prune
		// or remove from deleting the tree under it. (A refresh in the
		// moment between here and the mount gives the run the new
		// version, while the hold keeps the old one until a prune.)
		release, err := bootstrap.HoldForRun(root)
		unlock()
		if err != nil {
			return nil, nil, err
		}
		return []storage.Lower{{Path: root}}, release, nil
	}
	name := o.From
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, nil, err
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return nil, nil, fmt.Errorf("%w: %s (a run takes a stopped machine: nsbox stop %s)", ErrRunning, name, name)
	} else if !errors.Is(err, ErrNotRunning) {
		return nil, nil, err
	}
	lock, err := m.lockImage(m.Dir(name), false)
	if errors.Is(err, ErrBusy) {
		return nil, nil, fmt.Errorf("%w: %s is in use by a systemd-nspawn or another nsbox", ErrBusy, name)
	}
	if err != nil {
		return nil, nil, err
	}
	lowers, err := m.machineLowers(name)
	if err != nil {
		lock.Unlock()
		return nil, nil, err
	}
	return lowers, lock.Unlock, nil
}

// machineLowers are stopped machine name's layers: its tree (owned by
// the range nspawn last shifted it to, 0 for most), or for an overlay
// machine its upper (in the machine's range) over its base.
func (m *Manager) machineLowers(name string) ([]storage.Lower, error) {
	rec := m.storageOf(name)
	if rec.Kind == storage.Overlay {
		lower, err := m.lowerOf(rec)
		if err != nil {
			return nil, fmt.Errorf("the base of %s: %w", name, err)
		}
		if storage.Mounted(m.Tree(name)) {
			return nil, fmt.Errorf("%w: %s is mounted (in use by a shell or a boot)", ErrBusy, name)
		}
		// Its upper as it is stored: under its range, or under the ids
		// the machine sees when it last ran without a user namespace.
		return []storage.Lower{{Path: m.layout(name).Upper(), Owner: rec.UpperBase()}, {Path: lower}}, nil
	}
	tree := m.Dir(name)
	var st unix.Stat_t
	if err := unix.Stat(tree, &st); err != nil {
		return nil, err
	}
	return []storage.Lower{{Path: tree, Owner: int(st.Uid)}}, nil
}

// helperCmd is the helper of spec: nsbox in a mount namespace of its own,
// ended with SIGTERM when nsbox dies, its result on fd 3.
func helperCmd(self string, spec runSpec, result *os.File) *host.Cmd {
	b, _ := json.Marshal(spec)
	return &host.Cmd{Path: self, Args: []string{RunCommand, string(b)}, Dir: "/",
		MountNS: true, Pdeathsig: syscall.SIGTERM, ExtraFiles: []*os.File{result},
		// Interrupted, the helper stops nspawn (a booted machine shuts
		// down) before it ends.
		KillGrace: 30 * time.Second}
}

// readResult reads the helper's result; Status is -1 when there is none.
func readResult(r io.Reader) runResult {
	res := runResult{Status: -1}
	b, _ := io.ReadAll(io.LimitReader(r, 1<<16))
	_ = json.Unmarshal(b, &res)
	return res
}

// runBooted boots the throwaway machine of spec under its helper, waits
// until its systemd is up, runs o.Argv in it as shell NAME -- CMD does,
// and ends it.
func (m *Manager) runBooted(ctx context.Context, self string, spec runSpec, o RunOptions) (int, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	hctx, stopHelper := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHelper()
	c := helperCmd(self, spec, pw)
	c.Stdin, c.Stdout = devnull, devnull
	var helper *os.Process
	started := make(chan struct{})
	c.Started = func(p *os.Process) { helper = p; close(started) }
	exited := make(chan error, 1)
	go func() { exited <- m.Runner.Run(hctx, c); pw.Close() }()
	res := make(chan runResult, 1)
	go func() { res <- readResult(pr) }()
	select {
	case <-started:
	case err := <-exited:
		return 0, fmt.Errorf("start the run's helper: %w", err)
	}
	// Whatever happens below, the machine ends and nsbox waits for its
	// helper, so nothing of the run outlives the command.
	end := func() runResult {
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := m.Backend.Get(endCtx, spec.Name); err == nil {
			_ = m.Backend.Terminate(endCtx, spec.Name)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			stopHelper()
			<-exited
		}
		m.Backend.Cleanup(endCtx, spec.Name)
		return <-res
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(why string) error {
		log := consoleTail(helper.Pid, spec, 15)
		r := end()
		if len(log) == 0 {
			log = r.Log
		}
		if r.Error != "" {
			why = r.Error
		}
		return &BootError{Name: spec.Name, Why: why, Log: log}
	}
	// The machine is there once the backend knows it; the helper ending
	// first is a boot that failed.
	err = host.Poll(bctx, host.Every(20*time.Millisecond), func() (bool, error) {
		select {
		case <-exited:
			return false, errors.New("systemd-nspawn exited at once")
		default:
		}
		_, err := m.Backend.Get(bctx, spec.Name)
		return err == nil, nil
	})
	if err == nil {
		var state string
		state, err = m.waitRunning(bctx, spec.Name)
		if err != nil && bctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("system state still %q after %s", state, timeout)
		}
	} else if bctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("not running after %s", timeout)
	}
	if err != nil {
		if ctx.Err() != nil {
			end()
			return 0, ctx.Err()
		}
		return 0, fail(err.Error())
	}
	logrus.Infof("%s is up", spec.Name)
	status, err := m.Backend.Exec(ctx, spec.Name, backend.ExecSpec{
		Argv: o.Argv, TTY: spec.TTY, Env: []string{"TERM=" + backend.EnvOr("TERM", "vt220")},
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
	})
	r := end()
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if err == nil && r.Error != "" {
		logrus.Warnf("%s: %s", spec.Name, r.Error)
	}
	return status, err
}

// consoleTail is the end of the console log of a booted run, read in the
// helper's namespace while it lives.
func consoleTail(pid int, spec runSpec, n int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", pid, spec.console()))
	if err != nil {
		return nil
	}
	return backend.LastLines(string(b), n)
}

// runHere runs spec's command under nspawn, started from a thread of
// nsbox's own that has a mount namespace of its own: a helper process
// would cost a second start of nsbox (about 25 ms here, a third of what
// nsbox adds to nspawn's own time). The thread stays locked and ends with
// its goroutine, never to run other Go code in the run's namespace; the
// Go runtime starts new threads from a clean one, and the children
// forked here (the user namespace's holder, nspawn) inherit the
// namespace.
func runHere(ctx context.Context, spec runSpec) (int, error) {
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{err: fmt.Errorf("a mount namespace for the run: %w", err)}
			return
		}
		status, err := runInNamespace(ctx, spec)
		done <- result{status, err}
	}()
	r := <-done
	return r.status, r.err
}

// runInNamespace mounts the run's tree and runs nspawn on it, in the
// calling thread's own mount namespace. Nothing here unmounts: the
// namespace goes with its last thread or process, its mounts with it.
func runInNamespace(ctx context.Context, spec runSpec) (int, error) {
	if err := mountRunTree(ctx, spec); err != nil {
		return 0, err
	}
	r := host.ExecRunner{}
	argv := spec.argv()
	c := &host.Cmd{Path: argv[0], Args: argv[1:], Pdeathsig: syscall.SIGTERM}
	// nspawn on a host whose /run is no tmpfs ends with a line about its
	// propagation directory that means nothing here, and an interrupted
	// run with one about the command it killed.
	killed := newLineFilter(os.Stderr, "Container "+spec.Name+" terminated by signal KILL.")
	defer killed.Flush()
	stderr := newLineFilter(killed, propagateNoise(spec.Name))
	defer stderr.Flush()
	var status int
	var err error
	if spec.TTY {
		c.Foreground = true
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, stderr
		status, err = backend.StatusOf(r.Run(ctx, c))
	} else {
		status, err = backend.RunExec(ctx, r, c, backend.ExecSpec{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: stderr})
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return status, err
}

// RunHelper is the body of nsbox __run SPEC, the helper of a booted run,
// in a mount namespace of its own. SIGTERM from nsbox (interrupted, or
// dead: PR_SET_PDEATHSIG) or the terminal's SIGINT ends the machine in
// order, and the helper waits for it. It makes the namespace's mounts
// private, mounts a tmpfs on spec.Dir with the run's upper in it, mounts
// the tree, and boots it (under the direct backend's supervisor where
// there is no machined). Its result goes to fd 3; it returns its own exit
// status. Nothing here unmounts: the namespace goes with its last
// process, and its mounts with it.
func RunHelper(specJSON string) int {
	out := os.NewFile(3, "result")
	say := func(r runResult) int {
		if out != nil {
			_ = json.NewEncoder(out).Encode(r)
			out.Close()
		}
		if r.Error != "" {
			fmt.Fprintf(os.Stderr, "nsbox: %s\n", r.Error)
			return 1
		}
		return r.Status
	}
	var spec runSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil || !spec.Boot {
		return say(runResult{Error: fmt.Sprintf("run helper: not a booted run's spec (%v)", err)})
	}
	// Not nsbox's own handling, where a second signal exits at once.
	signal.Reset(syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer cancel()
	if err := mountRunTree(ctx, spec); err != nil {
		return say(runResult{Error: err.Error()})
	}
	return say(runBootedHelper(ctx, host.ExecRunner{}, spec, spec.argv()))
}

// mountRunTree makes the run's tree in the helper's namespace: mounts
// private (nothing reaches the host's), a tmpfs on spec.Dir with the
// upper, and one over /run/systemd/nspawn, where nspawn keeps its locks
// and propagation directory, so that not even a SIGKILLed nspawn leaves
// them.
func mountRunTree(ctx context.Context, spec runSpec) error {
	if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the run's mounts private: %w", err)
	}
	for _, d := range []string{spec.Dir, "/run/systemd/nspawn"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", d, err)
		}
	}
	if len(spec.Lowers) == 0 {
		return errors.New("run helper: no lower layer")
	}
	top := spec.Lowers[0]
	if err := storage.PrepareUpper(spec.upper(), spec.work(), top.Path, spec.UIDBase, top.Owner); err != nil {
		return fmt.Errorf("prepare the run's upper: %w", err)
	}
	if err := os.Mkdir(spec.tree(), 0o755); err != nil {
		return err
	}
	s := storage.Stack{Target: spec.tree(), Upper: spec.upper(), Work: spec.work(), Scratch: spec.scratch(),
		Lowers: spec.Lowers, UIDBase: spec.UIDBase}
	if err := storage.MountStack(ctx, host.ExecRunner{}, s); err != nil {
		return err
	}
	if !spec.Boot {
		// nspawn names the machine's host itself.
		return nil
	}
	// A booted machine's systemd takes its name from /etc/hostname.
	if err := bootstrap.Personalise(spec.tree(), spec.Name); err != nil {
		return fmt.Errorf("name the run's machine: %w", err)
	}
	return storage.Shift(spec.upper(), 0, spec.UIDBase)
}

// runBootedHelper boots the tree: under the direct backend's supervisor
// (which gives it a cgroup of its own and records it for shell and stop)
// or, where machined registers it, nspawn alone in a scope of machined's.
// The console goes to a log in the run's tmpfs.
func runBootedHelper(ctx context.Context, r host.Runner, spec runSpec, argv []string) runResult {
	log, err := os.OpenFile(spec.console(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return runResult{Error: err.Error()}
	}
	defer log.Close()
	c := &host.Cmd{Path: argv[0], Args: argv[1:], Stdout: log, Stderr: log, Pdeathsig: syscall.SIGTERM,
		KillGrace: 20 * time.Second}
	if len(spec.Supervisor) > 0 {
		args := append(append(append([]string{}, spec.Supervisor[1:]...), spec.State, spec.console(), "--"), argv...)
		c.Path, c.Args = spec.Supervisor[0], args
	}
	err = r.Run(ctx, c)
	if ctx.Err() != nil {
		return runResult{}
	}
	if _, err := backend.StatusOf(err); err != nil {
		return runResult{Error: err.Error()}
	}
	// The machine ended: nsbox ends it after the command, or it stopped
	// by itself. Its last lines say why.
	b, _ := os.ReadFile(spec.console())
	return runResult{Log: backend.LastLines(string(b), 15)}
}
