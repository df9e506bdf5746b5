package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Forward is one forwarded port: connections to Host on the host go to
// Machine in the machine.
type Forward struct {
	Proto   string // "tcp" or "udp"
	Host    uint16
	Machine uint16
}

// String is the forward as nspawn's --port takes it: "tcp:8080:80".
func (f Forward) String() string { return fmt.Sprintf("%s:%d:%d", f.Proto, f.Host, f.Machine) }

// ParseForward reads a forward spec, "[tcp|udp:]HOST[:MACHINE]" (the
// machine port is the host port when left out).
func ParseForward(spec string) (Forward, error) {
	f := Forward{Proto: "tcp"}
	s := spec
	if p, rest, ok := strings.Cut(s, ":"); ok && (p == "tcp" || p == "udp") {
		f.Proto, s = p, rest
	}
	h, m, hasMachine := strings.Cut(s, ":")
	if !hasMachine {
		m = h
	}
	hp, err1 := strconv.ParseUint(h, 10, 16)
	mp, err2 := strconv.ParseUint(m, 10, 16)
	if err1 != nil || err2 != nil || hp == 0 || mp == 0 || strings.Contains(m, ":") {
		return Forward{}, fmt.Errorf("port %q: use [tcp|udp:]HOST[:MACHINE], ports 1-65535", spec)
	}
	f.Host, f.Machine = uint16(hp), uint16(mp)
	return f, nil
}

// Loopbacks are the host addresses nspawn's forwards leave out and the
// loopback proxy serves: its DNAT skips 127.0.0.0/8, and IPv6 has no
// route_localnet to send ::1 off the host at all.
var Loopbacks = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}

// Proxy limits: what one listener holds at most, whatever its clients
// (any host user) do.
const (
	// MaxProxyConns is the most TCP connections (or UDP clients) one
	// listener relays at once; more are closed (dropped) at once.
	MaxProxyConns = 256
	// proxyBuffer is the buffer of each direction of a TCP connection.
	proxyBuffer = 16 << 10
	// udpIdle ends a UDP client's relay after this long without a
	// datagram either way, as conntrack forgets an unreplied UDP flow.
	udpIdle = 60 * time.Second
	// dialTimeout bounds a connection to the machine.
	dialTimeout = 5 * time.Second
)

// LoopbackProxy relays a machine's forwarded ports from the host's
// loopback addresses to the machine, where nspawn's DNAT does not reach.
// It connects only to the address Target gives for the forward's machine
// port: nothing a client or the machine sends chooses where it connects.
// The machine sees connections come from the host's address on the link
// to it (the kernel's choice of source for the machine's address), never
// from a loopback address.
type LoopbackProxy struct {
	Forwards []Forward
	// Addrs are the addresses listened on; nil means Loopbacks.
	Addrs []netip.Addr
	// Target is the machine's address, asked for each new connection or
	// UDP client.
	Target func(ctx context.Context) (netip.Addr, error)
	// Logf reports what could not be served; nil discards it.
	Logf func(format string, args ...any)
	// MaxConns overrides MaxProxyConns (tests).
	MaxConns int
}

func (p *LoopbackProxy) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

func (p *LoopbackProxy) maxConns() int {
	if p.MaxConns > 0 {
		return p.MaxConns
	}
	return MaxProxyConns
}

// Listeners are the sockets Listen bound, each with its forward.
type Listeners struct {
	socks []io.Closer
	fwds  []Forward
}

// Close closes every socket.
func (ls *Listeners) Close() {
	for _, c := range ls.socks {
		c.Close()
	}
}

// Addrs lists what is bound, "127.0.0.1:8080/tcp", for logs and tests.
func (ls *Listeners) Addrs() []string {
	var out []string
	for i, c := range ls.socks {
		switch c := c.(type) {
		case net.Listener:
			out = append(out, c.Addr().String()+"/"+ls.fwds[i].Proto)
		case net.PacketConn:
			out = append(out, c.LocalAddr().String()+"/"+ls.fwds[i].Proto)
		}
	}
	return out
}

// Listen binds every forward on every address. An address the host lacks
// (no IPv6) is left out; a port taken there is reported through Logf and
// left out. It fails only when nothing at all could be bound.
func (p *LoopbackProxy) Listen() (*Listeners, error) {
	addrs := p.Addrs
	if addrs == nil {
		addrs = Loopbacks
	}
	ls := &Listeners{}
	var errs []error
	for _, f := range p.Forwards {
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, f.Host).String()
			var c io.Closer
			var err error
			if f.Proto == "udp" {
				c, err = net.ListenPacket("udp", ap)
			} else {
				c, err = net.Listen("tcp", ap)
			}
			switch {
			case err == nil:
				ls.socks, ls.fwds = append(ls.socks, c), append(ls.fwds, f)
			case errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT):
				// No such address here (IPv6 off): nothing to serve on it.
			default:
				p.logf("forward %s on %s: %v", f, a, err)
				errs = append(errs, err)
			}
		}
	}
	if len(ls.socks) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ls, nil
}

