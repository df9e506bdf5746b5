package dbusapi

import (
	"context"
	"os"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
)

const (
	machinedDest      = "org.freedesktop.machine1"
	machinedPath      = "/org/freedesktop/machine1"
	machinePathPrefix = "/org/freedesktop/machine1/machine/"
	managerIface      = "org.freedesktop.machine1.Manager"
	machineIface      = "org.freedesktop.machine1.Machine"
	propertiesIface   = "org.freedesktop.DBus.Properties"
)

// Machined is the client of systemd-machined (org.freedesktop.machine1).
// It is safe for concurrent use.
type Machined struct {
	conn    *dbus.Conn
	manager dbus.BusObject
}

// MachineEntry is one row of ListMachines.
type MachineEntry struct {
	Name    string
	Class   string // "container", "vm" or "host"
	Service string // who registered it: "nspawn", ...
}

// ListMachines lists the machines machined knows, the host included.
func (c *Machined) ListMachines() ([]MachineEntry, error) {
	var rows []struct {
		Name, Class, Service string
		Path                 dbus.ObjectPath
	}
	if err := c.manager.Call(managerIface+".ListMachines", 0).Store(&rows); err != nil {
		return nil, mapMachinedErr(err)
	}
	out := make([]MachineEntry, 0, len(rows))
	for _, r := range rows {
		out = append(out, MachineEntry{Name: r.Name, Class: r.Class, Service: r.Service})
	}
	return out, nil
}

// Machine is the state machined keeps of one machine.
type Machine struct {
	Name          string // the name asked for
	Class         string // "container", "vm" or "host"
	Service       string // who registered it: "nspawn", ...
	Unit          string // the unit the machine runs in
	Leader        int    // PID 1 of a container, as the host sees it; 0 unknown
	RootDirectory string
	Since         time.Time // when machined registered it; zero unknown
}

// GetMachine reads the properties of a machine: one GetAll on the
// machine's object path, which is derived from its name as machined
// derives it, so the GetMachine call that would look the path up is saved.
// A machine machined does not know answers ErrNoSuchMachine.
func (c *Machined) GetMachine(name string) (Machine, error) {
	ms, errs := c.GetMachines([]string{name})
	return ms[0], errs[0]
}

// GetMachines is GetMachine for several machines at once, in one round
// trip: out[i] and errs[i] are GetMachine's answers for names[i].
func (c *Machined) GetMachines(names []string) (out []Machine, errs []error) {
	calls := make([]batchCall, len(names))
	for i, n := range names {
		calls[i] = batchCall{
			obj:    c.conn.Object(machinedDest, machineObjectPath(n)),
			method: propertiesIface + ".GetAll",
			args:   []any{machineIface},
		}
	}
	out, errs = make([]Machine, len(names)), make([]error, len(names))
	for i, call := range callAll(context.Background(), calls) {
		var props map[string]dbus.Variant
		if err := call.Store(&props); err != nil {
			errs[i] = mapMachinedErr(err)
			continue
		}
		out[i] = decodeMachine(names[i], props)
	}
	return out, errs
}

// decodeMachine turns machine properties into a Machine. A property that is
// missing or of another type than machined's is left at its zero value.
func decodeMachine(name string, props map[string]dbus.Variant) Machine {
	m := Machine{Name: name}
	m.Class, _ = props["Class"].Value().(string)
	m.Service, _ = props["Service"].Value().(string)
	m.Unit, _ = props["Unit"].Value().(string)
	m.RootDirectory, _ = props["RootDirectory"].Value().(string)
	if l, ok := props["Leader"].Value().(uint32); ok {
		m.Leader = int(l)
	}
	// Realtime microseconds; systemd's "unset" is 0 or the maximum.
	if ts, ok := props["Timestamp"].Value().(uint64); ok && ts > 0 && ts < 1<<63 {
		m.Since = time.UnixMicro(int64(ts))
	}
	return m
}

