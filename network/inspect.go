package network

import (
	"errors"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is one network link seen from the host.
type Interface struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
}

// Seen is what the host sees of one machine's network.
type Seen struct {
	// Addresses are the global and private unicast addresses in the
	// machine's network namespace, IPv4 first.
	Addresses []string
	// Peers are the host ends of the machine's veths, checked as
	// HostPeers checks them; nil when the machine shares the host's
	// network namespace.
	Peers []Interface
}

// Inspect reports, for each process in pids (a machine's leader), what
// Addresses and HostPeers report, listing the host's links once for all
// of them rather than once for each: list and status ask this of every
// running machine. A process whose namespace cannot be read is left out.
func Inspect(pids []int) map[int]Seen {
	out := map[int]Seen{}
	if len(pids) == 0 {
		return out
	}
	hostNS, err := netns.Get()
	if err != nil {
		return out
	}
	defer hostNS.Close()
	hostH, err := netlink.NewHandleAt(hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		return out
	}
	defer hostH.Close()
	// Listing fills in IFLA_LINK_NETNSID, which gives each machine's
	// namespace an id in the host's if it had none: list first.
	links, err := hostH.LinkList()
	if err != nil {
		return out
	}
	for _, pid := range pids {
		s, ok := inspect(hostNS, hostH, links, pid)
		if ok {
			out[pid] = s
		}
	}
	return out
}

func inspect(hostNS netns.NsHandle, hostH *netlink.Handle, links []netlink.Link, pid int) (Seen, bool) {
	machNS, err := netns.GetFromPid(pid)
	if err != nil {
		return Seen{}, false
	}
	defer machNS.Close()
	machH, err := netlink.NewHandleAt(machNS, unix.NETLINK_ROUTE)
	if err != nil {
		return Seen{}, false
	}
	defer machH.Close()
	var s Seen
	if addrs, err := machH.AddrList(nil, netlink.FAMILY_ALL); err == nil {
		s.Addresses = unicast(addrs)
	}
	if hostNS.Equal(machNS) {
		return s, true
	}
	s.Peers, _ = peersOf(hostH, machH, hostNS, machNS, links)
	return s, true
}

// peersOf picks, from the host's links, the host ends of veths into the
// machine's namespace that checkPair accepts. Index numbers read inside
// the machine are never trusted: a machine's root makes veths of its own
// whose peer index is any host interface's.
func peersOf(hostH, machH *netlink.Handle, hostNS, machNS netns.NsHandle, links []netlink.Link) ([]Interface, error) {
	machID, err := hostH.GetNetNsIdByFd(int(machNS))
	if err != nil {
		return nil, err
	}
	var out []Interface
	for _, l := range links {
		if l.Type() != "veth" || machID < 0 || l.Attrs().NetNsID != machID {
			continue
		}
		if checkPair(hostH, machH, hostNS, machNS, l) == nil {
			out = append(out, Interface{Name: l.Attrs().Name, Index: l.Attrs().Index})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// unicast keeps the global and private unicast addresses, IPv4 first,
// then by text.
func unicast(addrs []netlink.Addr) []string {
	var out []string
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() || a.IP.IsPrivate() {
			out = append(out, a.IP.String())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a4, b4 := net.ParseIP(out[i]).To4() != nil, net.ParseIP(out[j]).To4() != nil
		if a4 != b4 {
			return a4
		}
		return out[i] < out[j]
	})
	return out
}

// Counters are the bytes a host link received and sent.
type Counters struct {
	Name    string
	RxBytes uint64
	TxBytes uint64
}

// LinkCounters reports every host link's byte counters by index, in one
// netlink dump (what top reads every second).
func LinkCounters() (map[int]Counters, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := make(map[int]Counters, len(links))
	for _, l := range links {
		a := l.Attrs()
		c := Counters{Name: a.Name}
		if s := a.Statistics; s != nil {
			c.RxBytes, c.TxBytes = s.RxBytes, s.TxBytes
		}
		out[a.Index] = c
	}
	return out, nil
}

// ErrNoLinkAddress is returned by LinkAddress when the machine has no
// address on the link to the host.
var ErrNoLinkAddress = errors.New("the machine has no IPv4 address on its link to the host")

// LinkAddress is the IPv4 address of the machine whose leader is pid on
// its link to the host, for a link nsbox did not address itself (a veth
// systemd-networkd serves, a bridge, a zone). The machine's root sets its
// addresses as it likes, so one is taken only if it lies in a subnet the
// host has on the host end of the machine's own veth (or on the bridge
// that end is in) and is no address of the host's: the machine can point
// at nothing but a neighbour on its own link.
func LinkAddress(pid int) (netip.Addr, error) {
	hostNS, err := netns.Get()
	if err != nil {
		return netip.Addr{}, err
	}
	defer hostNS.Close()
	machNS, err := netns.GetFromPid(pid)
	if err != nil {
		return netip.Addr{}, err
	}
	defer machNS.Close()
	return linkAddress(hostNS, machNS)
}

func linkAddress(hostNS, machNS netns.NsHandle) (netip.Addr, error) {
	if hostNS.Equal(machNS) {
		return netip.Addr{}, ErrNoLinkAddress
	}
	hostH, machH, err := handles(hostNS, machNS)
	if err != nil {
		return netip.Addr{}, err
	}
	defer hostH.Close()
	defer machH.Close()
	links, err := hostH.LinkList()
	if err != nil {
		return netip.Addr{}, err
	}
	peers, err := peersOf(hostH, machH, hostNS, machNS, links)
	if err != nil {
		return netip.Addr{}, err
	}
	var subnets []netip.Prefix
	addSubnets := func(index int) {
		l, err := hostH.LinkByIndex(index)
		if err != nil {
			return
		}
		addrs, _ := hostH.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok {
				subnets = append(subnets, p.Masked())
			}
		}
	}
	for _, p := range peers {
		addSubnets(p.Index)
		if l, err := hostH.LinkByIndex(p.Index); err == nil && l.Attrs().MasterIndex > 0 {
			addSubnets(l.Attrs().MasterIndex)
		}
	}
	own := map[netip.Addr]bool{}
	if addrs, err := hostH.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok {
				own[p.Addr()] = true
			}
		}
	}
	machAddrs, err := machH.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range machAddrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || own[p.Addr()] || !p.Addr().IsGlobalUnicast() && !p.Addr().IsPrivate() {
			continue
		}
		for _, s := range subnets {
			if s.Contains(p.Addr()) && p.Addr() != s.Addr() {
				return p.Addr(), nil
			}
		}
	}
	return netip.Addr{}, ErrNoLinkAddress
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