// Serve relays on what Listen bound until ctx ends, then closes it and
// every relayed connection, and returns once they are closed.
func (p *LoopbackProxy) Serve(ctx context.Context, ls *Listeners) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i, l := range ls.socks {
		f := ls.fwds[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch l := l.(type) {
			case net.Listener:
				p.serveTCP(ctx, l, f)
			case net.PacketConn:
				p.serveUDP(ctx, l, f)
			}
		}()
	}
	<-ctx.Done()
	ls.Close()
	wg.Wait()
}

// serveTCP accepts connections and relays each to the machine.
func (p *LoopbackProxy) serveTCP(ctx context.Context, l net.Listener, f Forward) {
	slots := make(chan struct{}, p.maxConns())
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			p.logf("forward %s: %v", f, err)
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close() // full: refused rather than queued
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			p.relayTCP(ctx, c.(*net.TCPConn), f)
		}()
	}
}

func (p *LoopbackProxy) relayTCP(ctx context.Context, c *net.TCPConn, f Forward) {
	defer c.Close()
	addr, err := p.Target(ctx)
	if err != nil {
		p.logf("forward %s: %v", f, err)
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	mc, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, f.Machine).String())
	if err != nil {
		p.logf("forward %s: %v", f, err)
		return
	}
	Relay(ctx, c, mc.(*net.TCPConn))
}

// Relay passes connection c to m and back until both ends are done or
// ctx ends, each direction through a buffer of its own; it closes both.
func Relay(ctx context.Context, c, m *net.TCPConn) {
	defer c.Close()
	defer m.Close()
	stop := context.AfterFunc(ctx, func() {
		c.Close()
		m.Close()
	})
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(m, c)
	}()
	copyHalf(c, m)
	<-done
}

// copyHalf copies one direction through a buffer of its own, then passes
// the end of it on (a half close), as the kernel's NAT would.
func copyHalf(dst, src *net.TCPConn) {
	buf := make([]byte, proxyBuffer)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if err != nil {
		// A reset or error one way ends both.
		dst.SetLinger(0)
		dst.Close()
		src.Close()
		return
	}
	_ = dst.CloseWrite()
}

// udpClient is one client's relay: a socket connected to the machine.
type udpClient struct {
	conn *net.UDPConn
	last time.Time
}

// serveUDP relays each client's datagrams through a socket of its own to
// the machine, and the machine's replies on that socket back to the
// client, until the client is idle for udpIdle.
func (p *LoopbackProxy) serveUDP(ctx context.Context, l net.PacketConn, f Forward) {
	pc := l.(*net.UDPConn)
	var mu sync.Mutex
	clients := map[netip.AddrPort]*udpClient{}
	var wg sync.WaitGroup
	defer func() {
		mu.Lock()
		for _, c := range clients {
			c.conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.logf("forward %s: %v", f, err)
			}
			return
		}
		mu.Lock()
		c := clients[from]
		if c == nil && len(clients) >= p.maxConns() {
			mu.Unlock()
			continue // full: dropped, as a full conntrack table drops
		}
		if c == nil {
			mu.Unlock()
			addr, err := p.Target(ctx)
			if err != nil {
				p.logf("forward %s: %v", f, err)
				continue
			}
			mc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, f.Machine)))
			if err != nil {
				p.logf("forward %s: %v", f, err)
				continue
			}
			c = &udpClient{conn: mc}
			mu.Lock()
			clients[from] = c
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.udpReplies(pc, c, from, &mu)
				mu.Lock()
				if clients[from] == c {
					delete(clients, from)
				}
				mu.Unlock()
				c.conn.Close()
			}()
		}
		c.last = time.Now()
		mu.Unlock()
		_, _ = c.conn.Write(buf[:n])
	}
}

// udpReplies sends what the machine answers on c back to client, until c
// is closed or has been idle both ways for udpIdle.
func (p *LoopbackProxy) udpReplies(pc *net.UDPConn, c *udpClient, client netip.AddrPort, mu *sync.Mutex) {
	buf := make([]byte, 64<<10)
	for {
		mu.Lock()
		deadline := c.last.Add(udpIdle)
		mu.Unlock()
		_ = c.conn.SetReadDeadline(deadline)
		n, err := c.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				idle := time.Since(c.last) >= udpIdle
				mu.Unlock()
				if idle {
					return
				}
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // nothing listens in the machine (yet): ICMP, not the end
			}
			return
		}
		mu.Lock()
		c.last = time.Now()
		mu.Unlock()
		_, _ = pc.WriteToUDPAddrPort(buf[:n], client)
	}
}