// KillMachine sends sig to the machine's leader ("leader") or to all its
// processes ("all").
func (c *Machined) KillMachine(name, who string, sig syscall.Signal) error {
	err := c.manager.Call(managerIface+".KillMachine", 0, name, who, int32(sig)).Err
	return mapMachinedErr(err)
}

// TerminateMachine kills all processes of the machine and unregisters it.
func (c *Machined) TerminateMachine(name string) error {
	return mapMachinedErr(c.manager.Call(managerIface+".TerminateMachine", 0, name).Err)
}

// OpenMachineShell starts a login shell for user inside the machine, as
// machinectl shell does, and returns the master side of its pseudo terminal.
// machined does not report the shell's exit status.
func (c *Machined) OpenMachineShell(name, user string, env []string) (*os.File, error) {
	var fd dbus.UnixFD
	var pty string
	err := c.manager.Call(managerIface+".OpenMachineShell", 0, name, user, "", []string{}, env).Store(&fd, &pty)
	if err != nil {
		return nil, mapMachinedErr(err)
	}
	return os.NewFile(uintptr(fd), pty), nil
}

// Subscribe delivers the name of every machine machined registers or drops
// (the MachineNew and MachineRemoved signals) until ctx ends or the
// connection closes; then the channel closes. A reader too slow loses
// names, never blocks the connection.
func (c *Machined) Subscribe(ctx context.Context) (<-chan string, error) {
	match := func(member string) []dbus.MatchOption {
		return []dbus.MatchOption{
			dbus.WithMatchObjectPath(machinedPath),
			dbus.WithMatchInterface(managerIface),
			dbus.WithMatchMember(member),
		}
	}
	sigs := make(chan *dbus.Signal, 16)
	c.conn.Signal(sigs)
	for i, member := range []string{"MachineNew", "MachineRemoved"} {
		if err := c.conn.AddMatchSignalContext(ctx, match(member)...); err != nil {
			if i > 0 {
				_ = c.conn.RemoveMatchSignal(match("MachineNew")...)
			}
			c.conn.RemoveSignal(sigs)
			return nil, mapMachinedErr(err)
		}
	}
	out := make(chan string, 16)
	go func() {
		defer close(out)
		defer func() {
			c.conn.RemoveSignal(sigs)
			if c.conn.Connected() {
				_ = c.conn.RemoveMatchSignal(match("MachineNew")...)
				_ = c.conn.RemoveMatchSignal(match("MachineRemoved")...)
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case s, ok := <-sigs:
				if !ok {
					return // connection closed
				}
				if name, ok := machineSignal(s); ok {
					select {
					case out <- name:
					default:
					}
				}
			}
		}
	}()
	return out, nil
}

// machineSignal is the machine name a MachineNew or MachineRemoved signal
// carries. The connection delivers every signal a match of the process
// asked for (systemd's JobRemoved too), so the rest are passed over.
func machineSignal(s *dbus.Signal) (string, bool) {
	if s == nil || s.Path != machinedPath ||
		(s.Name != managerIface+".MachineNew" && s.Name != managerIface+".MachineRemoved") ||
		len(s.Body) == 0 {
		return "", false
	}
	name, ok := s.Body[0].(string)
	return name, ok
}

// machineObjectPath is the object path machined gives the machine name.
func machineObjectPath(name string) dbus.ObjectPath {
	return dbus.ObjectPath(machinePathPrefix + escapeLabel(name))
}

// escapeLabel escapes a name for an object path as sd-bus does
// (bus_label_escape): every byte but a letter, or a digit after the first,
// becomes _XX in lower-case hex; "" becomes "_".
func escapeLabel(s string) string {
	if s == "" {
		return "_"
	}
	const hex = "0123456789abcdef"
	out := make([]byte, 0, len(s)*3)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9') {
			out = append(out, c)
			continue
		}
		out = append(out, '_', hex[c>>4], hex[c&0xf])
	}
	return string(out)
}
