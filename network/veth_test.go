package network

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// victimIndex is the index of victim0, a host bridge (a LAN, say) nsbox must never
// configure; the machine gives a veth of its own the same index.
const victimIndex = 7

// vethSetup is a "host" namespace with victim0 and the pair nspawn makes,
// name on the host and host0 in the "machine" namespace.
type vethSetup struct {
	host, mach     string
	hostNS, machNS netns.NsHandle
}

func newVethSetup(t *testing.T, hostEnd string) vethSetup {
	t.Helper()
	var s vethSetup
	s.host, s.hostNS = newNS(t, "host")
	s.mach, s.machNS = newNS(t, "mach")
	ip(t, s.host, "link", "add", "victim0", "index", strconv.Itoa(victimIndex), "type", "bridge")
	if hostEnd != "" {
		ip(t, s.host, "link", "add", hostEnd, "type", "veth", "peer", "name", "host0", "netns", s.mach)
	}
	return s
}

// plantVeth does what a machine's root can: a veth pair inside its own
// namespace, one end called host0, whose peer index (IFLA_LINK, read in
// the machine) is victim0's index on the host.
func (s vethSetup) plantVeth(t *testing.T) {
	t.Helper()
	ip(t, s.mach, "link", "add", "fake0", "index", strconv.Itoa(victimIndex), "type", "veth", "peer", "name", "host0", "index", "4000")
}

// oldHostPeers is how nsbox found the host end before: the peer index of
// every veth inside the machine, looked up on the host. It is here to show
// that each attack below would have had nsbox configure victim0.
func oldHostPeers(t *testing.T, s vethSetup) []string {
	t.Helper()
	host, mach, err := handles(s.hostNS, s.machNS)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	defer mach.Close()
	links, err := mach.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() != "veth" || l.Attrs().ParentIndex == 0 {
			continue
		}
		if peer, err := host.LinkByIndex(l.Attrs().ParentIndex); err == nil {
			out = append(out, peer.Attrs().Name)
		}
	}
	return out
}

var testLink = Link{
	Subnet:  netip.MustParsePrefix("10.89.0.0/30"),
	Host:    netip.MustParsePrefix("10.89.0.1/30"),
	Machine: netip.MustParsePrefix("10.89.0.2/30"),
}

// untouched fails the test if nsbox gave the host interface an address
// or brought it up.
func untouched(t *testing.T, s vethSetup, ifname string) {
	t.Helper()
	h, err := netlink.NewHandleAt(s.hostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: %v", ifname, err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) > 0 || l.Attrs().Flags&1 != 0 {
		t.Errorf("%s was configured: addresses %v, flags %v", ifname, addrs, l.Attrs().Flags)
	}
}

