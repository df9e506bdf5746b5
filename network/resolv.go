// Package network holds what nsbox knows of container networking: which
// resolv.conf a container gets, and the addresses and veth links of a
// network namespace. It knows nothing of machines or D-Bus.
package network

import (
	"bufio"
	"net"
	"os"
	"strings"
)

// resolvedUplink is systemd-resolved's list of the real upstream servers.
const resolvedUplink = "/run/systemd/resolve/resolv.conf"

// ResolvConfMode picks systemd-nspawn's --resolv-conf= value so that DNS
// works in a container without configuration. A host resolv.conf that
// names only loopback servers (resolved's stub 127.0.0.53, a local dnsmasq)
// is useless in a container with its own network: take resolved's uplink
// list when there is one. Otherwise copy the host's file.
func ResolvConfMode(hostResolvConf string, privateNetwork bool) string {
	if !privateNetwork {
		return "replace-host"
	}
	servers := Nameservers(hostResolvConf)
	loopbackOnly := len(servers) > 0
	for _, s := range servers {
		if ip := net.ParseIP(s); ip == nil || !ip.IsLoopback() {
			loopbackOnly = false
		}
	}
	if loopbackOnly {
		if _, err := os.Stat(resolvedUplink); err == nil {
			return "replace-uplink"
		}
	}
	return "replace-host"
}

// Nameservers lists the nameserver lines of a resolv.conf file.
func Nameservers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			out = append(out, fields[1])
		}
	}
	return out
}
