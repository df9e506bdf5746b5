package machine

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/network"
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
