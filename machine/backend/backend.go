package backend

import (
	"context"
	"io"
	"syscall"
	"time"
)

// Running is what a backend knows of one running machine.
type Running struct {
	Name          string
	Class         string // "container", "vm"
	Service       string // who registered it: "systemd-nspawn", "nsbox", ...
	Unit          string
	Leader        int
	RootDirectory string
	Since         time.Time
	// Addresses the backend knows without asking the network namespace.
	Addresses []string
}

// StartSpec is a machine ready to launch: its nspawn command line and what
// the backend needs to supervise it.
type StartSpec struct {
	Name string
	Root string
	// Argv is the full command line, systemd-nspawn first.
	Argv    []string
	Timeout time.Duration
	// PostStart runs once the machine is up (nsbox __network-up NAME).
	PostStart []string
	// PreStart runs before nspawn starts and StopPost after it stopped
	// (nsbox __storage mount|unmount NAME for an overlay machine).
	PreStart, StopPost []string
	// Companion runs beside the machine for as long as it runs, in a
	// session of its own (nsbox __ports NAME, the loopback forwards); the
	// direct backend's supervisor starts it and ends it before the
	// machine counts as stopped. The machined backend runs it through
	// Companions instead, from PostStart.
	Companion []string
	Limits    Limits
}

// Usage is what a running machine uses now.
type Usage struct {
	Memory  uint64        `json:"memory_bytes"`
	Tasks   uint64        `json:"tasks"`
	CPUTime time.Duration `json:"cpu_time_ns"`
	// IORead and IOWrite are the bytes its processes read from and
	// wrote to block devices (not the page cache) since it started; nil
	// where the host does not count them (cgroup v1's blkio counts only
	// throttled I/O on current kernels).
	IORead  *uint64 `json:"io_read_bytes,omitempty"`
	IOWrite *uint64 `json:"io_write_bytes,omitempty"`
}

// ExecSpec is a command to run inside a running machine.
type ExecSpec struct {
	Argv []string
	User string // "" means root
	Env  []string
	// Workdir is the directory the command starts in, a path inside the
	// machine ("" for its PID 1's).
	Workdir string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	// TTY gives the command a pseudo terminal of its own, proxied to the
	// caller's terminal; never the caller's terminal itself.
	TTY bool
}

// Backend runs machines. Two implement it: machined (systemd hosts) and
// direct (systemd-nspawn without machined, for hosts without systemd).
// Nothing outside this package chooses between them.
type Backend interface {
	// Name is "machined" or "direct".
	Name() string
	// Registered reports whether nspawn registers with machined.
	Registered() bool
	// Start launches the machine and returns once it runs; it does not
	// wait for the machine's own init.
	Start(ctx context.Context, spec StartSpec) error
	// List lists running machines, including ones nsbox did not start.
	List(ctx context.Context) ([]Running, error)
	// Get reports one running machine, or ErrNotRunning.
	Get(ctx context.Context, name string) (Running, error)
	// Kill sends sig to the machine's leader (its PID 1) or, with all, to
	// every process of it.
	Kill(ctx context.Context, name string, all bool, sig syscall.Signal) error
	// Terminate ends the machine at once.
	Terminate(ctx context.Context, name string) error
	// Exec runs a command in the machine and returns its exit status
	// (128+N for a signal).
	Exec(ctx context.Context, name string, e ExecSpec) (int, error)
	// Shell opens an interactive login shell for user on the caller's
	// terminal.
	Shell(ctx context.Context, name, user string) error
	// Cleanup removes what a failed or finished start left (a failed unit,
	// a state file).
	Cleanup(ctx context.Context, name string)
	// LogTail returns the last n lines of the machine's console or unit log.
	LogTail(ctx context.Context, name string, n int) []string
	// SetLimits applies limits to a running machine.
	SetLimits(ctx context.Context, name string, l Limits) error
	// LiftLimits lifts, on a running machine, the limits set in c.
	LiftLimits(ctx context.Context, name string, c Limits) error
	// Usage reads a running machine's resource use.
	Usage(ctx context.Context, name string) (Usage, error)
	// HostLogs writes the host side of the machine's log to w.
	HostLogs(ctx context.Context, name string, o LogOptions, w io.Writer) error
}

// Autostart is what a backend that can start machines with the host does:
// installing a unit file. Only the machined backend implements it.
type Autostart interface {
	// UnitFile renders the unit file, or refuses a spec with a value
	// that a unit file cannot carry.
	UnitFile(spec StartSpec) (string, error)
	Install(ctx context.Context, spec StartSpec) error
	Uninstall(ctx context.Context, name string) error
	UnitFileState(ctx context.Context, name string) string
	// Forget removes every trace of the machine's unit (nsbox remove).
	Forget(ctx context.Context, name string)
}

// StartHooks is a backend whose host starts machines without nsbox too
// (machinectl start, systemd-nspawn@NAME.service): pre runs before such a
// start and post after its stop (an overlay machine's mount and unmount);
// nil pre and post take them away.
type StartHooks interface {
	SetStartHooks(ctx context.Context, name string, pre, post []string) error
}

// Companions is a backend that runs a command beside a running machine
// in a unit of its own, bound to the machine's unit (the machined
// backend): it is stopped when the machine's unit stops, however it stops.
type Companions interface {
	// StartCompanion starts argv beside running machine name; a companion
	// that runs already is left as it is.
	StartCompanion(ctx context.Context, name string, argv []string) error
	// StopCompanion stops the machine's companion and waits for it.
	StopCompanion(ctx context.Context, name string) error
}

// Watcher is a backend that can tell when machines change, so events come
// at once instead of at the next poll.
type Watcher interface {
	Changes(ctx context.Context) <-chan struct{}
}

// SocketUnit is a host TCP port whose first connection boots a machine
// and is passed to one of its ports (enable --socket).
type SocketUnit struct {
	Machine  string
	Spec     string // as the user gave it, canonical: "tcp:8080:80"
	HostPort int
	// Proxy is the command the socket activates: it boots the machine
	// and passes the connections on (nsbox __socket-proxy NAME PORT).
	Proxy []string
}

// SocketActivation is a backend whose host can listen for a machine and
// start it on demand: systemd's socket units.
type SocketActivation interface {
	// InstallSocket installs, enables and starts u's socket and its
	// service, replacing the machine's earlier unit for the same port.
	InstallSocket(ctx context.Context, u SocketUnit) error
	// RemoveSockets stops and removes every socket of machine name.
	RemoveSockets(ctx context.Context, name string) error
	// Sockets lists the socket specs installed for machine name, and
	// which machine holds each host port ("tcp:8080" -> machine).
	Sockets(name string) []string
	SocketPorts() map[int]string
}
