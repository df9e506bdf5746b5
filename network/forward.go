package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// NftTable is the nftables table (family ip) nsbox keeps its rules in.
const NftTable = "nsbox"

// Forwarding is the host's IPv4 forwarding switch, net.ipv4.ip_forward
// (for IPv4 the same knob as net.ipv4.conf.all.forwarding: IPv4 has no
// per-interface forwarding), and nsbox's record of having turned it on.
type Forwarding struct {
	// Sysctl is the switch's file, /proc/sys/net/ipv4/ip_forward.
	Sysctl string
	// Marker is the record: written before nsbox turns forwarding on. It
	// lives under /run, so it goes when the setting goes, at reboot.
	Marker string
}

// HostForwarding is the switch of the host nsbox runs on, with its record
// under runDir (/run/nsbox).
func HostForwarding(runDir string) Forwarding {
	return Forwarding{Sysctl: "/proc/sys/net/ipv4/ip_forward", Marker: filepath.Join(runDir, "network", "ip-forward-by-nsbox")}
}

// markerText is what the record says to whoever finds it.
const markerText = `net.ipv4.ip_forward was 0 until nsbox turned it on for its machines, so
nsbox's forward chain (nft list table ip nsbox) drops forwarded traffic that
is not theirs. To forward for others too, turn ip_forward on yourself before
nsbox does (/etc/sysctl.d), or remove this file: the next boot of a machine
then leaves other forwarding alone.
`

// Owned reports whether forwarding is nsbox's to restrict: off, so that
// nsbox is the one to turn it on, or turned on by nsbox earlier in this
// boot (the record is there). Forwarding the administrator turned on is
// theirs, and nsbox leaves it as it was.
func (f Forwarding) Owned() (bool, error) {
	on, err := f.on()
	if err != nil || !on {
		return !on, err
	}
	_, err = os.Stat(f.Marker)
	return err == nil, nil
}

// Enable turns IPv4 forwarding on, which the machines' masquerading needs,
// writing the record first where it was off. Install the forward chain
// (NftRules) before: with forwarding on and no chain, the host forwards
// for anyone.
func (f Forwarding) Enable() error {
	on, err := f.on()
	if err != nil || on {
		return err
	}
	// The record first: whoever finds forwarding on because nsbox turned
	// it on finds the record too (two boots at once agree).
	if err := os.MkdirAll(filepath.Dir(f.Marker), 0o755); err != nil {
		return fmt.Errorf("record that nsbox turns IPv4 forwarding on: %w", err)
	}
	if err := os.WriteFile(f.Marker, []byte(markerText), 0o644); err != nil {
		return fmt.Errorf("record that nsbox turns IPv4 forwarding on: %w", err)
	}
	if err := os.WriteFile(f.Sysctl, []byte("1\n"), 0o644); err != nil {
		if rmErr := os.Remove(f.Marker); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = errors.Join(err, rmErr)
		}
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}

func (f Forwarding) on() (bool, error) {
	b, err := os.ReadFile(f.Sysctl)
	if err != nil {
		return false, fmt.Errorf("read IPv4 forwarding: %w", err)
	}
	return len(b) > 0 && b[0] != '0', nil
}

// NftRules is the nft script of nsbox's own table ("nft list table ip
// nsbox"), which it replaces whole. Machines in pools (each address pool
// in use: the one of this boot and the subnets machines were given from
// others) reach beyond the host, masqueraded as systemd-networkd's
// IPMasquerade= does. Its forward chain accepts what is the machines':
// what comes in from a machine's veth (ve-*) with a pool address, replies
// to it, and connections to a forwarded port (nspawn's --port DNATs them
// to the machine). Traffic to or from the pools that is none of those (a
// neighbour routing to a machine's address, a pool address spoofed from
// outside) is dropped. Other forwarding is dropped too when ownForwarding
// says nsbox turns forwarding on (Forwarding.Owned), since the host did
// not forward before; otherwise it is left alone. An nftables drop is
// final, whichever table would accept the packet: this chain never drops
// others' traffic on a host whose administrator forwards.
func NftRules(pools []netip.Prefix, ownForwarding bool) string {
	policy := "accept"
	if ownForwarding {
		policy = "drop"
	}
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[2]s ip daddr != %[2]s masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy %[3]s;
		iifname "ve-*" ip saddr %[2]s accept
		ip daddr %[2]s ct state established,related accept
		ip daddr %[2]s ct status dnat accept
		ip saddr %[2]s drop
		ip daddr %[2]s drop
	}
}
`, NftTable, nftPrefixes(pools), policy)
}

// nftPrefixes writes pools as one nft expression: the prefix itself, or an
// anonymous set of them. A prefix inside another is left out (nft refuses
// overlapping elements), so is one that is not IPv4.
func nftPrefixes(pools []netip.Prefix) string {
	var keep []netip.Prefix
	for _, p := range pools {
		p = p.Masked()
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		inside := false
		for _, q := range pools {
			q = q.Masked()
			if q != p && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside && !slices.Contains(keep, p) {
			keep = append(keep, p)
		}
	}
	slices.SortFunc(keep, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if len(keep) == 1 {
		return keep[0].String()
	}
	s := make([]string, len(keep))
	for i, p := range keep {
		s[i] = p.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
