package network

import (
	"fmt"
	"os"
	"strings"
)

// NetworkdManagesVeths reports whether systemd-networkd runs in this
// network namespace with the stock configuration for container veths
// (80-container-ve.network: an address pool, a DHCP server and
// masquerading), not masked. nsbox then leaves the host side to it.
func NetworkdManagesVeths() bool {
	return networkdRunsHere("/proc") && containerVeNetwork([]string{"/etc/systemd/network", "/run/systemd/network", "/usr/lib/systemd/network", "/lib/systemd/network"})
}

// networkdRunsHere looks under proc for a systemd-networkd process in
// this process's network and PID namespaces: a machine runs its own
// networkd in a PID namespace of its own (in the host's network namespace
// too, with --network host). Reading other processes' namespaces needs
// root; without it, none is found.
func networkdRunsHere(proc string) bool {
	selfNet, err1 := os.Readlink(proc + "/self/ns/net")
	selfPID, err2 := os.Readlink(proc + "/self/ns/pid")
	if err1 != nil || err2 != nil {
		return false
	}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		comm, err := os.ReadFile(proc + "/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "systemd-network" {
			continue
		}
		net, err1 := os.Readlink(proc + "/" + e.Name() + "/ns/net")
		pid, err2 := os.Readlink(proc + "/" + e.Name() + "/ns/pid")
		if err1 == nil && err2 == nil && net == selfNet && pid == selfPID {
			return true
		}
	}
	return false
}

// containerVeNetwork reports whether the first 80-container-ve.network
// found in dirs (in networkd's order of precedence) is a real file: a
// link to /dev/null or an empty file masks it.
func containerVeNetwork(dirs []string) bool {
	for _, dir := range dirs {
		p := dir + "/80-container-ve.network"
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if target, err := os.Readlink(p); err == nil && target == "/dev/null" {
			return false
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			return false
		}
		return true
	}
	return false
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
