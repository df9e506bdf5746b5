package network

import (
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

// PeerAddress is the machine's IPv4 address in the subnet of an address
// of the host's end of one of its veths, other than the host's own: the
// address nsbox (or networkd) gave it, never one the machine gave itself
// elsewhere. Invalid when there is none yet.
func PeerAddress(s Seen) netip.Addr {
	var prefixes []netip.Prefix
	for _, p := range s.Peers {
		l, err := netlink.LinkByIndex(p.Index)
		if err != nil || l.Attrs().Name != p.Name {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				ones, _ := a.Mask.Size()
				prefixes = append(prefixes, netip.PrefixFrom(ip, ones))
			}
		}
	}
	for _, a := range s.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() {
			continue
		}
		for _, p := range prefixes {
			if p.Masked().Contains(ip) && ip != p.Addr() && ip != p.Masked().Addr() {
				return ip
			}
		}
	}
	return netip.Addr{}
}
