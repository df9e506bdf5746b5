package machine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/network"
	"github.com/sirupsen/logrus"
)

// hostPort is the protocol and host port of a forward spec
// ("[tcp|udp:]HOST[:MACHINE]", ValidatePort), as "tcp:8080".
func hostPort(spec string) (proto string, port int, ok bool) {
	proto, s := "tcp", spec
	if p, rest, found := strings.Cut(spec, ":"); found && (p == "tcp" || p == "udp") {
		proto, s = p, rest
	}
	h, _, _ := strings.Cut(s, ":")
	n, err := strconv.Atoi(h)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, false
	}
	return proto, n, true
}

// checkPorts refuses, before a boot, port forwards that could not work:
// a host port twice, one a host process listens on (nspawn's forward
// would take its connections from it, or it the forward's), and one that
// another running machine forwards already (the first forward takes every
// connection). The message names who holds the port.
func (m *Manager) checkPorts(ctx context.Context, name string, ports []string) error {
	if len(ports) == 0 {
		return nil
	}
	held := map[string]string{} // "tcp:8080" -> the machine that forwards it
	if running, err := m.Backend.List(ctx); err == nil {
		for _, r := range running {
			if r.Name == name || !m.exists(r.Name) {
				continue
			}
			o, err := m.Options(r.Name)
			if err != nil {
				continue
			}
			for _, p := range o.Ports {
				if proto, n, ok := hostPort(p); ok {
					held[fmt.Sprintf("%s:%d", proto, n)] = r.Name
				}
			}
		}
	}
	seen := map[string]bool{}
	for _, spec := range ports {
		proto, n, ok := hostPort(spec)
		if !ok {
			return fmt.Errorf("%w: port %q (use [tcp|udp:]HOST[:MACHINE], ports 1-65535)", ErrInvalidOption, spec)
		}
		key := fmt.Sprintf("%s:%d", proto, n)
		if seen[key] {
			return fmt.Errorf("%w: host port %s is given twice", ErrInvalidOption, key)
		}
		seen[key] = true
		if other, ok := held[key]; ok {
			return fmt.Errorf("%w: host port %s is forwarded to machine %s already (stop it, or boot one of them with another port: --no-ports --port ...)",
				ErrInvalidOption, key, other)
		}
		if u, ok := network.PortHolder(proto, n); ok {
			return fmt.Errorf("%w: host port %s is in use on this host by %s (stop it, or forward another port)", ErrInvalidOption, key, backend.Printable(u.String()))
		}
	}
	return nil
}

// PortsCommand is the hidden command that serves a running machine's
// forwarded ports on the host's loopback addresses, beside the machine:
// nsbox __ports NAME.
const PortsCommand = "__ports"

// loopbackForwards are the forwards of a machine booted with o that the
// loopback proxy serves: all of them, where the machine has a network of
// its own (nspawn forwards nothing otherwise).
func loopbackForwards(o BootOptions) []network.Forward {
	if o.Network == "host" || o.Network == "none" {
		return nil
	}
	var out []network.Forward
	for _, p := range o.Ports {
		if f, err := network.ParseForward(p); err == nil {
			out = append(out, f)
		}
	}
	return out
}

// portsCompanion is the command that serves a machine's forwards on the
// host's loopback addresses (nsbox __ports NAME), or nil when it has none.
func (m *Manager) portsCompanion(name string, o BootOptions) ([]string, error) {
	if len(loopbackForwards(o)) == 0 {
		return nil, nil
	}
	if m.Self == nil {
		return nil, fmt.Errorf("no nsbox binary to serve %s's ports on the host's loopback addresses", name)
	}
	self, err := m.Self()
	if err != nil {
		return nil, err
	}
	return []string{self, "--root-dir", m.RootDir, PortsCommand, name}, nil
}

// startPortsCompanion starts a running machine's loopback forwards where
// the backend runs them in a unit of their own (machined); the direct
// backend's supervisor runs them itself.
func (m *Manager) startPortsCompanion(ctx context.Context, name string, o BootOptions) error {
	c, ok := m.Backend.(backend.Companions)
	if !ok {
		return nil
	}
	argv, err := m.portsCompanion(name, o)
	if err != nil || argv == nil {
		return err
	}
	return c.StartCompanion(ctx, name, argv)
}

// stopPortsCompanion stops what a machine's last run left of its loopback
// forwards (on machined, where its unit is stopped with the machine's,
// by systemd, a moment after), so that a boot's port check finds none.
func (m *Manager) stopPortsCompanion(ctx context.Context, name string) {
	if c, ok := m.Backend.(backend.Companions); ok {
		if err := c.StopCompanion(ctx, name); err != nil {
			logrus.Debugf("%s: stop the loopback forwards: %v", name, err)
		}
	}
}

// portTarget is where the loopback forwards of machine name connect: the
// machine's address from nsbox's pool when nsbox addresses its veth (what
// the machine does inside changes nothing), otherwise its address on the
// link to the host, checked by network.LinkAddress.
func (m *Manager) portTarget(name string, o BootOptions) func(context.Context) (netip.Addr, error) {
	return func(ctx context.Context) (netip.Addr, error) { return m.machineAddress(ctx, name, o) }
}

// portsGrace is how long the loopback forwards outlive their machine
// before they end by themselves, should nothing end them (a supervisor
// killed with SIGKILL): long enough to span a reboot or the start.
const portsGrace = 10 * time.Second

// ServePorts serves running machine name's forwarded ports on the host's
// 127.0.0.1 and ::1, where nspawn's forwards do not answer, until ctx ends
// or the machine has been gone for portsGrace. It runs as root beside the
// machine (nsbox __ports NAME): it listens on the loopback addresses only,
// connects only to the machine's own address and forwarded port
// (portTarget), and holds at most network.MaxProxyConns connections per
// port. The machine sees the connections come from the host's address on
// its link (10.89.0.1 on nsbox's own veth), as a DNAT from the host's own
// addresses gives, never from 127.0.0.1.
func (m *Manager) ServePorts(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	o, err := m.Options(name)
	if err != nil {
		return err
	}
	fwds := loopbackForwards(o)
	if len(fwds) == 0 {
		return nil
	}
	p := &network.LoopbackProxy{Forwards: fwds, Target: m.portTarget(name, o),
		Logf: func(format string, args ...any) { logrus.Warnf(name+": "+format, args...) }}
	ls, err := p.Listen()
	if err != nil {
		return fmt.Errorf("serve forwarded ports on the host's loopback addresses: %w", err)
	}
	logrus.Infof("%s: forwarding %s to the machine", name, strings.Join(ls.Addrs(), " "))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		gone := time.Time{}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if _, err := m.Backend.Get(ctx, name); !errors.Is(err, ErrNotRunning) {
				gone = time.Time{}
				continue
			}
			if gone.IsZero() {
				gone = time.Now()
			} else if time.Since(gone) >= portsGrace {
				logrus.Infof("%s is not running: no more forwards", name)
				cancel()
				return
			}
		}
	}()
	p.Serve(ctx, ls)
	return nil
}
