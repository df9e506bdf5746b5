package network

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
)

// NetworkdManagesVeths reports whether systemd-networkd runs on this host
// with its stock configuration for container veths (80-container-ve.network:
// an address pool, DHCP server and masquerading). nsbox then leaves the
// host side to it.
func NetworkdManagesVeths() bool {
	if _, err := os.Stat("/run/systemd/netif/state"); err != nil {
		return false
	}
	for _, dir := range []string{"/etc/systemd/network", "/run/systemd/network", "/usr/lib/systemd/network", "/lib/systemd/network"} {
		if _, err := os.Stat(dir + "/80-container-ve.network"); err == nil {
			return true
		}
	}
	return false
}

// ConfigureHostEnd gives the host end of a machine's veth its address and
// brings it up. The link may not exist yet when nspawn has just started: it
// is waited for up to wait.
func ConfigureHostEnd(ifname string, l Link, wait time.Duration) error {
	var link netlink.Link
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		if link, err = netlink.LinkByName(ifname); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("veth %s: %w", ifname, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.Host.Addr().AsSlice(), Mask: net.CIDRMask(l.Host.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", l.Host, ifname, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", ifname, err)
	}
	return nil
}

// MachineNetworkFile is the systemd-networkd configuration nsbox writes
// into a machine for its end of the veth (host0). It sorts before the
// stock 80-container-host0.network, which would ask for DHCP.
func MachineNetworkFile(l Link) string {
	return fmt.Sprintf(`# Written by nsbox at boot: this machine's end of its veth link.
[Match]
Kind=veth
Name=host0

[Network]
Address=%s
Gateway=%s
LinkLocalAddressing=ipv6
`, l.Machine, l.Host.Addr())
}

// nftTable is the nftables table nsbox keeps its masquerading rule in.
const nftTable = "nsbox"

// MasqueradeRules is the nft script that lets machines in pool reach
// beyond the host: masquerading for traffic from pool that leaves it, as
// systemd-networkd's IPMasquerade= does. The rules live in a table of
// their own ("nft list table ip nsbox") and the script replaces it whole.
func MasqueradeRules(pool netip.Prefix) string {
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[2]s ip daddr != %[2]s masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr %[2]s accept
		ip daddr %[2]s ct state established,related accept
	}
}
`, nftTable, pool.Masked())
}

// EnableForwarding turns IPv4 forwarding on, which masquerading needs.
func EnableForwarding() error {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}
