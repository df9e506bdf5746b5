package network

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNoHostEnd means the host end of a machine's veth is not (yet) in the
// host's network namespace under any name nspawn gives it.
var ErrNoHostEnd = errors.New("no host end of the machine's veth")

// ErrNotMachineVeth means an interface that goes by the name of a
// machine's veth is not the host end of the pair whose other end is the
// machine's host0: a machine's root can make veths of its own, with
// whatever index numbers it likes, but it cannot make or move a link in
// the host's network namespace.
var ErrNotMachineVeth = errors.New("not the host end of the machine's veth")

// machineEnd is what nspawn calls its end of the veth inside the machine.
const machineEnd = "host0"

// ConfigureHostEnd gives the host end of machine's veth its address and
// brings it up. The interface is found by the names nspawn gives it in
// the host's namespace (VethHostNames) and must be the pair nspawn made:
// a veth whose peer the kernel places in the network namespace of pid (a
// process in the machine) and which is the machine's host0, a veth back
// to it. ErrNoHostEnd means there is no such name (yet); ErrNotMachineVeth
// that the interface of that name is not the pair.
func ConfigureHostEnd(pid int, machine string, l Link) (Interface, error) {
	host, mach, err := namespaces(pid)
	if err != nil {
		return Interface{}, err
	}
	defer host.Close()
	defer mach.Close()
	if host.Equal(mach) {
		return Interface{}, fmt.Errorf("%w: %s shares the host's network namespace", ErrNoHostEnd, machine)
	}
	return configureHostEnd(host, mach, machine, l)
}

// namespaces opens this thread's network namespace (the host's: nsbox
// runs there) and that of process pid.
func namespaces(pid int) (host, mach netns.NsHandle, err error) {
	mach, err = netns.GetFromPid(pid)
	if err != nil {
		return netns.None(), netns.None(), fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	host, err = netns.Get()
	if err != nil {
		mach.Close()
		return netns.None(), netns.None(), fmt.Errorf("this network namespace: %w", err)
	}
	return host, mach, nil
}

// handles opens netlink handles in the host's and the machine's network
// namespaces.
func handles(hostNS, machNS netns.NsHandle) (host, mach *netlink.Handle, err error) {
	if host, err = netlink.NewHandleAt(hostNS, unix.NETLINK_ROUTE); err != nil {
		return nil, nil, err
	}
	if mach, err = netlink.NewHandleAt(machNS, unix.NETLINK_ROUTE); err != nil {
		host.Close()
		return nil, nil, err
	}
	return host, mach, nil
}

// hostEnd finds the host end of machine's veth by the names nspawn gives
// it and checks that it is the pair nspawn made.
func hostEnd(host, mach *netlink.Handle, hostNS, machNS netns.NsHandle, machine string) (netlink.Link, error) {
	var link netlink.Link
	names := VethHostNames(machine)
	for _, n := range names {
		// A name longer than 15 characters is looked up as an altname:
		// nspawn gives the shortened interface its full name as one.
		if l, err := host.LinkByName(n); err == nil {
			link = l
			break
		}
	}
	if link == nil {
		return nil, fmt.Errorf("%w: no %s in the host's network namespace", ErrNoHostEnd, names[0])
	}
	if err := checkPair(host, mach, hostNS, machNS, link); err != nil {
		return nil, err
	}
	return link, nil
}

// checkPair checks that link, in the host's namespace, is a veth whose
// peer the kernel places in the machine's namespace, and that the peer is
// the machine's host0, a veth whose own peer is link. The namespace ids
// are the kernel's, relative to the namespace that reads them; nothing
// the machine reports about itself is taken on trust.
func checkPair(host, mach *netlink.Handle, hostNS, machNS netns.NsHandle, link netlink.Link) error {
	a := link.Attrs()
	if link.Type() != "veth" {
		return fmt.Errorf("%w: %s is a %s link, not a veth", ErrNotMachineVeth, a.Name, link.Type())
	}
	machID, err := host.GetNetNsIdByFd(int(machNS))
	if err != nil {
		return fmt.Errorf("id of the machine's network namespace: %w", err)
	}
	if machID < 0 || a.NetNsID != machID || a.ParentIndex <= 0 {
		return fmt.Errorf("%w: the peer of %s is not in the machine's network namespace", ErrNotMachineVeth, a.Name)
	}
	peer, err := mach.LinkByIndex(a.ParentIndex)
	if err != nil {
		return fmt.Errorf("%w: the peer of %s (index %d) is gone from the machine: %v", ErrNotMachineVeth, a.Name, a.ParentIndex, err)
	}
	hostID, err := mach.GetNetNsIdByFd(int(hostNS))
	if err != nil {
		return fmt.Errorf("id of the host's network namespace: %w", err)
	}
	p := peer.Attrs()
	switch {
	case peer.Type() != "veth" || p.ParentIndex != a.Index || hostID < 0 || p.NetNsID != hostID:
		return fmt.Errorf("%w: the peer of %s is not a veth back to it", ErrNotMachineVeth, a.Name)
	case p.Name != machineEnd:
		return fmt.Errorf("%w: the peer of %s is called %q inside the machine, not %s", ErrNotMachineVeth, a.Name, p.Name, machineEnd)
	}
	return nil
}

func configureHostEnd(hostNS, machNS netns.NsHandle, machine string, l Link) (Interface, error) {
	host, mach, err := handles(hostNS, machNS)
	if err != nil {
		return Interface{}, err
	}
	defer host.Close()
	defer mach.Close()
	link, err := hostEnd(host, mach, hostNS, machNS, machine)
	if err != nil {
		return Interface{}, err
	}
	end := Interface{Name: link.Attrs().Name, Index: link.Attrs().Index}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.Host.Addr().AsSlice(), Mask: net.CIDRMask(l.Host.Bits(), 32)}}
	if err := host.AddrReplace(link, addr); err != nil {
		return end, fmt.Errorf("address %s on %s: %w", l.Host, end.Name, err)
	}
	if err := host.LinkSetUp(link); err != nil {
		return end, fmt.Errorf("bring %s up: %w", end.Name, err)
	}
	return end, nil
}

