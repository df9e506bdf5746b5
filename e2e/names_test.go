//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// namesScenario checks that running machines a and b are reached by name
// from the host and from each other, and that b's name goes when it
// stops: through nsbox's block in /etc/hosts on the direct backend, and
// through machined (nss-mymachines) on the host plus nsbox's block in
// the machines' own /etc/hosts on the machined one.
func namesScenario(t *testing.T, e *env, a, b string) {
	addr := func(n string) string {
		i := status(t, e, n)
		if len(i.Addresses) == 0 {
			t.Fatalf("%s has no address: %+v", n, i)
		}
		return i.Addresses[0]
	}
	aAddr, bAddr := addr(a), addr(b)
	// machined (nss-mymachines) also answers the veth's IPv6 link-local
	// address: the IPv4 one is asked for.
	if got := strings.Fields(e.sh(t, "getent ahostsv4 "+b).stdout); len(got) < 2 || got[0] != bAddr {
		t.Errorf("the host resolves %s to %v, want %s", b, got, bAddr)
	}
	if got := strings.Fields(e.nsb(t, "shell", a, "--", "getent", "hosts", b).stdout); len(got) < 2 || got[0] != bAddr {
		t.Errorf("%s resolves %s to %v, want %s", a, b, got, bAddr)
	}
	if got := strings.Fields(e.nsb(t, "shell", b, "--", "getent", "hosts", a).stdout); len(got) < 2 || got[0] != aAddr {
		t.Errorf("%s resolves %s to %v, want %s", b, a, got, aAddr)
	}
	// A listener in b, reached by its name from a and from the host.
	e.mustNsb(t, "shell", b, "--", "systemd-run", "--unit=e2e-name-echo", "systemd-socket-activate", "-l", "8081", "--inetd", "-a", "echo", "hello-from-"+b)
	defer e.nsb(t, "shell", b, "--", "systemctl", "stop", "e2e-name-echo")
	want := "hello-from-" + b + "\n"
	var got string
	waitFor(t, 10*time.Second, b+" by name from "+a, func() (bool, string) {
		got = e.nsb(t, "shell", a, "--", "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+b+"/8081; cat <&3").stdout
		return got == want, got
	})
	if r := e.sh(t, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+b+"/8081; cat <&3'"); r.stdout != want {
		t.Errorf("%s by name from the host:\n%s", b, r)
	}
	// The machine's own /etc/hosts: nsbox's lines between its markers,
	// every other line as it was.
	hosts := e.nsb(t, "shell", a, "--", "cat", "/etc/hosts").stdout
	if !strings.Contains(hosts, "# BEGIN nsbox machines") || !strings.Contains(hosts, bAddr+"\t"+b+"\n") || strings.Contains(hosts, "\t"+a+"\n") {
		t.Errorf("%s's /etc/hosts:\n%s", a, hosts)
	}
	// b stops: its name goes, on the host and in a.
	e.mustNsb(t, "stop", b)
	if r := e.sh(t, "getent hosts "+b); r.code == 0 {
		t.Errorf("the host still resolves stopped %s:\n%s", b, r)
	}
	if r := e.nsb(t, "shell", a, "--", "getent", "hosts", b); r.code == 0 {
		t.Errorf("%s still resolves stopped %s:\n%s", a, b, r)
	}
	if e.name == "direct" {
		if got := e.mustSh(t, "cat /etc/hosts"); strings.Contains(got, "\t"+b+"\n") || !strings.Contains(got, "\t"+a+"\n") {
			t.Errorf("the host's /etc/hosts after %s stopped:\n%s", b, got)
		}
	}
	e.mustNsb(t, "boot", b)
}
