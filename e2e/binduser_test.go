//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// bindUserScenario is boot --bind-user on an overlay machine: a host user
// made for the test appears in the machine with their private group and
// home, a login shell as them lands in that home, what they write there
// is theirs on the host, the machine's /etc/passwd and /etc/group stay as
// they were; the user is remembered as BindUser=, kept by a plain boot
// and forgotten by --no-bind-users; a user the host lacks, root, and a
// boot without a user namespace are refused in one line, nothing changed.
func bindUserScenario(t *testing.T, e *env) {
	const name, user = "e2e-bu", "e2ebind"
	settings := "/etc/systemd/nspawn/" + name + ".nspawn"
	e.sh(t, "userdel -r "+user+" 2>/dev/null")
	e.mustSh(t, "useradd -m -s /bin/sh "+user+" && echo from-host > ~"+user+"/from-host && chown "+user+": ~"+user+"/from-host")
	defer e.sh(t, "userdel -r "+user)
	hostIDs := strings.TrimSpace(e.mustSh(t, "echo $(id -u "+user+"):$(id -g "+user+")"))

	e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", "overlay")
	defer e.nsb(t, "remove", "--force", name)
	// The machine's own user files, as the stopped machine has them.
	sums := func() string {
		t.Helper()
		return e.mustNsb(t, "shell", name, "--", "sha256sum", "/etc/passwd", "/etc/group").stdout
	}
	before := sums()

	// Errors: one line, nothing remembered, nothing running.
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--bind-user", "e2enosuch"}, 1, "this host has no such user"},
		{[]string{"--bind-user", "root"}, 2, "--bind-user \"root\""},
		{[]string{"--bind-user", "a:b"}, 2, "--bind-user"},
		{[]string{"--bind-user", user, "--private-users=false"}, 1, "user namespace"},
	} {
		wantFail(t, e.nsb(t, append([]string{"boot", name}, tc.args...)...), tc.code, tc.says)
		e.mustSh(t, "test ! -e "+settings)
		if i := status(t, e, name); i.State != "stopped" {
			t.Errorf("%v: %s is %s", tc.args, name, i.State)
		}
	}

	e.mustNsb(t, "boot", name, "--bind-user", user, "--network", "none")
	check := func(t *testing.T) {
		t.Helper()
		f := strings.Split(strings.TrimSpace(e.mustNsb(t, "shell", name, "--", "getent", "passwd", user).stdout), ":")
		if len(f) != 7 || f[0] != user || f[5] != "/run/host/home/"+user {
			t.Fatalf("getent passwd %s in the machine: %q", user, f)
		}
		uid := f[2]
		// As the user: their private group, their home and its files,
		// owned by them as the machine counts.
		got := e.mustNsb(t, "shell", name, "--uid", user, "--", "sh", "-c", "id -un; id -gn; cat ~/from-host; stat -c %u ~/from-host").stdout
		if got != user+"\n"+user+"\nfrom-host\n"+uid+"\n" {
			t.Errorf("as %s in the machine (name, group, a file of the home, its owner; want uid %s):\n%s", user, uid, got)
		}
		// A login shell lands in the home; what it writes is the host
		// user's on the host.
		e.sh(t, "rm -f ~"+user+"/from-machine")
		r := e.runIn(t, "pwd; touch ~/from-machine\n", e.argv("shell", name, "--uid", user)...)
		if r.code != 0 || r.stdout != "/run/host/home/"+user+"\n" {
			t.Errorf("login shell as %s:\n%s", user, r)
		}
		if got := e.mustSh(t, "stat -c %u:%g ~"+user+"/from-machine"); got != hostIDs+"\n" {
			t.Errorf("a file the machine wrote in the home is %s on the host, want %s", got, hostIDs)
		}
	}
	check(t)
	if got := e.mustSh(t, "grep '^BindUser=' "+settings); got != "BindUser="+user+"\n" {
		t.Errorf("remembered: %q", got)
	}
	if got := e.mustNsb(t, "shell", name, "--", "sha256sum", "/etc/passwd", "/etc/group").stdout; got != before {
		t.Errorf("the machine's /etc/passwd or /etc/group changed:\nbefore %s\nafter  %s", before, got)
	}
	if i := status(t, e, name); i.State != "running" {
		t.Fatalf("status: %+v", i)
	}

	// A plain boot keeps the user; --no-bind-users forgets them.
	e.mustNsb(t, "stop", name)
	e.mustNsb(t, "boot", name)
	check(t)
	e.mustNsb(t, "stop", name)
	e.mustNsb(t, "boot", name, "--no-bind-users")
	if r := e.nsb(t, "shell", name, "--", "getent", "passwd", user); r.code == 0 {
		t.Errorf("after --no-bind-users the machine still has %s:\n%s", user, r)
	}
	if got := e.query(t, "grep '^BindUser=' "+settings); got != "" {
		t.Errorf("after --no-bind-users the settings file keeps %q", got)
	}
	e.mustNsb(t, "stop", name)
	if got := sums(); got != before {
		t.Errorf("the machine's /etc/passwd or /etc/group changed on disk:\nbefore %s\nafter  %s", before, got)
	}
}
