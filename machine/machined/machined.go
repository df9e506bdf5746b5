package machined

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// MachinedAPI is the part of machined nsbox uses; dbusapi.Backend
// implements it, tests fake it.
type MachinedAPI interface {
	ListMachines() ([]dbusapi.MachineEntry, error)
	GetMachine(name string) (dbusapi.Machine, error)
	GetMachines(names []string) ([]dbusapi.Machine, []error)
	KillMachine(name, who string, sig syscall.Signal) error
	TerminateMachine(name string) error
	OpenMachineShell(name, user string, env []string) (*os.File, error)
}

// Subscriber is machined's signal stream; dbusapi.Backend implements it.
type Subscriber interface {
	Subscribe(ctx context.Context) (<-chan string, error)
}

// Changes implements Watcher from machined's MachineNew and MachineRemoved.
func (m *Backend) Changes(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	s, ok := m.Machines.(Subscriber)
	if !ok {
		return out
	}
	names, err := s.Subscribe(ctx)
	if err != nil {
		return out
	}
	go func() {
		for range names {
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}

// SystemdAPI is the part of the systemd manager nsbox uses.
type SystemdAPI interface {
	StartTransientUnit(ctx context.Context, spec dbusapi.ServiceSpec) (string, error)
	StartUnit(ctx context.Context, name string) (string, error)
	GetUnitState(ctx context.Context, name string) (dbusapi.UnitState, error)
	StopUnit(ctx context.Context, name string) error
	ResetFailedUnit(ctx context.Context, name string) error
	Reload(ctx context.Context) error
	EnableUnitFiles(ctx context.Context, names []string) error
	SetUnitProperties(ctx context.Context, name string, runtime bool, props []dbusapi.UnitProperty) error
	GetUnitUsage(ctx context.Context, name string) (dbusapi.UnitUsage, error)
}

// Backend runs machines as transient systemd services that machined
// registers, as systemd-nspawn@.service does.
type Backend struct {
	Machines MachinedAPI
	Systemd  SystemdAPI
	Runner   host.Runner
	// UnitDir holds the unit files of enabled machines (/etc/systemd/system).
	UnitDir string
}

// Name implements Backend.
func (m *Backend) Name() string { return "machined" }

// Registered implements Backend.
func (m *Backend) Registered() bool { return true }

// UnitName is the transient service nsbox boot runs a machine in.
func UnitName(name string) string { return "nsbox-" + name + ".service" }

// AutostartUnitName is the unit file nsbox enable installs. It has a name
// of its own: a unit file may not share the name of a transient unit that
// systemd still holds.
func AutostartUnitName(name string) string { return "nsbox@" + name + ".service" }

// ServiceSpec is the transient unit for a machine, with the sandboxing of
// systemd's own systemd-nspawn@.service.
func ServiceSpec(spec backend.StartSpec) dbusapi.ServiceSpec {
	return dbusapi.ServiceSpec{
		Name:                   UnitName(spec.Name),
		Description:            "nsbox machine " + spec.Name,
		ExecStart:              escapeExecArgs(spec.Argv),
		Type:                   "notify",
		Slice:                  "machine.slice",
		Delegate:               true,
		IOAccounting:           true,
		KillMode:               "mixed",
		RestartForceExitStatus: []int32{133},
		SuccessExitStatus:      []int32{133},
		DevicePolicy:           "closed",
		DeviceAllow: [][2]string{
			{"/dev/net/tun", "rwm"},
			{"char-pts", "rw"},
			{"/dev/loop-control", "rw"},
			{"block-loop", "rw"},
			{"block-blkext", "rw"},
			{"/dev/mapper/control", "rw"},
			{"block-device-mapper", "rw"},
		},
		TimeoutStart:  spec.Timeout,
		ExecStartPost: escapeExecArgs(spec.PostStart),
		ExecStartPre:  escapeExecArgs(spec.PreStart),
		ExecStopPost:  escapeExecArgs(spec.StopPost),
		Properties:    spec.Limits.Properties(),
	}
}

// Start implements Backend. The unit is Type=notify and nspawn runs with
// --notify-ready=yes, so the start job ends once the container's own
// systemd has finished starting up.
func (m *Backend) Start(ctx context.Context, spec backend.StartSpec) error {
	unit := UnitName(spec.Name)
	// A failed unit of an earlier boot keeps the name taken.
	_ = m.Systemd.ResetFailedUnit(ctx, unit)
	var result string
	var err error
	if _, err := m.dropDisabledUnit(ctx, spec.Name); err != nil {
		return err
	}
	if m.HasUnitFile(spec.Name) {
		// An enabled machine starts from its unit file, brought up to date
		// with the options of this boot.
		if err := m.writeUnit(ctx, spec); err != nil {
			return err
		}
		// systemd may hold an old "not found" for the name (it was a
		// transient unit when the file was written): read files again.
		if err := m.Systemd.Reload(ctx); err != nil {
			return err
		}
		unit = AutostartUnitName(spec.Name)
		_ = m.Systemd.ResetFailedUnit(ctx, unit)
		result, err = m.Systemd.StartUnit(ctx, unit)
	} else {
		// Unloaded once stopped, so a unit file for the name (nsbox enable)
		// takes over at once, and a failed boot leaves no unit behind.
		s := ServiceSpec(spec)
		s.CollectMode = "inactive-or-failed"
		result, err = m.Systemd.StartTransientUnit(ctx, s)
	}
	if err != nil {
		return err
	}
	if result != "done" {
		return fmt.Errorf("unit %s: start job %s", unit, result)
	}
	return nil
}

// List implements Backend. machined is asked for every machine's
// properties at once, in one round trip where one machine after another
// would take one each. Addresses are not asked for: machined forks into
// each machine's network namespace for them, where the caller reads them
// with netlink (network.Inspect).
func (m *Backend) List(ctx context.Context) ([]backend.Running, error) {
	entries, err := m.Machines.ListMachines()
	if err != nil {
		return nil, fmt.Errorf("machined: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Class != "host" {
			names = append(names, e.Name)
		}
	}
	ms, errs := m.Machines.GetMachines(names)
	var out []backend.Running
	for i, name := range names {
		r, err := m.running(name, ms[i], errs[i])
		if errors.Is(err, backend.ErrNotRunning) {
			continue // gone since ListMachines: it is stopped, or starting again
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Get implements Backend. A machine that machined drops while it is
// asked (NoSuchMachine, or UnknownObject for its object path) or whose
// leader is gone is not running: between the death of its PID 1 and the
// restart of its unit, a machine is stopped, not an error.
func (m *Backend) Get(ctx context.Context, name string) (backend.Running, error) {
	mm, err := m.Machines.GetMachine(name)
	return m.running(name, mm, err)
}

// running turns machined's answer for one machine into Running.
func (m *Backend) running(name string, mm dbusapi.Machine, err error) (backend.Running, error) {
	if errors.Is(err, dbusapi.ErrNoSuchMachine) {
		return backend.Running{}, backend.ErrNotRunning
	}
	if err != nil {
		return backend.Running{}, fmt.Errorf("machined: %w", err)
	}
	if mm.Leader > 0 && !backend.PidExists(mm.Leader) {
		// A registration whose leader is gone is stale (a crash between
		// machined and its unit): drop it so the name can boot again.
		logrus.Warnf("machined still lists %s, whose leader %d is gone: terminating the stale registration", name, mm.Leader)
		_ = m.Machines.TerminateMachine(name)
		return backend.Running{}, backend.ErrNotRunning
	}
	return backend.Running{
		Name: mm.Name, Class: mm.Class, Service: mm.Service, Unit: mm.Unit,
		Leader: mm.Leader, RootDirectory: mm.RootDirectory, Since: mm.Since,
	}, nil
}

// Kill implements Backend.
func (m *Backend) Kill(ctx context.Context, name string, all bool, sig syscall.Signal) error {
	who := "leader"
	if all {
		who = "all"
	}
	err := m.Machines.KillMachine(name, who, sig)
	if errors.Is(err, dbusapi.ErrNoSuchMachine) {
		return backend.ErrNotRunning
	}
	return err
}

// Terminate implements Backend.
func (m *Backend) Terminate(ctx context.Context, name string) error {
	err := m.Machines.TerminateMachine(name)
	if errors.Is(err, dbusapi.ErrNoSuchMachine) {
		return backend.ErrNotRunning
	}
	return err
}

// escapeExecArg doubles '$': systemd expands $VAR in a transient unit's
// command line, and systemd-run of systemd 252 cannot turn that off.
func escapeExecArg(s string) string { return strings.ReplaceAll(s, "$", "$$") }

// escapeExecArgs escapes every argument of a command line for a transient
// unit: a bind path or root directory with "$x" in it must reach nspawn as
// written.
func escapeExecArgs(argv []string) []string {
	if argv == nil {
		return nil
	}
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = escapeExecArg(a)
	}
	return out
}

// SystemdRunArgs is the command line that runs argv in machine name and
// passes its exit status back. systemd-run reports a command killed by a
// signal as 255 (or 0 for SIGTERM), so argv runs under a shell that turns
// the signal into 128+N; "exit $?" keeps the shell from exec'ing argv.
func SystemdRunArgs(name string, e backend.ExecSpec) []string {
	args := []string{"--machine=" + name, "--quiet", "--wait", "--collect", "--service-type=exec"}
	if e.TTY {
		args = append(args, "--pty")
	} else {
		args = append(args, "--pipe")
	}
	user := e.User
	if user == "" {
		user = "root"
	}
	args = append(args, "--uid="+user)
	if e.Workdir != "" {
		args = append(args, "--working-directory="+e.Workdir)
	}
	for _, kv := range e.Env {
		args = append(args, "--setenv="+kv)
	}
	args = append(args, "--", "/bin/sh", "-c", escapeExecArg(`"$@"; exit $?`), "sh")
	for _, a := range e.Argv {
		args = append(args, escapeExecArg(a))
	}
	return args
}

// Exec implements Backend through systemd-run --machine, which runs the
// command as a service of the container's own systemd.
func (m *Backend) Exec(ctx context.Context, name string, e backend.ExecSpec) (int, error) {
	c := &host.Cmd{Path: "systemd-run", Args: SystemdRunArgs(name, e)}
	if e.TTY && backend.IsTerminal(os.Stdin) && backend.IsTerminal(os.Stdout) {
		// systemd-run allocates the pseudo terminal in the container and
		// proxies it to ours itself; it must stay in our foreground group.
		c.Foreground = true
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		return backend.StatusOf(m.Runner.Run(ctx, c))
	}
	if e.TTY {
		// Without a terminal here (shell -t): a pseudo terminal of the
		// machine's own devpts, as the direct backend makes one, whose
		// end systemd-run --pipe passes to the command (systemd-run 252
		// --pty gives nothing on plain pipes, nor on a terminal of
		// nsbox's: its service cannot open that one); nsbox copies the
		// other end to and from its stdin and stdout.
		r, err := m.Get(ctx, name)
		if err != nil {
			return 0, err
		}
		leader, err := backend.ProcOf(r.Leader)
		if err != nil {
			return 0, err
		}
		master, slave, err := backend.OpenMachinePTY(leader)
		if err != nil {
			return 0, fmt.Errorf("%s: a terminal for the command: %w", name, err)
		}
		pipe := e
		pipe.TTY = false
		c.Args = SystemdRunArgs(name, pipe)
		return backend.RunOnTerminal(ctx, m.Runner, c, master, slave)
	}
	return backend.RunExec(ctx, m.Runner, c, e)
}

// Shell implements Backend: LoginShell without its exit status.
func (m *Backend) Shell(ctx context.Context, name, user string) error {
	_, err := m.LoginShell(ctx, name, user)
	return err
}

// CompanionUnitName is the unit a machine's companion runs in (its
// loopback forwards). A machine name has no "@", so it is no other
// machine's unit.
func CompanionUnitName(name string) string { return "nsbox-ports@" + name + ".service" }

// StartCompanion implements backend.Companions: argv runs in a transient
// service bound to the unit the machine runs in (BindsTo=), so systemd
// stops it when the machine's unit stops, by nsbox, machinectl, a
// poweroff inside or a crash. It is not ordered after that unit: it is
// started from the unit's ExecStartPost=, while the unit is still
// starting.
func (m *Backend) StartCompanion(ctx context.Context, name string, argv []string) error {
	r, err := m.Get(ctx, name)
	if err != nil {
		return err
	}
	if r.Unit != UnitName(name) && r.Unit != AutostartUnitName(name) {
		return fmt.Errorf("%s runs in %s, not a unit of nsbox's", name, r.Unit)
	}
	unit := CompanionUnitName(name)
	if st, err := m.Systemd.GetUnitState(ctx, unit); err == nil && (st.ActiveState == "active" || st.ActiveState == "activating") {
		return nil
	}
	_ = m.Systemd.ResetFailedUnit(ctx, unit)
	result, err := m.Systemd.StartTransientUnit(ctx, dbusapi.ServiceSpec{
		Name:        unit,
		Description: "nsbox loopback forwards of machine " + name,
		ExecStart:   escapeExecArgs(argv),
		Type:        "exec",
		CollectMode: "inactive-or-failed",
		// SIGTERM ends it with nsbox's status for it.
		SuccessExitStatus: []int32{143},
		Properties:        []dbusapi.UnitProperty{{Name: "BindsTo", Value: []string{r.Unit}}},
	})
	if err != nil {
		return err
	}
	if result != "done" {
		return fmt.Errorf("unit %s: start job %s", unit, result)
	}
	return nil
}

// StopCompanion implements backend.Companions.
func (m *Backend) StopCompanion(ctx context.Context, name string) error {
	unit := CompanionUnitName(name)
	st, err := m.Systemd.GetUnitState(ctx, unit)
	if err != nil || st.ActiveState == "inactive" || st.ActiveState == "" {
		return nil
	}
	if st.ActiveState != "failed" {
		if err := m.Systemd.StopUnit(ctx, unit); err != nil {
			return err
		}
	}
	return m.Systemd.ResetFailedUnit(ctx, unit)
}

var _ backend.Companions = (*Backend)(nil)

// Cleanup implements Backend: a failed unit is forgotten so the next boot
// can use the name, and a unit still up is stopped, its companion too.
func (m *Backend) Cleanup(ctx context.Context, name string) {
	for _, unit := range []string{UnitName(name), AutostartUnitName(name), CompanionUnitName(name)} {
		if st, err := m.Systemd.GetUnitState(ctx, unit); err == nil && st.ActiveState != "inactive" && st.ActiveState != "failed" {
			_ = m.Systemd.StopUnit(ctx, unit)
		}
		_ = m.Systemd.ResetFailedUnit(ctx, unit)
	}
	if _, err := m.dropDisabledUnit(ctx, name); err != nil {
		logrus.Warnf("remove the unit file of disabled %s: %v", name, err)
	}
}

// LogTail implements Backend: the unit's journal; during a boot
// (WithBootStart) only what it logged since the boot began.
func (m *Backend) LogTail(ctx context.Context, name string, n int) []string {
	var out strings.Builder
	args := []string{"--unit=" + UnitName(name), "--unit=" + AutostartUnitName(name), "--lines=" + fmt.Sprint(n), "--no-pager", "--output=cat", "--boot"}
	if since, ok := backend.BootStartOf(ctx); ok {
		args = append(args, fmt.Sprintf("--since=@%d.%06d", since.Unix(), since.Nanosecond()/1000))
	}
	err := m.Runner.Run(ctx, &host.Cmd{
		Path:   "journalctl",
		Args:   args,
		Stdout: &out,
	})
	if err != nil {
		return nil
	}
	return backend.LastLines(out.String(), n)
}

// SetLimits implements Backend: the unit's properties change now; the
// unit file of an enabled machine is rewritten by the next boot.
func (m *Backend) SetLimits(ctx context.Context, name string, l backend.Limits) error {
	props := l.Properties()
	if len(props) == 0 {
		return nil
	}
	return m.Systemd.SetUnitProperties(ctx, UnitName(name), true, props)
}

// Usage implements Backend from the unit's accounting.
func (m *Backend) Usage(ctx context.Context, name string) (backend.Usage, error) {
	r, err := m.Get(ctx, name)
	if err != nil {
		return backend.Usage{}, err
	}
	u, err := m.Systemd.GetUnitUsage(ctx, r.Unit)
	if err != nil {
		return backend.Usage{}, err
	}
	const unknown = ^uint64(0)
	if u.MemoryCurrent == unknown && u.TasksCurrent == unknown && u.CPUUsageNSec == unknown {
		return backend.Usage{}, fmt.Errorf("no resource accounting for %s", r.Unit)
	}
	known := func(v uint64) uint64 {
		if v == unknown {
			return 0
		}
		return v
	}
	out := backend.Usage{Memory: known(u.MemoryCurrent), Tasks: known(u.TasksCurrent), CPUTime: time.Duration(known(u.CPUUsageNSec))}
	if u.IOReadBytes != unknown && u.IOWriteBytes != unknown {
		out.IORead, out.IOWrite = &u.IOReadBytes, &u.IOWriteBytes
	}
	return out, nil
}

// LiftLimits lifts, on running machine name, the limits set in c: each
// unit property set to infinity (or the default weight).
func (m *Backend) LiftLimits(ctx context.Context, name string, c backend.Limits) error {
	r, err := m.Get(ctx, name)
	if err != nil {
		return err
	}
	return m.Systemd.SetUnitProperties(ctx, r.Unit, true, c.ClearProperties())
}
