// Package download fetches files over HTTP(S) for nsbox: the guarded
// transport registries and URL imports share (timeouts, a stall limit,
// plain HTTP only where it is safe), a root file system tarball fetched
// to a file with its sha256 taken as it comes, the SHA256SUMS line that
// names it, and its detached OpenPGP signature checked with gpgv.
// It knows nothing of machines.
package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Errors of a download, for errors.Is.
var (
	// ErrPlainHTTP refuses plain HTTP where anyone on the path could
	// change what comes.
	ErrPlainHTTP = errors.New("plain HTTP refused")
	// ErrStalled ends a response whose server stopped sending.
	ErrStalled = errors.New("stalled")
)

// Transport is the HTTP transport nsbox fetches with: the environment's
// proxy, timeouts for a server that does not answer (stall: for one that
// stops sending a response), and plain HTTP to loopback only unless
// plainHTTP (go-containerregistry also speaks it to private addresses,
// where anyone on the path could change a tag's manifest).
func Transport(stall time.Duration, plainHTTP bool) http.RoundTripper {
	d := &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}
	return guarded{stall: stall, plainHTTP: plainHTTP, next: &http.Transport{
		Proxy: http.ProxyFromEnvironment, DialContext: d.DialContext, ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: 15 * time.Second, ResponseHeaderTimeout: stall,
		IdleConnTimeout: 90 * time.Second, MaxIdleConns: 10,
	}}
}

// Guard is next with Transport's guards (plain HTTP, the stall limit),
// for a test's stand-in transport.
func Guard(next http.RoundTripper, stall time.Duration, plainHTTP bool) http.RoundTripper {
	return guarded{next: next, stall: stall, plainHTTP: plainHTTP}
}

// guarded refuses plain HTTP but to loopback (unless plainHTTP), and ends
// a response that sends nothing for stall.
type guarded struct {
	next      http.RoundTripper
	stall     time.Duration
	plainHTTP bool
}

func (t guarded) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !t.plainHTTP && !Loopback(r.URL.Hostname()) {
		return nil, fmt.Errorf("%w: plain HTTP to %s (nsbox speaks it to loopback only)", ErrPlainHTTP, r.URL.Host)
	}
	ctx, cancel := context.WithCancel(r.Context())
	resp, err := t.next.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	b := &stallBody{ReadCloser: resp.Body, cancel: cancel, stall: t.stall}
	b.timer = time.AfterFunc(t.stall, b.fire)
	resp.Body = b
	return resp, nil
}

// stallBody cancels its request when nothing came for stall.
type stallBody struct {
	io.ReadCloser
	cancel context.CancelFunc
	stall  time.Duration
	timer  *time.Timer
	fired  atomic.Bool
}

func (b *stallBody) fire() {
	b.fired.Store(true)
	b.cancel()
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.fired.Load() {
		return n, fmt.Errorf("%w: nothing came for %s", ErrStalled, b.stall)
	}
	if n > 0 {
		b.timer.Reset(b.stall)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// Loopback reports whether host names this machine's loopback.
func Loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
