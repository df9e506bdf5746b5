package network

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestNftRules(t *testing.T) {
	pool := netip.MustParsePrefix("10.89.7.9/16")
	for _, c := range []struct {
		owned bool
		want  string
	}{
		{true, "policy drop;"},
		{false, "policy accept;"},
	} {
		got := NftRules([]netip.Prefix{pool}, c.owned)
		for _, want := range []string{
			// The table is replaced whole, creating it first so that
			// the delete never fails.
			"table ip nsbox {}\ndelete table ip nsbox\ntable ip nsbox {\n",
			"type nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade\n",
			"type filter hook forward priority filter; " + c.want + "\n" +
				"\t\tiifname \"ve-*\" ip saddr 10.89.0.0/16 accept\n" +
				"\t\tip daddr 10.89.0.0/16 ct state established,related accept\n" +
				"\t\tip daddr 10.89.0.0/16 ct status dnat accept\n" +
				"\t\tip saddr 10.89.0.0/16 drop\n" +
				"\t\tip daddr 10.89.0.0/16 drop\n\t}\n}\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("owned=%v: rules lack %q:\n%s", c.owned, want, got)
			}
		}
		if strings.Contains(got, "ip6") || strings.Contains(got, "inet ") {
			t.Errorf("owned=%v: rules touch IPv6:\n%s", c.owned, got)
		}
	}
}

func TestForwardingOwned(t *testing.T) {
	for _, c := range []struct {
		name             string
		sysctl           string
		marker           bool
		owned            bool
		after            string
		markerAfterwards bool
	}{
		{"off: nsbox turns it on and records it", "0\n", false, true, "1\n", true},
		{"on by the administrator: left alone", "1\n", false, false, "1\n", false},
		{"on by nsbox earlier in this boot", "1\n", true, true, "1\n", true},
		{"turned off again after nsbox: nsbox's once more", "0\n", true, true, "1\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			f := Forwarding{Sysctl: filepath.Join(dir, "ip_forward"), Marker: filepath.Join(dir, "run", "network", "ip-forward-by-nsbox")}
			os.WriteFile(f.Sysctl, []byte(c.sysctl), 0o644)
			if c.marker {
				os.MkdirAll(filepath.Dir(f.Marker), 0o755)
				os.WriteFile(f.Marker, nil, 0o644)
			}
			owned, err := f.Owned()
			if err != nil || owned != c.owned {
				t.Fatalf("Owned: %v, %v; want %v", owned, err, c.owned)
			}
			if err := f.Enable(); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(f.Sysctl); string(b) != c.after {
				t.Errorf("ip_forward %q, want %q", b, c.after)
			}
			fi, err := os.Stat(f.Marker)
			if (err == nil) != c.markerAfterwards {
				t.Errorf("record there: %v, want %v", err == nil, c.markerAfterwards)
			}
			if err == nil && fi.Mode().Perm() != 0o644 && !c.marker {
				t.Errorf("record mode %v", fi.Mode())
			}
			if owned, _ := f.Owned(); owned != c.owned {
				t.Errorf("Owned afterwards: %v, want %v", owned, c.owned)
			}
		})
	}
	t.Run("no sysctl: an error, nothing recorded", func(t *testing.T) {
		dir := t.TempDir()
		f := Forwarding{Sysctl: filepath.Join(dir, "missing"), Marker: filepath.Join(dir, "marker")}
		if _, err := f.Owned(); err == nil {
			t.Error("Owned without the sysctl: no error")
		}
		if err := f.Enable(); err == nil {
			t.Error("Enable without the sysctl: no error")
		}
		if _, err := os.Stat(f.Marker); err == nil {
			t.Error("record written")
		}
	})
}

// forwardSetup is a "host" namespace with three neighbours behind veths:
// a machine (ve-test, a /30 of the pool), a LAN neighbour and a far
// network the neighbour would like to reach through the host.
type forwardSetup struct {
	host, mach, lan, far         string
	hostNS, machNS, lanNS, farNS netns.NsHandle
}

func newForwardSetup(t *testing.T) forwardSetup {
	t.Helper()
	var s forwardSetup
	s.host, s.hostNS = newNS(t, "fwd-host")
	s.mach, s.machNS = newNS(t, "fwd-mach")
	s.lan, s.lanNS = newNS(t, "fwd-lan")
	s.far, s.farNS = newNS(t, "fwd-far")
	for _, l := range []struct{ ns, hostEnd, hostAddr, addr, gw string }{
		{s.mach, "ve-test", "10.89.0.1/30", "10.89.0.2/30", "10.89.0.1"},
		{s.lan, "lan0", "192.0.2.1/24", "192.0.2.2/24", "192.0.2.1"},
		{s.far, "far0", "198.51.100.1/24", "198.51.100.2/24", "198.51.100.1"},
	} {
		ip(t, s.host, "link", "add", l.hostEnd, "type", "veth", "peer", "name", "eth0", "netns", l.ns)
		ip(t, s.host, "addr", "add", l.hostAddr, "dev", l.hostEnd)
		ip(t, s.host, "link", "set", l.hostEnd, "up")
		ip(t, l.ns, "addr", "add", l.addr, "dev", "eth0")
		ip(t, l.ns, "link", "set", "eth0", "up")
		ip(t, l.ns, "route", "add", "default", "via", l.gw)
	}
	return s
}

