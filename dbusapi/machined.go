// Package dbusapi talks to systemd-machined and systemd over the system
// bus. It is the only package that imports godbus or go-systemd: thin typed
// methods named after the D-Bus methods they call, plain structs for
// results, no policy.
package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/machine1"
	"github.com/godbus/dbus/v5"
)

const (
	machinedDest = "org.freedesktop.machine1"
	machinedPath = "/org/freedesktop/machine1"
	managerIface = "org.freedesktop.machine1.Manager"
	machineIface = "org.freedesktop.machine1.Machine"
)

// ErrNoSuchMachine is machined's answer for a name it does not know.
var ErrNoSuchMachine = errors.New("machined has no such machine")

// Machined is a connection to systemd-machined.
type Machined struct {
	m    *machine1.Conn
	conn *dbus.Conn
}

// NewMachined connects to machined on the system bus and checks it answers.
func NewMachined() (*Machined, error) {
	m, err := machine1.New()
	if err != nil {
		return nil, fmt.Errorf("system bus: %w", err)
	}
	conn, err := dbus.SystemBus()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("system bus: %w", err)
	}
	c := &Machined{m: m, conn: conn}
	if _, err := c.ListMachines(); err != nil {
		m.Close()
		return nil, fmt.Errorf("machined: %w", err)
	}
	return c, nil
}

// Close drops the connection.
func (c *Machined) Close() { c.m.Close() }

// MachineEntry is one row of ListMachines.
type MachineEntry struct {
	Name    string
	Class   string
	Service string
}

// ListMachines lists the machines machined knows, the host included.
func (c *Machined) ListMachines() ([]MachineEntry, error) {
	ms, err := c.m.ListMachines()
	if err != nil {
		return nil, err
	}
	out := make([]MachineEntry, 0, len(ms))
	for _, m := range ms {
		out = append(out, MachineEntry{Name: m.Name, Class: m.Class, Service: m.Service})
	}
	return out, nil
}

// Machine is the state machined keeps of one machine.
type Machine struct {
	Name              string
	Class             string
	Service           string
	Unit              string
	Leader            int
	RootDirectory     string
	State             string
	Since             time.Time
	NetworkInterfaces []int
}

// GetMachine reads the properties of a machine.
func (c *Machined) GetMachine(name string) (Machine, error) {
	// Two calls: GetMachine for the path, then GetAll on it. A machine
	// that goes away between them answers UnknownObject (mapErr).
	props, err := c.m.DescribeMachine(name)
	if err != nil {
		return Machine{}, mapErr(err)
	}
	m := Machine{Name: name}
	m.Class, _ = props["Class"].(string)
	m.Service, _ = props["Service"].(string)
	m.Unit, _ = props["Unit"].(string)
	m.RootDirectory, _ = props["RootDirectory"].(string)
	m.State, _ = props["State"].(string)
	if l, ok := props["Leader"].(uint32); ok {
		m.Leader = int(l)
	}
	if ts, ok := props["Timestamp"].(uint64); ok && ts > 0 {
		m.Since = time.UnixMicro(int64(ts))
	}
	if ifs, ok := props["NetworkInterfaces"].([]int32); ok {
		for _, i := range ifs {
			m.NetworkInterfaces = append(m.NetworkInterfaces, int(i))
		}
	}
	return m, nil
}

// GetMachineAddresses lists the machine's IP addresses as text.
func (c *Machined) GetMachineAddresses(name string) ([]string, error) {
	var raw []struct {
		Family int32
		Addr   []byte
	}
	err := c.conn.Object(machinedDest, machinedPath).
		Call(managerIface+".GetMachineAddresses", 0, name).Store(&raw)
	if err != nil {
		return nil, mapErr(err)
	}
	var out []string
	for _, a := range raw {
		if ip := ipString(a.Addr); ip != "" {
			out = append(out, ip)
		}
	}
	return out, nil
}

// GetMachineOSRelease reads the machine's os-release fields.
func (c *Machined) GetMachineOSRelease(name string) (map[string]string, error) {
	var fields map[string]string
	err := c.conn.Object(machinedDest, machinedPath).
		Call(managerIface+".GetMachineOSRelease", 0, name).Store(&fields)
	return fields, mapErr(err)
}

// KillMachine sends sig to the machine's leader ("leader") or to all its
// processes ("all").
func (c *Machined) KillMachine(name, who string, sig syscall.Signal) error {
	return mapErr(c.m.KillMachine(name, who, sig))
}

// TerminateMachine kills all processes of the machine and unregisters it.
func (c *Machined) TerminateMachine(name string) error {
	return mapErr(c.m.TerminateMachine(name))
}

// OpenMachineShell starts a login shell for user inside the machine, as
// machinectl shell does, and returns the master side of its pseudo terminal.
// machined does not report the shell's exit status.
func (c *Machined) OpenMachineShell(name, user string, env []string) (*os.File, error) {
	var fd dbus.UnixFD
	var pty string
	err := c.conn.Object(machinedDest, machinedPath).
		Call(managerIface+".OpenMachineShell", 0, name, user, "", []string{}, env).Store(&fd, &pty)
	if err != nil {
		return nil, mapErr(err)
	}
	return os.NewFile(uintptr(fd), pty), nil
}

// goneErrors are the answers that mean the machine is not (or no longer)
// there: machined's NoSuchMachine for a name, and the bus's UnknownObject
// for a machine's object path that went away between GetMachine and the
// call on the path (DescribeMachine makes both).
var goneErrors = map[string]bool{
	"org.freedesktop.machine1.NoSuchMachine":   true,
	"org.freedesktop.DBus.Error.UnknownObject": true,
}

// mapErr turns the answers that say the machine is gone into
// ErrNoSuchMachine, keeping machined's text.
func mapErr(err error) error {
	var de dbus.Error
	var dp *dbus.Error
	switch {
	case errors.As(err, &de) && goneErrors[de.Name], errors.As(err, &dp) && dp != nil && goneErrors[dp.Name]:
		return fmt.Errorf("%w: %v", ErrNoSuchMachine, err)
	}
	return err
}

func ipString(b []byte) string {
	if len(b) != 4 && len(b) != 16 {
		return ""
	}
	return net.IP(b).String()
}

// Subscribe delivers the name of every machine machined registers or
// drops (the MachineNew and MachineRemoved signals) until ctx ends.
func (c *Machined) Subscribe(ctx context.Context) (<-chan string, error) {
	opts := []dbus.MatchOption{dbus.WithMatchInterface(managerIface), dbus.WithMatchObjectPath(machinedPath)}
	if err := c.conn.AddMatchSignal(append(opts, dbus.WithMatchMember("MachineNew"))...); err != nil {
		return nil, err
	}
	if err := c.conn.AddMatchSignal(append(opts, dbus.WithMatchMember("MachineRemoved"))...); err != nil {
		return nil, err
	}
	sigs := make(chan *dbus.Signal, 16)
	c.conn.Signal(sigs)
	out := make(chan string, 16)
	go func() {
		defer c.conn.RemoveSignal(sigs)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s == nil || len(s.Body) == 0 {
					continue
				}
				if name, ok := s.Body[0].(string); ok {
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
