//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// execRunning checks shell's exec options (--env, --workdir, -t, -T) on
// running machine name, and what a machine's root can plant against
// --workdir.
func execRunning(t *testing.T, e *env, name string) {
	// Environment: values with a newline and an "=", one that replaces a
	// default (TERM), one taken from nsbox's own environment.
	r := e.run(t, append([]string{"env", "E2E_FROM_HOST=host value"}, e.argv("shell", name,
		"-e", "E2E_A=x=y", "-e", "E2E_ML=a\nb", "-e", "TERM=dumb", "-e", "E2E_FROM_HOST", "--",
		"sh", "-c", `printf '%s|%s|%s|%s' "$E2E_A" "$E2E_ML" "$TERM" "$E2E_FROM_HOST"`)...)...)
	if r.code != 0 || r.stdout != "x=y|a\nb|dumb|host value" {
		t.Errorf("--env:\n%s", r)
	}
	// The working directory, resolved inside the machine: links its root
	// planted (an absolute one to /etc, a relative one climbing past the
	// root) lead to the machine's own /etc, whose hostname is the machine's.
	e.mustNsb(t, "shell", name, "--", "sh", "-c", "ln -sfn /etc /root/e2e-etc && ln -sfn ../../../../../../etc /tmp/e2e-up")
	for _, dir := range []string{"/usr/share", "/root/e2e-etc", "/tmp/e2e-up"} {
		want := dir
		if dir != "/usr/share" {
			want = "/etc"
		}
		r := e.nsb(t, "shell", name, "-w", dir, "--", "sh", "-c", "pwd -P; cat ./hostname 2>/dev/null || true")
		if lines := strings.Split(r.stdout, "\n"); r.code != 0 || lines[0] != want || want == "/etc" && lines[1] != name {
			t.Errorf("--workdir %s, want %s (and the machine's hostname):\n%s", dir, want, r)
		}
	}
	if r := e.nsb(t, "shell", name, "--uid", "nobody", "--workdir", "/tmp", "--", "sh", "-c", "id -un; pwd"); r.stdout != "nobody\n/tmp\n" {
		t.Errorf("--uid with --workdir:\n%s", r)
	}
	// A login shell takes the options too; without --workdir it starts
	// in the user's home.
	if r := e.runIn(t, "echo \"$E2E_A\"; pwd\n", e.argv("shell", name, "-e", "E2E_A=1", "-w", "/var")...); r.code != 0 || r.stdout != "1\n/var\n" {
		t.Errorf("login shell with --env and --workdir:\n%s", r)
	}
	if r := e.runIn(t, "echo \"$E2E_A\"; pwd\n", e.argv("shell", name, "-e", "E2E_A=2")...); r.code != 0 || r.stdout != "2\n/root\n" {
		t.Errorf("login shell with --env:\n%s", r)
	}
	// -t gives a terminal without one here; -T none on one.
	if r := e.nsb(t, "shell", name, "-t", "--", "tty"); r.code != 0 || !strings.HasPrefix(r.stdout, "/dev/pts/") {
		t.Errorf("-t without a terminal:\n%s", r)
	}
	if out, code := e.pty(t, nil, "shell", name, "-T", "--", "sh", "-c", "tty; echo status $?"); code != 0 || !strings.Contains(out, "not a tty") || !strings.Contains(out, "status 1") {
		t.Errorf("-T on a terminal: exit %d, showed:\n%s", code, out)
	}
	if out, code := e.pty(t, []string{"echo \"in $(pwd)\"; tty; exit 0\n"}, "shell", name, "-T", "-w", "/srv"); code != 0 || !strings.Contains(out, "in /srv") || !strings.Contains(out, "not a tty") {
		t.Errorf("-T login shell on a terminal: exit %d, showed:\n%s", code, out)
	}
	execErrors(t, e, name)
}

// execStopped checks the exec options on stopped machine name, entered
// with systemd-nspawn -D.
func execStopped(t *testing.T, e *env, name string) {
	r := e.nsb(t, "shell", name, "-e", "E2E_A=a\nb", "-w", "/usr/share", "--", "sh", "-c", `printf '%s|' "$E2E_A"; pwd -P`)
	if r.code != 0 || r.stdout != "a\nb|/usr/share\n" {
		t.Errorf("--env and --workdir in a stopped machine:\n%s", r)
	}
	if r := e.nsb(t, "shell", name, "-w", "/root/e2e-etc", "--", "cat", "./hostname"); r.code != 0 || r.stdout != name+"\n" {
		t.Errorf("--workdir through a link in a stopped machine:\n%s", r)
	}
	if r := e.nsb(t, "shell", name, "-t", "--", "tty"); r.code != 0 || !strings.Contains(r.stdout, "/dev/pts/") {
		t.Errorf("-t in a stopped machine without a terminal:\n%s", r)
	}
	execErrors(t, e, name)
}

// execErrors checks the options' errors: one line, and nothing run.
func execErrors(t *testing.T, e *env, name string) {
	// The scenario's machine is a copy: its tree is seen from here.
	mark := e.rootDir + "/" + name + "/var/tmp/e2e-exec-ran"
	touch := []string{"--", "touch", "/var/tmp/e2e-exec-ran"}
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-w", "/e2e-nonexistent"}, touch...)...), 1, "--workdir /e2e-nonexistent: no such directory")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-w", "/etc/hostname"}, touch...)...), 1, "not a directory")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-w", "tmp"}, touch...)...), 2, "absolute path")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-e", "1X=y"}, touch...)...), 2, "--env")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-e", "X=a\x1bb"}, touch...)...), 2, "control character")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-e", "E2E_SURELY_UNSET"}, touch...)...), 2, "is not set here")
	wantFail(t, e.nsb(t, append([]string{"shell", name, "-t", "-T"}, touch...)...), 2, "-t (--tty) and -T")
	wantFail(t, e.nsb(t, "shell", "e2e-nope", "-e", "A=b", "-w", "/tmp", "--", "true"), exitNotFound, "no such machine")
	e.mustSh(t, "test ! -e "+mark)
}

// bootHoldsNoCallerFile boots stopped machine name from a shell that holds
// a file open on fd 7, as flock(1) holds its lock, and checks that nothing
// nsbox started (on the direct backend, the machine's supervisor and
// nspawn, which outlive the command) holds it after.
func bootHoldsNoCallerFile(t *testing.T, e *env, name string) {
	f := "/var/tmp/e2e-held-" + name
	defer e.sh(t, "rm -f "+f)
	e.mustSh(t, "exec 7>"+f+" && "+e.cmdline("boot", name)+" >/dev/null")
	if holders := e.query(t, "for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q ' "+f+"$' && echo ${p#/proc/}; done; true"); holders != "" {
		t.Errorf("processes still hold the file the caller of boot had open: %s", holders)
	}
}
