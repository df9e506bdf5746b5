package machine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/network"
	"github.com/sirupsen/logrus"
)

// machineNetworkFile is where nsbox puts the machine's host0 settings.
const machineNetworkFile = "etc/systemd/network/10-nsbox-host0.network"

func (m *Manager) linkPath(name string) string {
	return filepath.Join(m.StateDir, "network", name)
}

// ownVeth reports whether nsbox configures the machine's veth itself: a
// veth (not bridge, zone, host or none) on a host where systemd-networkd
// does not.
func (m *Manager) ownVeth(o BootOptions) bool {
	if o.Network != "veth" {
		return false
	}
	m.networkdOnce.Do(func() { m.networkdServes = network.NetworkdManagesVeths() })
	return !m.networkdServes
}

// machineLink returns the machine's remembered subnet, allocating one
// from the pool the first time. Allocation is serialised by a lock so two
// boots never take the same subnet.
func (m *Manager) machineLink(ctx context.Context, name string) (network.Link, error) {
	if b, err := os.ReadFile(m.linkPath(name)); err == nil {
		if p, err := netip.ParsePrefix(strings.TrimSpace(string(b))); err == nil {
			return network.LinkFor(p)
		}
	}
	dir := filepath.Dir(m.linkPath(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return network.Link{}, err
	}
	lock, err := host.LockFile(ctx, filepath.Join(dir, ".lck"), true, true)
	if err != nil {
		return network.Link{}, err
	}
	defer lock.Unlock()
	pool, err := netip.ParsePrefix(m.Pool)
	if err != nil {
		return network.Link{}, fmt.Errorf("%w: address pool %q: %v", ErrInvalidOption, m.Pool, err)
	}
	var used []netip.Prefix
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
			if p, err := netip.ParsePrefix(strings.TrimSpace(string(b))); err == nil {
				used = append(used, p)
			}
		}
	}
	taken := network.HostPrefixes(func(link string) bool { return strings.HasPrefix(link, "ve-") || strings.HasPrefix(link, "vb-") })
	l, err := network.Allocate(pool, used, taken)
	if err != nil {
		return l, err
	}
	if err := host.WriteFileAtomic(m.linkPath(name), []byte(l.Subnet.String()+"\n"), 0o644); err != nil {
		return l, err
	}
	return l, nil
}

// prepareNetwork readies the machine's end of its network before boot,
// writing inside the tree without following any link out of it. A
// machine with a host0 (veth, bridge, zone) gets systemd-networkd enabled.
// On nsbox's own veth it gets a static address, and prepareNetwork
// returns the link to configure on the host side once the veth exists; on
// a bridge, a zone or a veth the host's networkd serves, host0 is
// configured from outside (the stock 80-container-host0.network asks for
// DHCP), so the static file of an earlier boot goes.
func (m *Manager) prepareNetwork(ctx context.Context, name string, o BootOptions) (*network.Link, error) {
	if m.ReadOnly(name) || o.Network == "none" || o.Network == "host" {
		return nil, nil
	}
	var l *network.Link
	if m.ownVeth(o) {
		link, err := m.machineLink(ctx, name)
		if err != nil {
			return nil, err
		}
		l = &link
	}
	r, err := os.OpenRoot(m.Dir(name))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if l == nil {
		if err := r.Remove(machineNetworkFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove %s from %s: %w", machineNetworkFile, name, err)
		}
	}
	if o.App != nil {
		// No network manager runs in an app machine: nsbox configures
		// its end of the veth too, once it runs (hostEndUp).
		if l == nil && o.Network == "veth" {
			logrus.Warnf("%s is an app machine, which asks for no address: the host's systemd-networkd serves veths here, so it gets none (use --network host, or a bridge with addresses of your own)", name)
		}
		return l, nil
	}
	if _, err := r.Stat("lib/systemd/system/systemd-networkd.service"); err != nil {
		if l != nil {
			logrus.Warnf("%s has no systemd-networkd: configure its host0 yourself (address %s, gateway %s)", name, l.Machine, l.Host.Addr())
		}
		return l, nil
	}
	if l != nil {
		if err := r.MkdirAll("etc/systemd/network", 0o755); err != nil {
			return nil, err
		}
		if err := host.WriteInRoot(r, machineNetworkFile, network.MachineNetworkFile(*l)); err != nil {
			return nil, err
		}
	}
	for link, target := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
		"etc/systemd/system/sockets.target.wants/systemd-networkd.socket":     "/lib/systemd/system/systemd-networkd.socket",
	} {
		if err := r.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return nil, err
		}
		if cur, err := r.Readlink(link); err == nil && cur == target {
			continue
		}
		_ = r.Remove(link)
		if err := r.Symlink(target, link); err != nil {
			return nil, fmt.Errorf("enable systemd-networkd in %s: %w", name, err)
		}
	}
	return l, nil
}

// finishNetwork configures the host end of a booted machine's veth and
// masquerading for the pool. A failure here leaves the machine running
// without outside access, so it is a warning.
func (m *Manager) finishNetwork(ctx context.Context, name string, l *network.Link, app bool) {
	if l == nil {
		return
	}
	if err := m.hostEndUp(ctx, name, *l, app); err != nil {
		logrus.Warnf("%s: %v", name, err)
		return
	}
	m.masquerade(ctx)
}

