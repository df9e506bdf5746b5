package machine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/network"
	"github.com/sirupsen/logrus"
)

// Socket is a host TCP port whose first connection boots a machine and
// is passed to one of its ports (enable --socket).
type Socket struct {
	HostPort, MachinePort int
}

// String is the canonical spec, "tcp:HOST:MACHINE".
func (s Socket) String() string { return fmt.Sprintf("tcp:%d:%d", s.HostPort, s.MachinePort) }

// ParseSocket reads an --socket value: [tcp:]HOST[:MACHINE], as --port
// takes it; the machine's port is the host's when left out. UDP is
// refused: a datagram has no connection to pass on.
func ParseSocket(spec string) (Socket, error) {
	if err := backend.ValidateText("--socket", spec); err != nil {
		return Socket{}, err
	}
	s := spec
	if p, rest, ok := strings.Cut(s, ":"); ok && (p == "tcp" || p == "udp") {
		if p == "udp" {
			return Socket{}, fmt.Errorf("%w: --socket %q: TCP only (a UDP datagram has no connection to pass on; use --port for UDP)", ErrInvalidOption, spec)
		}
		s = rest
	}
	parts := strings.Split(s, ":")
	if len(parts) > 2 || !portNumber(parts[0]) || len(parts) == 2 && !portNumber(parts[1]) {
		return Socket{}, fmt.Errorf("%w: --socket %q (use [tcp:]HOST[:MACHINE], ports 1-65535)", ErrInvalidOption, spec)
	}
	host, _ := strconv.Atoi(parts[0])
	out := Socket{HostPort: host, MachinePort: host}
	if len(parts) == 2 {
		out.MachinePort, _ = strconv.Atoi(parts[1])
	}
	return out, nil
}

// socketActivation returns the backend's socket activation, or an error
// saying why this host has none.
func (m *Manager) socketActivation() (backend.SocketActivation, error) {
	sa, ok := m.Backend.(backend.SocketActivation)
	if !ok {
		return nil, fmt.Errorf("%w: socket activation needs systemd as PID 1, whose socket units listen while the machine is down (this host: %s)", ErrNoBackend, m.Why)
	}
	return sa, nil
}

// EnableSockets installs a socket unit for each of specs: the first
// connection to the host port boots machine name (with its remembered
// options) and every connection is passed to the machine's port. The
// machine does not boot with the host for it; Enable does that.
func (m *Manager) EnableSockets(ctx context.Context, name string, specs []string) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	sa, err := m.socketActivation()
	if err != nil {
		return err
	}
	opts, err := m.Options(name)
	if err != nil {
		return err
	}
	if opts.Network != "veth" && opts.Network != "host" {
		return fmt.Errorf("%w: --socket needs the machine on a veth of its own (network veth, the default) or on the host's network; %s has network %s", ErrInvalidOption, name, opts.Network)
	}
	if m.Self == nil {
		return fmt.Errorf("%w: no nsbox binary for the socket's service to run", ErrNoBackend)
	}
	var socks []Socket
	held := sa.SocketPorts()
	for _, spec := range specs {
		s, err := ParseSocket(spec)
		if err != nil {
			return err
		}
		for _, o := range socks {
			if o.HostPort == s.HostPort {
				return fmt.Errorf("%w: host port tcp:%d is given twice", ErrInvalidOption, s.HostPort)
			}
		}
		if other, ok := held[s.HostPort]; ok && other != name {
			return fmt.Errorf("%w: host port tcp:%d boots machine %s already (nsbox disable %s, or another port)", ErrInvalidOption, s.HostPort, other, other)
		} else if !ok {
			if u, busy := network.PortHolder("tcp", s.HostPort); busy {
				return fmt.Errorf("%w: host port tcp:%d is in use on this host by %s (stop it, or use another port)", ErrInvalidOption, s.HostPort, backend.Printable(u.String()))
			}
		}
		for _, p := range opts.Ports {
			if proto, n, ok := hostPort(p); ok && proto == "tcp" && n == s.HostPort {
				return fmt.Errorf("%w: host port tcp:%d is forwarded by %s's --port already: a port is either forwarded or socket-activated", ErrInvalidOption, s.HostPort, name)
			}
		}
		socks = append(socks, s)
	}
	self, err := m.Self()
	if err != nil {
		return err
	}
	for _, s := range socks {
		u := backend.SocketUnit{Machine: name, Spec: s.String(), HostPort: s.HostPort,
			Proxy: []string{self, "--root-dir", m.RootDir, "--cache-dir", m.CacheDir, SocketProxyCommand, name, strconv.Itoa(s.MachinePort)}}
		if err := sa.InstallSocket(ctx, u); err != nil {
			return err
		}
	}
	return nil
}