// nft loads script into the namespace's nftables.
func (s forwardSetup) nft(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", s.host, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s\n%s", err, out, script)
	}
}

// listen serves, in namespace ns, one line per connection: the address
// the connection came from.
func listen(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var l net.Listener
	if err := inNS(ns, func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
}

// dial connects from namespace ns and returns the source address the
// listener saw.
func dial(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var seen string
	err := inNS(ns, func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		b, err := io.ReadAll(c)
		seen = strings.TrimSpace(string(b))
		return err
	})
	return seen, err
}

// TestForwardingOnlyForMachines: with the forward chain nsbox installs,
// the host forwards for its machines (masqueraded) and for forwarded
// ports, and for nobody else when nsbox was the one to turn forwarding
// on; a LAN neighbour never reaches a machine's address directly
// (issue "Isolation that holds", item 10).
func TestForwardingOnlyForMachines(t *testing.T) {
	needNamespaces(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (apt-get install nftables)")
	}
	const (
		ok      = 3 * time.Second
		blocked = 700 * time.Millisecond
	)
	before, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(after) != string(before) {
			t.Errorf("the real host's ip_forward changed: %q, was %q", after, before)
		}
	})
	pool := netip.MustParsePrefix(DefaultPool)

	// enable does what nsbox's masquerade does, in the host namespace:
	// decide, install the chain, then turn forwarding on.
	enable := func(t *testing.T, s forwardSetup, initial string) bool {
		t.Helper()
		f := Forwarding{Sysctl: "/proc/sys/net/ipv4/ip_forward", Marker: filepath.Join(t.TempDir(), "ip-forward-by-nsbox")}
		var owned bool
		if err := inNS(s.hostNS, func() (err error) {
			if err := os.WriteFile(f.Sysctl, []byte(initial), 0o644); err != nil {
				return err
			}
			owned, err = f.Owned()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		s.nft(t, NftRules([]netip.Prefix{pool}, owned))
		if err := inNS(s.hostNS, f.Enable); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("ip", "netns", "exec", s.host, "cat", "/proc/sys/net/ipv4/ip_forward").Output(); err != nil || string(out) != "1\n" {
			t.Fatalf("forwarding in the host namespace: %q, %v", out, err)
		}
		return owned
	}
	// nspawn's --port: host port 18080 to the machine's 8080.
	const port = `table ip nsbox-test-port {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 192.0.2.1 tcp dport 18080 dnat to 10.89.0.2:8080
	}
}
`

	t.Run("forwarding was off: nsbox forwards only for its machines", func(t *testing.T) {
		s := newForwardSetup(t)
		if owned := enable(t, s, "0\n"); !owned {
			t.Fatal("nsbox turned forwarding on but does not own it")
		}
		s.nft(t, port)
		listen(t, s.lanNS, "192.0.2.2:8000")
		listen(t, s.farNS, "198.51.100.2:8000")
		listen(t, s.machNS, "10.89.0.2:8080")
		if seen, err := dial(s.machNS, "192.0.2.2:8000", ok); err != nil || seen != "192.0.2.1" {
			t.Errorf("machine to LAN neighbour: seen from %q, %v; want masqueraded as 192.0.2.1", seen, err)
		}
		if seen, err := dial(s.lanNS, "192.0.2.1:18080", ok); err != nil || seen != "192.0.2.2" {
			t.Errorf("LAN neighbour to the forwarded port: seen from %q, %v", seen, err)
		}
		if seen, err := dial(s.lanNS, "198.51.100.2:8000", blocked); err == nil {
			t.Errorf("LAN neighbour routed through the host to another network (seen from %s)", seen)
		}
		if seen, err := dial(s.lanNS, "10.89.0.2:8080", blocked); err == nil {
			t.Errorf("LAN neighbour reached the machine's address directly (seen from %s)", seen)
		}
		if seen, err := dial(s.farNS, "192.0.2.2:8000", blocked); err == nil {
			t.Errorf("far network routed through the host to the LAN (seen from %s)", seen)
		}
	})

	t.Run("forwarding was on: others' routing stays as it was", func(t *testing.T) {
		s := newForwardSetup(t)
		if owned := enable(t, s, "1\n"); owned {
			t.Fatal("the administrator's forwarding taken for nsbox's")
		}
		listen(t, s.lanNS, "192.0.2.2:8000")
		listen(t, s.farNS, "198.51.100.2:8000")
		listen(t, s.machNS, "10.89.0.2:8080")
		if seen, err := dial(s.machNS, "192.0.2.2:8000", ok); err != nil || seen != "192.0.2.1" {
			t.Errorf("machine to LAN neighbour: seen from %q, %v; want masqueraded as 192.0.2.1", seen, err)
		}
		if seen, err := dial(s.lanNS, "198.51.100.2:8000", ok); err != nil || seen != "192.0.2.2" {
			t.Errorf("LAN neighbour to another network, routed by the host as before: seen from %q, %v", seen, err)
		}
		if seen, err := dial(s.lanNS, "10.89.0.2:8080", blocked); err == nil {
			t.Errorf("LAN neighbour reached the machine's address directly (seen from %s)", seen)
		}
	})
}