// hostEndUp gives the host end of the machine's veth its address once
// nspawn has made it. Only the pair nspawn made for this machine is
// configured, found by its name in the host's namespace and checked
// through the kernel's view of both ends (network.ConfigureHostEnd): what
// the machine's root makes inside is never taken for a host interface.
// A veth that is there but is not the machine's is refused at once. An
// app machine (app) gets its own end configured too: no network manager
// runs in it.
func (m *Manager) hostEndUp(ctx context.Context, name string, l network.Link, app bool) error {
	last := errors.New("the machine has no leader yet")
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := host.Poll(wait, host.Every(20*time.Millisecond), func() (bool, error) {
		r, err := m.Backend.Get(wait, name)
		switch {
		case err != nil:
			last = err
		case r.Leader > 0:
			end, err := network.ConfigureHostEnd(r.Leader, name, l)
			if err == nil && app {
				if err := network.ConfigureMachineEnd(r.Leader, name, l); err != nil {
					return false, fmt.Errorf("its end of the veth: %w", err)
				}
			}
			if err == nil {
				logrus.Debugf("%s: host end %s (index %d) has %s", name, end.Name, end.Index, l.Host)
				return true, nil
			}
			if !errors.Is(err, network.ErrNoHostEnd) {
				return false, fmt.Errorf("no network: nsbox configures no host interface but the host end of the veth nspawn made for it (reboot the machine for a new veth): %w", err)
			}
			last = err
		}
		return false, nil
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("its veth: %w", ctx.Err())
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("its veth did not appear; the machine has no network: %w", last)
	}
	return err
}

// masquerade lets the machines reach beyond the host, and keeps
// forwarding that is not the machines' as it was: when nsbox is the one
// that turns IPv4 forwarding on, its forward chain drops everything else.
// The table is replaced whole, so it covers every address pool in use:
// this boot's and the subnets remembered for machines, which may come
// from other pools (a boot with --address-pool).
func (m *Manager) masquerade(ctx context.Context) {
	pools := m.poolsInUse()
	if len(pools) == 0 {
		return
	}
	fwd := network.HostForwarding(m.RunDir)
	owned, err := fwd.Owned()
	if err != nil {
		logrus.Warnf("machines cannot reach beyond this host: %v", err)
		return
	}
	// The chain goes in before forwarding is turned on: forwarding without
	// it would route for anyone.
	err = m.Runner.Run(ctx, &host.Cmd{Path: "nft", Args: []string{"-f", "-"}, Stdin: strings.NewReader(network.NftRules(pools, owned))})
	if errors.Is(err, host.ErrToolMissing) {
		logrus.Warnf("machines cannot reach beyond this host: nft is not installed (install it: apt-get install nftables)")
		return
	} else if err != nil {
		logrus.Warnf("machines cannot reach beyond this host: %v", err)
		return
	}
	if err := fwd.Enable(); err != nil {
		logrus.Warnf("machines cannot reach beyond this host: %v", err)
	}
}

// poolsInUse is this Manager's address pool and every subnet remembered
// for a machine (NftRules leaves out those inside another).
func (m *Manager) poolsInUse() []netip.Prefix {
	var out []netip.Prefix
	if p, err := netip.ParsePrefix(m.Pool); err == nil && p.Addr().Is4() {
		out = append(out, p.Masked())
	}
	dir := filepath.Dir(m.linkPath("x"))
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if ValidateName(e.Name()) != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
			if p, err := netip.ParsePrefix(strings.TrimSpace(string(b))); err == nil && p.Addr().Is4() {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}

// ValidatePool checks an address pool (--address-pool): an IPv4 prefix
// with room for at least one machine's /30.
func ValidatePool(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return fmt.Errorf("%w: address pool %q (use an IPv4 prefix of /30 or wider, such as 10.89.0.0/16)", ErrInvalidOption, s)
	}
	return nil
}

// machineAddress is running machine name's IPv4 address on its link to
// the host, the one every relay and name of nsbox's points at: the
// machine end of the subnet nsbox gave its veth, or on a link nsbox does
// not address (networkd, a bridge, a zone) the one network.LinkAddress
// finds in a subnet of the host's end. Never an address the machine gave
// itself elsewhere.
func (m *Manager) machineAddress(ctx context.Context, name string, o BootOptions) (netip.Addr, error) {
	if m.ownVeth(o) {
		if b, err := os.ReadFile(m.linkPath(name)); err == nil {
			if p, err := netip.ParsePrefix(strings.TrimSpace(string(b))); err == nil {
				if l, err := network.LinkFor(p); err == nil {
					return l.Machine.Addr(), nil
				}
			}
		}
	}
	r, err := m.Backend.Get(ctx, name)
	if err != nil {
		return netip.Addr{}, err
	}
	if r.Leader <= 0 {
		return netip.Addr{}, fmt.Errorf("%s is between boots", name)
	}
	return network.LinkAddress(r.Leader)
}