// Sockets lists machine name's socket specs ("tcp:8080:80"), none where
// the host has no socket activation.
func (m *Manager) Sockets(name string) []string {
	if sa, ok := m.Backend.(backend.SocketActivation); ok {
		return sa.Sockets(name)
	}
	return nil
}

// removeSockets removes machine name's sockets, where the host has any.
func (m *Manager) removeSockets(ctx context.Context, name string) error {
	if sa, ok := m.Backend.(backend.SocketActivation); ok {
		return sa.RemoveSockets(ctx, name)
	}
	return nil
}

// SocketProxyCommand is the hidden command a socket's service runs.
const SocketProxyCommand = "__socket-proxy"

// proxyLimit bounds the connections a socket's service passes at once;
// the rest wait in the socket's backlog.
const proxyLimit = 512

// SocketProxy is the service of a machine's socket: it boots machine name
// unless it runs, then passes each connection the listeners accept to
// port of the machine's own address (the one nsbox gave its veth, or
// the host's loopback for a machine on the host's network) until the
// machine stops; then it returns, and the next connection starts it, and
// the machine, again.
func (m *Manager) SocketProxy(ctx context.Context, name string, port int, listeners []net.Listener) error {
	if len(listeners) == 0 {
		return fmt.Errorf("%w: no socket passed (this command is run by the socket unit nsbox enable --socket installs)", ErrInvalidOption)
	}
	r, err := m.Backend.Get(ctx, name)
	if errors.Is(err, ErrNotRunning) {
		if err := m.Boot(ctx, name, BootRequest{}); err != nil && !errors.Is(err, ErrRunning) {
			return err
		}
		r, err = m.Backend.Get(ctx, name)
	}
	if err != nil {
		return err
	}
	target, err := m.socketTarget(ctx, name)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(target.String(), strconv.Itoa(port))
	logrus.Infof("passing connections to %s of %s", addr, name)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The machine stops or is another one (rebooted: a new leader): the
	// service ends, its connections with it.
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if again, err := m.Backend.Get(ctx, name); err != nil || again.Leader != r.Leader {
				cancel()
				return
			}
		}
	}()
	var wg sync.WaitGroup
	slots := make(chan struct{}, proxyLimit)
	started := time.Now()
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return
				}
				c, err := l.Accept()
				if err != nil {
					<-slots
					if ctx.Err() == nil {
						logrus.Warnf("accept: %v", err)
						cancel()
					}
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots }()
					passConn(ctx, c, addr, started)
				}()
			}
		}()
	}
	<-ctx.Done()
	for _, l := range listeners {
		l.Close()
	}
	wg.Wait()
	return nil
}

// socketTarget is the address of machine name that its socket passes
// connections to: on the host's network, the host's loopback; on its veth,
// machineAddress, waited for while it comes up. An address the machine
// gave itself elsewhere is never used: the service runs as the host's root.
func (m *Manager) socketTarget(ctx context.Context, name string) (netip.Addr, error) {
	opts, err := m.Options(name)
	if err != nil {
		return netip.Addr{}, err
	}
	if opts.Network == "host" {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	var found netip.Addr
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = host.Poll(wait, host.Every(200*time.Millisecond), func() (bool, error) {
		a, err := m.machineAddress(wait, name, opts)
		found = a
		return err == nil, nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s has no address on its veth after a minute", name)
	}
	return found, nil
}

// passConn passes connection c to addr and back until either side ends
// or ctx does. A refused connection is tried again for a minute after the
// proxy started (the machine's service may still be starting).
func passConn(ctx context.Context, c net.Conn, addr string, started time.Time) {
	defer c.Close()
	var up net.Conn
	var d net.Dialer
	err := host.Poll(ctx, host.Every(200*time.Millisecond), func() (bool, error) {
		var err error
		dial, cancel := context.WithTimeout(ctx, 10*time.Second)
		up, err = d.DialContext(dial, "tcp", addr)
		cancel()
		return err == nil || time.Since(started) > time.Minute, nil
	})
	if err != nil || up == nil {
		return
	}
	in, ok := c.(*net.TCPConn)
	if !ok {
		up.Close()
		return
	}
	network.Relay(ctx, in, up.(*net.TCPConn))
}
