package network

import (
	"fmt"
	"net"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Interface is one network link seen from the host.
type Interface struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
}

// Addresses lists the global unicast addresses inside the network namespace
// of process pid, without entering it (netlink on the namespace's handle).
func Addresses(pid int) ([]string, error) {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() || a.IP.IsPrivate() {
			out = append(out, a.IP.String())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		// IPv4 first, then by text.
		a4, b4 := net.ParseIP(out[i]).To4() != nil, net.ParseIP(out[j]).To4() != nil
		if a4 != b4 {
			return a4
		}
		return out[i] < out[j]
	})
	return out, nil
}
