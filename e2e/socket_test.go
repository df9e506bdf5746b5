//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// socketScenario checks enable --socket on running machine name: the
// first connection to the host port boots the stopped machine and is
// answered by its port 80; a stop and a connection boot it again;
// disable takes the socket away. Hosts without systemd refuse it.
func socketScenario(t *testing.T, e *env, name string) {
	if e.name != "machined" {
		wantFail(t, e.nsb(t, "enable", name, "--socket", "tcp:18090:80"), 1, "socket activation needs systemd as PID 1")
		wantFail(t, e.nsb(t, "enable", name, "--socket", "udp:18090"), 2, "TCP only")
		return
	}
	const port = "18090"
	sock := "nsbox-tcp-" + port + ".socket"
	// A service on port 80 inside, started by the machine's own systemd.
	e.mustNsb(t, "shell", name, "--", "sh", "-c", `printf '[Socket]\nListenStream=80\nAccept=yes\n[Install]\nWantedBy=sockets.target\n' > /etc/systemd/system/e2e-web.socket &&
printf '[Service]\nExecStart=/bin/echo hello-socket-%s\nStandardOutput=socket\n' "$(hostname)" > /etc/systemd/system/e2e-web@.service &&
systemctl enable --now e2e-web.socket`)
	e.mustNsb(t, "stop", name)
	wantFail(t, e.nsb(t, "enable", name, "--socket", "udp:"+port), 2, "TCP only")
	e.mustNsb(t, "enable", name, "--socket", "tcp:"+port+":80")
	defer e.nsb(t, "disable", name)
	if got := strings.TrimSpace(e.sh(t, "systemctl is-active "+sock).stdout); got != "active" {
		t.Fatalf("%s is %q", sock, got)
	}
	if i := status(t, e, name); i.State != "stopped" || len(i.Sockets) != 1 || i.Sockets[0] != "tcp:"+port+":80" {
		t.Fatalf("after enable --socket: %+v", i)
	}
	connect := func(limit string) result {
		return e.sh(t, "timeout "+limit+" bash -c 'exec 3<>/dev/tcp/127.0.0.1/"+port+"; cat <&3'")
	}
	want := "hello-socket-" + name + "\n"
	// The first connection waits for the boot.
	if r := connect("120"); r.stdout != want {
		t.Fatalf("first connection, through a boot:\n%s", r)
	}
	if i := status(t, e, name); i.State != "running" {
		t.Errorf("the first connection did not boot %s: %+v", name, i)
	}
	if r := connect("10"); r.stdout != want {
		t.Errorf("second connection:\n%s", r)
	}
	// A stop ends the socket's service; the next connection boots again.
	e.mustNsb(t, "stop", name)
	waitFor(t, 10*time.Second, "the socket's service ended with the machine", func() (bool, string) {
		st := strings.TrimSpace(e.sh(t, "systemctl is-active nsbox-tcp-"+port+".service").stdout)
		return st != "active" && st != "activating", st
	})
	if r := connect("120"); r.stdout != want {
		t.Errorf("a connection after a stop:\n%s", r)
	}
	// disable: the socket goes, the machine keeps running.
	e.mustNsb(t, "disable", name)
	e.mustSh(t, "test ! -e /etc/systemd/system/"+sock+" && test ! -e /etc/systemd/system/sockets.target.wants/"+sock)
	if r := connect("5"); r.stdout != "" {
		t.Errorf("the port answers after disable:\n%s", r)
	}
	if i := status(t, e, name); i.State != "running" || len(i.Sockets) != 0 {
		t.Errorf("after disable: %+v", i)
	}
	wantFail(t, e.nsb(t, "enable", "e2e-nope", "--socket", port), exitNotFound, "no such machine")
}
