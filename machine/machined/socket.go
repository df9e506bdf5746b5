package machined

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// A machine's socket units are named by the host port they listen on,
// which only one can hold: nsbox-tcp-PORT.socket and the service it
// activates, nsbox-tcp-PORT.service. The machine and the spec are kept
// in the socket unit itself (X-Nsbox* keys, which systemd ignores).
const (
	socketMachineKey = "X-NsboxMachine"
	socketSpecKey    = "X-NsboxSocket"
)

// socketUnitRE matches the names of nsbox's socket units.
var socketUnitRE = regexp.MustCompile(`^nsbox-tcp-([0-9]{1,5})\.socket$`)

// SocketUnitName is the socket unit of host TCP port port.
func SocketUnitName(port int) string { return fmt.Sprintf("nsbox-tcp-%d.socket", port) }

// socketServiceName is the service the socket of port activates.
func socketServiceName(port int) string { return fmt.Sprintf("nsbox-tcp-%d.service", port) }

// unitDir is where nsbox writes unit files: UnitDir, or
// /etc/systemd/system.
func (m *Backend) unitDir() string {
	if m.UnitDir == "" {
		return "/etc/systemd/system"
	}
	return m.UnitDir
}

// socketFiles renders u's socket and service units.
func socketFiles(u backend.SocketUnit) (socket, service string, err error) {
	opt := unit.NewUnitOption
	header := fmt.Sprintf("# Written by nsbox enable %s --socket %s; nsbox disable %s removes it.\n", u.Machine, u.Spec, u.Machine)
	sock := []*unit.UnitOption{
		opt("Unit", "Description", escapeSpecifiers(fmt.Sprintf("nsbox: boot %s on the first connection to TCP port %d", u.Machine, u.HostPort))),
		opt("Unit", socketMachineKey, u.Machine),
		opt("Unit", socketSpecKey, u.Spec),
		// Every address of the host, IPv4 and IPv6, as --port's forwards.
		opt("Socket", "ListenStream", strconv.Itoa(u.HostPort)),
		opt("Socket", "Service", socketServiceName(u.HostPort)),
		opt("Install", "WantedBy", "sockets.target"),
	}
	svc := []*unit.UnitOption{
		opt("Unit", "Description", escapeSpecifiers(fmt.Sprintf("nsbox: TCP port %d to %s, booted on demand", u.HostPort, u.Machine))),
		opt("Unit", "Requires", SocketUnitName(u.HostPort)),
		opt("Unit", "After", SocketUnitName(u.HostPort)+" network.target"),
		opt("Service", "ExecStart", execLine(u.Proxy)),
		// The boot is part of the first connection's wait.
		opt("Service", "TimeoutStartSec", "3min"),
	}
	for _, opts := range [][]*unit.UnitOption{sock, svc} {
		if err := backend.CheckUnitOptions(opts); err != nil {
			return "", "", err
		}
	}
	render := func(opts []*unit.UnitOption) (string, error) {
		b, err := io.ReadAll(unit.Serialize(opts))
		return header + string(b), err
	}
	if socket, err = render(sock); err != nil {
		return "", "", err
	}
	service, err = render(svc)
	return socket, service, err
}

// InstallSocket implements backend.SocketActivation.
func (m *Backend) InstallSocket(ctx context.Context, u backend.SocketUnit) error {
	socket, service, err := socketFiles(u)
	if err != nil {
		return fmt.Errorf("socket of %q: %w", u.Machine, err)
	}
	dir := m.unitDir()
	name := SocketUnitName(u.HostPort)
	if err := host.WriteFileAtomic(filepath.Join(dir, socketServiceName(u.HostPort)), []byte(service), 0o644); err != nil {
		return err
	}
	if err := host.WriteFileAtomic(filepath.Join(dir, name), []byte(socket), 0o644); err != nil {
		return err
	}
	link := filepath.Join(dir, "sockets.target.wants", name)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	if cur, err := os.Readlink(link); err != nil || cur != filepath.Join(dir, name) {
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join(dir, name), link); err != nil {
			return fmt.Errorf("enable %s: %w", name, err)
		}
	}
	if err := m.Systemd.Reload(ctx); err != nil {
		return err
	}
	if _, err := m.Systemd.StartUnit(ctx, name); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

// RemoveSockets implements backend.SocketActivation.
func (m *Backend) RemoveSockets(ctx context.Context, name string) error {
	var errs []error
	removed := false
	for _, s := range m.socketUnits() {
		if s.machine != name {
			continue
		}
		for _, unitName := range []string{SocketUnitName(s.port), socketServiceName(s.port)} {
			if err := m.Systemd.StopUnit(ctx, unitName); err != nil {
				errs = append(errs, err)
			}
			_ = m.Systemd.ResetFailedUnit(ctx, unitName)
		}
		dir := m.unitDir()
		for _, p := range []string{filepath.Join(dir, "sockets.target.wants", SocketUnitName(s.port)),
			filepath.Join(dir, SocketUnitName(s.port)), filepath.Join(dir, socketServiceName(s.port))} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		removed = true
	}
	if removed {
		errs = append(errs, m.Systemd.Reload(ctx))
	}
	return errors.Join(errs...)
}

// Sockets implements backend.SocketActivation.
func (m *Backend) Sockets(name string) []string {
	var out []string
	for _, s := range m.socketUnits() {
		if s.machine == name {
			out = append(out, s.spec)
		}
	}
	return out
}

// SocketPorts implements backend.SocketActivation.
func (m *Backend) SocketPorts() map[int]string {
	out := map[int]string{}
	for _, s := range m.socketUnits() {
		out[s.port] = s.machine
	}
	return out
}

// socketUnit is one of nsbox's socket units as found on disk.
type socketUnit struct {
	port          int
	machine, spec string
}

// socketUnits reads nsbox's socket units in the unit directory, sorted by
// port. A file whose keys cannot be read is passed over.
func (m *Backend) socketUnits() []socketUnit {
	ents, _ := os.ReadDir(m.unitDir())
	var out []socketUnit
	for _, e := range ents {
		sm := socketUnitRE.FindStringSubmatch(e.Name())
		if sm == nil || !e.Type().IsRegular() {
			continue
		}
		port, _ := strconv.Atoi(sm[1])
		f, err := os.Open(filepath.Join(m.unitDir(), e.Name()))
		if err != nil {
			continue
		}
		opts, err := unit.DeserializeOptions(io.LimitReader(f, 64<<10))
		f.Close()
		if err != nil {
			continue
		}
		s := socketUnit{port: port}
		for _, o := range opts {
			switch {
			case o.Section == "Unit" && o.Name == socketMachineKey:
				s.machine = o.Value
			case o.Section == "Unit" && o.Name == socketSpecKey:
				s.spec = strings.TrimSpace(o.Value)
			}
		}
		if s.machine != "" {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].port < out[b].port })
	return out
}

var _ backend.SocketActivation = (*Backend)(nil)
