package machine

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
)

func TestParseSocket(t *testing.T) {
	for in, want := range map[string]Socket{"tcp:8080:80": {8080, 80}, "8080": {8080, 8080}, "tcp:443": {443, 443}, "9000:22": {9000, 22}} {
		if got, err := ParseSocket(in); err != nil || got != want {
			t.Errorf("ParseSocket(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, says := range map[string]string{"udp:53": "TCP only", "tcp:0": "ports 1-65535", "tcp:8080:80:1": "[tcp:]HOST", "sctp:1": "[tcp:]HOST", "": "[tcp:]HOST", "80\n": "control character"} {
		if _, err := ParseSocket(in); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseSocket(%q): %v, want one saying %q", in, err, says)
		}
	}
}

func TestEnableSocketsInstallsAndDisableRemoves(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done"}
	m, _ := newTestManager(t, f)
	m.Self = func() (string, error) { return "/usr/bin/nsbox", nil }
	mkMachine(t, m, "web")
	mkMachine(t, m, "db")
	units := m.Backend.(interface{ Sockets(string) []string })
	dir := filepath.Join(filepath.Dir(m.RootDir), "units")
	// A free port: listen, note it, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	spec := "tcp:" + strconv.Itoa(port) + ":80"
	// Held by a host process: refused, nothing written.
	if err := m.EnableSockets(ctx, "web", []string{spec}); err == nil || !strings.Contains(err.Error(), "in use on this host") {
		t.Fatalf("a port a host process listens on: %v", err)
	}
	l.Close()
	if got := units.Sockets("web"); len(got) != 0 {
		t.Fatalf("a refused enable left sockets %v", got)
	}
	if err := m.EnableSockets(ctx, "web", []string{spec}); err != nil {
		t.Fatal(err)
	}
	sock, err := os.ReadFile(filepath.Join(dir, "nsbox-tcp-"+strconv.Itoa(port)+".socket"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := os.ReadFile(filepath.Join(dir, "nsbox-tcp-"+strconv.Itoa(port)+".service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ListenStream=" + strconv.Itoa(port) + "\n", "WantedBy=sockets.target\n", "X-NsboxMachine=web\n"} {
		if !strings.Contains(string(sock), want) {
			t.Errorf("socket unit lacks %q:\n%s", want, sock)
		}
	}
	if !strings.Contains(string(svc), "ExecStart=/usr/bin/nsbox --root-dir "+m.RootDir+" --cache-dir "+m.CacheDir+" __socket-proxy web 80\n") {
		t.Errorf("service unit:\n%s", svc)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sockets.target.wants", "nsbox-tcp-"+strconv.Itoa(port)+".socket")); err != nil {
		t.Errorf("socket not enabled: %v", err)
	}
	if got := m.Sockets("web"); !slices.Equal(got, []string{spec}) {
		t.Errorf("Sockets: %v", got)
	}
	// Again for the same machine: the same units; for another: refused.
	if err := m.EnableSockets(ctx, "web", []string{spec}); err != nil {
		t.Errorf("enable twice: %v", err)
	}
	if err := m.EnableSockets(ctx, "db", []string{spec}); err == nil || !strings.Contains(err.Error(), "boots machine web already") {
		t.Errorf("another machine's port: %v", err)
	}
	if err := m.Rename(ctx, "web", "www"); err == nil || !strings.Contains(err.Error(), "nsbox disable web") {
		t.Errorf("rename with sockets: %v", err)
	}
	if err := m.Disable(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*", "nsbox-tcp-*")); len(left) > 0 {
		t.Errorf("disable left %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "nsbox-tcp-*")); len(left) > 0 {
		t.Errorf("disable left %v", left)
	}
	// Networks the service cannot reach a machine on safely: refused.
	os.MkdirAll(m.SettingsDir, 0o755)
	os.WriteFile(m.settingsPath("db"), []byte("[Network]\nBridge=br0\n"), 0o644)
	if err := m.EnableSockets(ctx, "db", []string{"tcp:18099:80"}); err == nil || !strings.Contains(err.Error(), "veth of its own") {
		t.Errorf("a bridged machine: %v", err)
	}
}

func TestPassConnPassesBothWays(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		c, err := target.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c) // to the client's half-close
		c.Write([]byte("got " + string(b)))
		c.Close()
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go func() {
		c, err := front.Accept()
		if err == nil {
			passConn(context.Background(), c, target.Addr().String(), time.Now())
		}
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "got hello" {
		t.Errorf("through the proxy: %q, %v", b, err)
	}
}