func peerNames(t *testing.T, s vethSetup) []string {
	t.Helper()
	peers, err := hostPeers(s.hostNS, s.machNS)
	if err != nil {
		t.Fatalf("hostPeers: %v", err)
	}
	var names []string
	for _, p := range peers {
		names = append(names, p.Name)
	}
	return names
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestHostEndOnlyTheMachinesVeth: nsbox configures and reports only the
// host end of the pair nspawn made for the machine, whatever veths the
// machine's root makes with whatever index numbers (issue "Isolation that
// holds", item 4).
func TestHostEndOnlyTheMachinesVeth(t *testing.T) {
	needNamespaces(t)

	t.Run("the pair nspawn made is configured and reported", func(t *testing.T) {
		s := newVethSetup(t, "ve-test")
		end, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if err != nil || end.Name != "ve-test" {
			t.Fatalf("configureHostEnd: %+v, %v", end, err)
		}
		out := ip(t, s.host, "-4", "-o", "addr", "show", "dev", "ve-test")
		if !strings.Contains(out, "10.89.0.1/30") || !strings.Contains(ip(t, s.host, "link", "show", "ve-test"), ",UP") {
			t.Errorf("ve-test not configured: %s", out)
		}
		if got := peerNames(t, s); len(got) != 1 || got[0] != "ve-test" {
			t.Errorf("host peers %q, want [ve-test]", got)
		}
		untouched(t, s, "victim0")
	})

	t.Run("host0 deleted and a veth planted whose peer index is a host interface's", func(t *testing.T) {
		s := newVethSetup(t, "ve-test")
		ip(t, s.mach, "link", "del", "host0") // takes ve-test with it
		s.plantVeth(t)
		if old := oldHostPeers(t, s); !contains(old, "victim0") {
			t.Fatalf("the attack is not set up: the old lookup finds %q", old)
		}
		_, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if !errors.Is(err, ErrNoHostEnd) {
			t.Errorf("configureHostEnd: %v, want ErrNoHostEnd", err)
		}
		untouched(t, s, "victim0")
		if got := peerNames(t, s); len(got) != 0 {
			t.Errorf("host peers %q, want none", got)
		}
	})

	t.Run("host0 moved to a namespace of the machine's own and a veth planted", func(t *testing.T) {
		s := newVethSetup(t, "ve-test")
		inner, _ := newNS(t, "inner")
		ip(t, s.mach, "link", "set", "host0", "netns", inner) // ve-test stays, its peer is elsewhere
		s.plantVeth(t)
		if old := oldHostPeers(t, s); !contains(old, "victim0") {
			t.Fatalf("the attack is not set up: the old lookup finds %q", old)
		}
		_, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if !errors.Is(err, ErrNotMachineVeth) || !strings.Contains(err.Error(), "not in the machine's network namespace") {
			t.Errorf("configureHostEnd: %v, want ErrNotMachineVeth", err)
		}
		untouched(t, s, "victim0")
		untouched(t, s, "ve-test")
		if got := peerNames(t, s); len(got) != 0 {
			t.Errorf("host peers %q, want none", got)
		}
	})

	t.Run("host0 renamed and a veth planted under its name", func(t *testing.T) {
		s := newVethSetup(t, "ve-test")
		ip(t, s.mach, "link", "set", "host0", "name", "real0")
		s.plantVeth(t)
		if old := oldHostPeers(t, s); !contains(old, "victim0") {
			t.Fatalf("the attack is not set up: the old lookup finds %q", old)
		}
		_, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if !errors.Is(err, ErrNotMachineVeth) || !strings.Contains(err.Error(), `"real0"`) {
			t.Errorf("configureHostEnd: %v, want ErrNotMachineVeth naming real0", err)
		}
		untouched(t, s, "victim0")
		untouched(t, s, "ve-test")
		if got := peerNames(t, s); len(got) != 0 {
			t.Errorf("host peers %q, want none (status must not report victim0)", got)
		}
	})

	t.Run("a host link called ve-NAME that is no veth", func(t *testing.T) {
		s := newVethSetup(t, "")
		ip(t, s.host, "link", "add", "ve-test", "type", "bridge")
		_, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if !errors.Is(err, ErrNotMachineVeth) || !strings.Contains(err.Error(), "bridge") {
			t.Errorf("configureHostEnd: %v, want ErrNotMachineVeth (a bridge)", err)
		}
		untouched(t, s, "ve-test")
	})

	t.Run("a veth called ve-NAME into another namespace", func(t *testing.T) {
		s := newVethSetup(t, "")
		other, _ := newNS(t, "other")
		ip(t, s.host, "link", "add", "ve-test", "type", "veth", "peer", "name", "host0", "netns", other)
		_, err := configureHostEnd(s.hostNS, s.machNS, "test", testLink)
		if !errors.Is(err, ErrNotMachineVeth) {
			t.Errorf("configureHostEnd: %v, want ErrNotMachineVeth", err)
		}
		untouched(t, s, "ve-test")
	})

	t.Run("a long name, found by nspawn's altname", func(t *testing.T) {
		s := newVethSetup(t, "ve-averyverXXXX")
		ip(t, s.host, "link", "property", "add", "dev", "ve-averyverXXXX", "altname", "ve-averyverylongmachine")
		if end, err := configureHostEnd(s.hostNS, s.machNS, "averyverylongmachine", testLink); err != nil || end.Name != "ve-averyverXXXX" {
			t.Errorf("configureHostEnd: %+v, %v", end, err)
		}
	})

	t.Run("a long name, found by nspawn's hash without an altname", func(t *testing.T) {
		s := newVethSetup(t, "ve-averyverhjFR")
		if end, err := configureHostEnd(s.hostNS, s.machNS, "averyverylongmachine", testLink); err != nil || end.Name != "ve-averyverhjFR" {
			t.Errorf("configureHostEnd: %+v, %v", end, err)
		}
	})
}

// hostPeers is what Inspect reports as Peers for the machine whose
// network namespace is machNS.
func hostPeers(hostNS, machNS netns.NsHandle) ([]Interface, error) {
	host, mach, err := handles(hostNS, machNS)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	defer mach.Close()
	// Listing fills in IFLA_LINK_NETNSID, which gives the machine's
	// namespace an id in the host's if it had none: list first.
	links, err := host.LinkList()
	if err != nil {
		return nil, err
	}
	return peersOf(host, mach, hostNS, machNS, links)
}

// TestLinkAddress: the loopback proxy connects only to a machine address
// on the machine's own link, whatever addresses its root sets.
func TestLinkAddress(t *testing.T) {
	needNamespaces(t)
	setup := func(t *testing.T) vethSetup {
		s := newVethSetup(t, "ve-test")
		ip(t, s.host, "addr", "add", "10.77.0.1/28", "dev", "ve-test")
		ip(t, s.host, "addr", "add", "192.0.2.1/24", "dev", "victim0")
		ip(t, s.host, "link", "set", "ve-test", "up")
		ip(t, s.mach, "link", "set", "host0", "up")
		return s
	}
	t.Run("the machine's address on the link", func(t *testing.T) {
		s := setup(t)
		ip(t, s.mach, "addr", "add", "127.0.0.2/8", "dev", "host0")
		ip(t, s.mach, "addr", "add", "192.0.2.7/24", "dev", "host0") // another link's
		ip(t, s.mach, "addr", "add", "10.77.0.1/28", "dev", "host0") // the host's own
		ip(t, s.mach, "addr", "add", "10.77.0.5/28", "dev", "host0")
		if a, err := linkAddress(s.hostNS, s.machNS); err != nil || a.String() != "10.77.0.5" {
			t.Errorf("linkAddress: %v, %v; want 10.77.0.5", a, err)
		}
	})
	t.Run("none on the link", func(t *testing.T) {
		s := setup(t)
		ip(t, s.mach, "addr", "add", "192.0.2.7/24", "dev", "host0")
		ip(t, s.mach, "addr", "add", "10.77.0.1/28", "dev", "host0")
		if a, err := linkAddress(s.hostNS, s.machNS); !errors.Is(err, ErrNoLinkAddress) {
			t.Errorf("linkAddress: %v, %v; want ErrNoLinkAddress", a, err)
		}
	})
	t.Run("on a bridge the host end is in", func(t *testing.T) {
		s := newVethSetup(t, "vb-test")
		ip(t, s.host, "link", "add", "br-test", "type", "bridge")
		ip(t, s.host, "addr", "add", "10.78.0.1/24", "dev", "br-test")
		ip(t, s.host, "link", "set", "vb-test", "master", "br-test")
		ip(t, s.mach, "addr", "add", "10.78.0.9/24", "dev", "host0")
		if a, err := linkAddress(s.hostNS, s.machNS); err != nil || a.String() != "10.78.0.9" {
			t.Errorf("linkAddress: %v, %v; want 10.78.0.9", a, err)
		}
	})
	t.Run("a veth the machine planted", func(t *testing.T) {
		s := setup(t)
		ip(t, s.mach, "link", "del", "host0")
		s.plantVeth(t)
		// Its peer index is victim0's: the subnet there is not the link's.
		ip(t, s.mach, "addr", "add", "192.0.2.7/24", "dev", "host0")
		if a, err := linkAddress(s.hostNS, s.machNS); !errors.Is(err, ErrNoLinkAddress) {
			t.Errorf("linkAddress: %v, %v; want ErrNoLinkAddress", a, err)
		}
	})
}