// ConfigureMachineEnd gives the machine's end of its veth (host0, in the
// network namespace of process pid) l's machine address and a default
// route through the host end, for a machine that runs no network
// manager of its own (an app machine). The pair is checked as
// ConfigureHostEnd checks it, so only nspawn's host0 is configured.
func ConfigureMachineEnd(pid int, machine string, l Link) error {
	hostNS, machNS, err := namespaces(pid)
	if err != nil {
		return err
	}
	defer hostNS.Close()
	defer machNS.Close()
	if hostNS.Equal(machNS) {
		return fmt.Errorf("%w: %s shares the host's network namespace", ErrNoHostEnd, machine)
	}
	host, mach, err := handles(hostNS, machNS)
	if err != nil {
		return err
	}
	defer host.Close()
	defer mach.Close()
	link, err := hostEnd(host, mach, hostNS, machNS, machine)
	if err != nil {
		return err
	}
	peer, err := mach.LinkByIndex(link.Attrs().ParentIndex)
	if err != nil {
		return fmt.Errorf("%s of %s: %w", machineEnd, machine, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.Machine.Addr().AsSlice(), Mask: net.CIDRMask(l.Machine.Bits(), 32)}}
	if err := mach.AddrReplace(peer, addr); err != nil {
		return fmt.Errorf("address %s on %s of %s: %w", l.Machine, machineEnd, machine, err)
	}
	if err := mach.LinkSetUp(peer); err != nil {
		return fmt.Errorf("bring %s of %s up: %w", machineEnd, machine, err)
	}
	route := &netlink.Route{LinkIndex: peer.Attrs().Index, Gw: l.Host.Addr().AsSlice()}
	if err := mach.RouteReplace(route); err != nil {
		return fmt.Errorf("default route of %s through %s: %w", machine, l.Host.Addr(), err)
	}
	return nil
}
