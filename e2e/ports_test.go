//go:build e2e

package e2e

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// peerScript, run for each connection by systemd-socket-activate --inetd
// in the machine, prints the connection's remote address as the kernel
// has it: the hex address field of /proc/net/tcp6 (or tcp).
const peerScript = `#!/bin/sh
ino=$(readlink /proc/self/fd/0 | tr -dc 0-9)
awk -v i="$ino" '$10 == i { print $3 }' /proc/net/tcp /proc/net/tcp6
`

// procNetAddr reads the address of a /proc/net/tcp{,6} field,
// "0100590A:1F90" or a v4-mapped IPv6 one: its last 32 bits, which the
// kernel prints as a little-endian word.
func procNetAddr(field string) (netip.Addr, bool) {
	a, _, _ := strings.Cut(strings.TrimSpace(field), ":")
	if len(a) < 8 {
		return netip.Addr{}, false
	}
	b, err := hex.DecodeString(a[len(a)-8:])
	if err != nil {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]}), true
}

// loopbackForwards checks, on running machine name booted with
// --port tcp:18080:8080 (an echo server there), tcp:18081:8081 and
// udp:15353:5353, that the forwards answer on the host's 127.0.0.1 and
// ::1 and from another network namespace, that the machine sees the host's
// end of the link as the source, and that all of it ends with the machine.
// It stops the machine.
func loopbackForwards(t *testing.T, e *env, name, hostEnd, localnetBefore string) {
	t.Helper()
	tcp := func(addr, port string) string {
		return e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+addr+"/"+port+"; cat <&3'").stdout
	}
	for _, addr := range []string{"127.0.0.1", "::1"} {
		var got string
		waitFor(t, 10*time.Second, "a reply through "+addr+":18080", func() (bool, string) {
			got = tcp(addr, "18080")
			return got == "hello-from-"+name+"\n", got
		})
	}
	// The machine sees the host's end of its link, never a loopback
	// address (apps there trust their own 127.0.0.1).
	e.runIn(t, peerScript, e.argv("shell", name, "--", "sh", "-c", "cat > /usr/local/bin/e2e-peer && chmod 755 /usr/local/bin/e2e-peer")...)
	e.mustNsb(t, "shell", name, "--", "systemd-run", "--unit=e2e-peer", "systemd-socket-activate", "-l", "8081", "--inetd", "-a", "/usr/local/bin/e2e-peer")
	for _, addr := range []string{"127.0.0.1", "::1"} {
		var got string
		waitFor(t, 10*time.Second, "the source address seen through "+addr+":18081", func() (bool, string) {
			got = tcp(addr, "18081")
			return strings.TrimSpace(got) != "", got
		})
		if a, ok := procNetAddr(got); !ok || a.String() != hostEnd {
			t.Errorf("through %s the machine saw %q (%v), want the host end %s", addr, got, a, hostEnd)
		}
	}
	// UDP: what the host sends to either loopback address reaches the
	// machine's socket.
	e.mustNsb(t, "shell", name, "--", "systemd-run", "--unit=e2e-udp", "systemd-socket-activate", "--datagram", "-l", "5353", "sh", "-c", "exec cat <&3 >/run/e2e-udp.txt")
	waitFor(t, 10*time.Second, "datagrams through 127.0.0.1 and ::1", func() (bool, string) {
		e.sh(t, "bash -c 'printf udp-v4 > /dev/udp/127.0.0.1/15353; printf udp-v6 > /dev/udp/::1/15353'")
		got := e.nsb(t, "shell", name, "--", "cat", "/run/e2e-udp.txt").stdout
		return strings.Contains(got, "udp-v4") && strings.Contains(got, "udp-v6"), got
	})

	// From another network namespace, joined to the host by a veth, to
	// the host's address on that link (nspawn's DNAT).
	ns := "e2e-client-" + fmt.Sprint(time.Now().UnixNano()%100000)
	e.mustSh(t, "ip netns add "+ns+" && ip link add e2e-cl0 type veth peer name e2e-cl1 netns "+ns+
		" && ip addr add 10.250.0.1/30 dev e2e-cl0 && ip link set e2e-cl0 up"+
		" && ip -n "+ns+" addr add 10.250.0.2/30 dev e2e-cl1 && ip -n "+ns+" link set e2e-cl1 up && ip -n "+ns+" link set lo up"+
		" && ip -n "+ns+" route add default via 10.250.0.1")
	defer e.sh(t, "ip link del e2e-cl0; ip netns del "+ns)
	fromNS := func() string {
		return e.sh(t, "timeout 3 ip netns exec "+ns+" bash -c 'exec 3<>/dev/tcp/10.250.0.1/18080; cat <&3'").stdout
	}
	waitFor(t, 10*time.Second, "a reply from another network namespace", func() (bool, string) {
		got := fromNS()
		return got == "hello-from-"+name+"\n", got
	})
	if got := e.mustSh(t, "cat /proc/sys/net/ipv4/conf/ve-"+name+"/route_localnet"); got != "0\n" {
		t.Errorf("route_localnet of ve-%s is %q", name, got)
	}

	e.mustNsb(t, "stop", name)
	// Nothing answers any more, on the loopback addresses or from outside,
	// and nothing of the forwards is left.
	for _, addr := range []string{"127.0.0.1", "::1"} {
		if got := tcp(addr, "18080"); got != "" {
			t.Errorf("%s:18080 answers after the stop: %q", addr, got)
		}
	}
	if got := fromNS(); got != "" {
		t.Errorf("the forward answers another namespace after the stop: %q", got)
	}
	if got := e.query(t, "pgrep -af '__ports "+name+"$'"); got != "" {
		t.Errorf("loopback proxy left after the stop: %s", got)
	}
	if got := e.query(t, "ss -Hlntu | grep -E ':(18080|18081|15353) '"); got != "" {
		t.Errorf("sockets left on the forwarded ports: %s", got)
	}
	if e.host != nil {
		if got := e.sh(t, "systemctl is-active nsbox-ports@"+name+".service").stdout; strings.TrimSpace(got) == "active" {
			t.Errorf("nsbox-ports@%s.service still active", name)
		}
	}
	if got := e.mustSh(t, "cat /proc/sys/net/ipv4/conf/all/route_localnet /proc/sys/net/ipv4/conf/lo/route_localnet"); got != localnetBefore {
		t.Errorf("route_localnet %q after, %q before", got, localnetBefore)
	}
	// A boot of the same machine right after is not refused for its own
	// forwards of the last run.
	e.mustNsb(t, "boot", name)
	waitFor(t, 10*time.Second, "the loopback forwards again after a new boot", func() (bool, string) {
		got := e.query(t, "ss -Hlnt | grep -E '(127.0.0.1|\\[::1\\]):18080 '")
		return strings.Count(got, "\n") == 2, got
	})
	e.mustNsb(t, "stop", name)
}
