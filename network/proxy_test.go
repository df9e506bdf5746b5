package network

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseForward(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Forward
		ok   bool
	}{
		{"8080", Forward{"tcp", 8080, 8080}, true},
		{"tcp:8080:80", Forward{"tcp", 8080, 80}, true},
		{"udp:5353", Forward{"udp", 5353, 5353}, true},
		{"udp:53:5353", Forward{"udp", 53, 5353}, true},
		{"0", Forward{}, false},
		{"65536", Forward{}, false},
		{"sctp:80", Forward{}, false},
		{"tcp:1:2:3", Forward{}, false},
		{"tcp:", Forward{}, false},
		{"-1", Forward{}, false},
	} {
		got, err := ParseForward(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseForward(%q) = %v, %v; want %v (ok %v)", c.in, got, err, c.want, c.ok)
		}
	}
}

// tcpTarget is a fake machine service on 127.0.0.1: it writes "hello
// from <peer>" and then echoes what it reads until EOF, then closes.
func tcpTarget(t *testing.T) (port uint16, peers chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	peers = make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				peers <- c.RemoteAddr().String()
				fmt.Fprintf(c, "hello\n")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port), peers
}

func loopbackTarget(context.Context) (netip.Addr, error) {
	return netip.MustParseAddr("127.0.0.1"), nil
}

// startProxy serves f on 127.0.0.1 and ::1 (when the host has it) at
// ports of the kernel's choosing; it returns the bound addresses.
func startProxy(t *testing.T, p *LoopbackProxy) (addrs []string, stop func()) {
	t.Helper()
	if p.Target == nil {
		p.Target = loopbackTarget
	}
	p.Logf = t.Logf
	ls, err := p.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(ctx, ls)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return ls.Addrs(), stop
}

func TestLoopbackProxyTCP(t *testing.T) {
	port, peers := tcpTarget(t)
	addrs, stop := startProxy(t, &LoopbackProxy{Forwards: []Forward{{"tcp", 0, port}}})
	if len(addrs) == 0 || !strings.HasPrefix(addrs[0], "127.0.0.1:") {
		t.Fatalf("bound %v, want 127.0.0.1 first", addrs)
	}
	for _, a := range addrs {
		a = strings.TrimSuffix(a, "/tcp")
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatalf("dial %s: %v", a, err)
		}
		r := bufio.NewReader(c)
		if l, err := r.ReadString('\n'); l != "hello\n" {
			t.Fatalf("via %s: %q, %v", a, l, err)
		}
		// A half close reaches the machine, and what it sends after
		// still comes back.
		fmt.Fprint(c, "ping")
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(r)
		if string(rest) != "ping" || err != nil {
			t.Errorf("via %s: echo %q, %v", a, rest, err)
		}
		c.Close()
		// The machine sees the host's address towards it, here a
		// loopback one: never the client's own port.
		if p := <-peers; !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("target saw %s", p)
		}
	}
	stop()
	for _, a := range addrs {
		a = strings.TrimSuffix(a, "/tcp")
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still answers after the proxy stopped", a)
		}
	}
}

func TestLoopbackProxyTargetDown(t *testing.T) {
	// Nothing listens there: the client's connection is closed.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	addrs, _ := startProxy(t, &LoopbackProxy{Forwards: []Forward{{"tcp", 0, port}}, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	c, err := net.Dial("tcp", strings.TrimSuffix(addrs[0], "/tcp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("read %d, %v: want the connection closed", n, err)
	}
}

func TestLoopbackProxyConnLimit(t *testing.T) {
	port, _ := tcpTarget(t)
	addrs, _ := startProxy(t, &LoopbackProxy{Forwards: []Forward{{"tcp", 0, port}}, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, MaxConns: 2})
	a := strings.TrimSuffix(addrs[0], "/tcp")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if l, _ := bufio.NewReader(c).ReadString('\n'); l != "hello\n" {
			t.Fatalf("connection within the limit: %q", l)
		}
		held = append(held, c)
	}
	c, err := net.Dial("tcp", a)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil {
		t.Errorf("connection past the limit read %d, %v: want it closed", n, err)
	}
	// A slot freed serves the next one.
	held[0].Close()
	var got string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && got != "hello\n" {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		got, _ = bufio.NewReader(c).ReadString('\n')
		c.Close()
	}
	if got != "hello\n" {
		t.Errorf("after a slot was freed: %q", got)
	}
}

func TestLoopbackProxyUDP(t *testing.T) {
	target, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := target.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = target.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	port := uint16(target.LocalAddr().(*net.UDPAddr).Port)
	addrs, stop := startProxy(t, &LoopbackProxy{Forwards: []Forward{{"udp", 0, port}}})
	for _, a := range addrs {
		a = strings.TrimSuffix(a, "/udp")
		c, err := net.Dial("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range []string{"one", "two"} {
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if string(buf[:n]) != "re:"+msg {
				t.Errorf("via %s: %q, %v", a, buf[:n], err)
			}
		}
		c.Close()
	}
	stop()
}

func TestLoopbackProxyPortTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := uint16(held.Addr().(*net.TCPAddr).Port)
	p := &LoopbackProxy{Forwards: []Forward{{"tcp", port, 80}}, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Target: loopbackTarget}
	if _, err := p.Listen(); err == nil {
		t.Error("Listen on a taken port succeeded")
	}
}
