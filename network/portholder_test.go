package network

import (
	"net"
	"os"
	"strings"
	"testing"
)

// A port this process listens on is found, and this process named.
func TestPortHolderNamesTheListener(t *testing.T) {
	for _, c := range []struct{ proto, addr string }{
		{"tcp", "127.0.0.1:0"}, {"tcp", "[::]:0"}, {"udp", "0.0.0.0:0"},
	} {
		var port int
		if c.proto == "tcp" {
			l, err := net.Listen(c.proto, c.addr)
			if err != nil {
				t.Logf("%s %s: %v", c.proto, c.addr, err)
				continue
			}
			defer l.Close()
			port = l.Addr().(*net.TCPAddr).Port
		} else {
			l, err := net.ListenPacket(c.proto, c.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			port = l.LocalAddr().(*net.UDPAddr).Port
		}
		u, ok := PortHolder(c.proto, port)
		if !ok {
			t.Errorf("%s %s: port %d not found in use", c.proto, c.addr, port)
			continue
		}
		if u.PID != os.Getpid() {
			t.Errorf("%s port %d: held by %v, want this test (pid %d)", c.proto, port, u, os.Getpid())
		}
		if !strings.Contains(u.String(), "pid") {
			t.Errorf("%v does not say the pid", u)
		}
	}
}

// A port nobody listens on is free; a TCP connection from a port is no
// listener.
func TestPortHolderFree(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if u, ok := PortHolder("tcp", port); ok {
		t.Errorf("closed port %d held by %v", port, u)
	}
	if got := hexPort("0100007F:1F90"); got != 8080 {
		t.Errorf("hexPort = %d", got)
	}
	if got := hexPort("00000000000000000000000000000000:0050"); got != 80 {
		t.Errorf("hexPort v6 = %d", got)
	}
}
