//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// traces counts what a throwaway run could leave on the host: mounts of
// its tree or tmpfs, overlays, veths of run machines, its processes,
// state files and cgroups of run machines, and the upper directories of
// ephemeral boots. Runs of other suites (their machines are not named
// run-...) do not count.
func runTraces(t *testing.T, e *env) string {
	t.Helper()
	count := func(what, script string) string {
		return fmt.Sprintf("%s=%s", what, strings.TrimSpace(e.query(t, script+" | wc -l")))
	}
	return strings.Join([]string{
		count("mounts", "grep -E ' /run/nsbox/run| "+e.rootDir+"/' /proc/self/mountinfo"),
		count("overlays", "grep -E ' overlay ' /proc/self/mountinfo | grep -E '/run/nsbox/run|"+e.rootDir+"'"),
		count("veths", "ip -br link | grep -E '^ve-run-'"),
		count("processes", "pgrep -fa '[_]_run |[s]ystemd-nspawn .*--machine=run-|[_]_supervise .*/run-'"),
		count("states", "ls /run/nsbox/machines/ 2>/dev/null | grep '^run-'"),
		count("cgroups", "ls -d /sys/fs/cgroup/*/nsbox/run-* /sys/fs/cgroup/machine.slice/*run-* 2>/dev/null"),
		count("rundir", "ls -A /run/nsbox/run 2>/dev/null"),
		count("ephemeral", "ls -A "+e.rootDir+"/.nsbox/.ephemeral /run/nsbox/ephemeral 2>/dev/null | grep -v ':$' | grep ."),
	}, " ")
}

// wantNoTraces polls until the run's traces are as before, and reports
// what was last seen.
func wantNoTraces(t *testing.T, e *env, before, after string) {
	t.Helper()
	waitFor(t, 10*time.Second, "nothing left after "+after, func() (bool, string) {
		now := runTraces(t, e)
		return now == before, now + " (before: " + before + ")"
	})
}

// runScenario is nsbox run: a command in a throwaway machine, its exit
// status and streams passed through, and nothing of it left however it
// ends; and boot --ephemeral of an existing machine.
func runScenario(t *testing.T, e *env) {
	before := runTraces(t, e)
	run := func(args ...string) []string {
		return append([]string{"run", "--release", "bookworm"}, args...)
	}

	t.Run("exit status and streams", func(t *testing.T) {
		if r := e.nsb(t, run("--", "sh", "-c", "exit 7")...); r.code != 7 {
			t.Errorf("exit 7 came back as %d\n%s", r.code, r)
		}
		if r := e.nsb(t, run("--", "sh", "-c", "kill -9 $$")...); r.code != 137 {
			t.Errorf("SIGKILL came back as %d, want 137\n%s", r.code, r)
		}
		r := e.mustNsb(t, run("--", "sh", "-c", "grep VERSION_CODENAME /etc/os-release; echo to-stderr >&2")...)
		if r.stdout != "VERSION_CODENAME=bookworm\n" || !strings.Contains(r.stderr, "to-stderr") {
			t.Errorf("streams: %s", r)
		}
		if r := e.runIn(t, "through stdin\n", e.argv(run("--", "cat")...)...); r.stdout != "through stdin\n" || r.code != 0 {
			t.Errorf("stdin not passed: %s", r)
		}
		// The machine's root is root inside and nobody outside.
		r = e.mustNsb(t, run("--", "sh", "-c", "id -u; cat /proc/self/uid_map")...)
		if f := strings.Fields(r.stdout); len(f) != 4 || f[0] != "0" || f[1] != "0" || f[2] == "0" || f[3] != "65536" {
			t.Errorf("user namespace (want root inside, a range of 65536 outside, host root not mapped): %s", r)
		}
		out, code := e.pty(t, nil, run("--", "sh", "-c", "tty; exit 3")...)
		if code != 3 || !strings.Contains(out, "/dev/pts/") {
			t.Errorf("on a terminal: exit %d, the terminal showed:\n%s", code, out)
		}
		wantNoTraces(t, e, before, "runs")
	})

	t.Run("a throwaway tree", func(t *testing.T) {
		e.mustNsb(t, run("--", "sh", "-c", "echo x > /etc/e2e-run; rm /etc/issue")...)
		e.mustNsb(t, run("--", "sh", "-c", "test ! -e /etc/e2e-run && test -e /etc/issue")...)
		// The base is not the run's to change.
		e.mustSh(t, "test ! -e "+e.cacheDir+"/bases/*/root/etc/e2e-run")
	})

	t.Run("usage errors", func(t *testing.T) {
		wantFail(t, e.nsb(t, "run", "--", "true"), 2, "--release")
		wantFail(t, e.nsb(t, run()...), 2, "no command")
		wantFail(t, e.nsb(t, run("--network", "veth", "--", "true")...), 2, "needs --boot")
		wantFail(t, e.nsb(t, "run", "--from", "e2e-nope", "--", "true"), exitNotFound, "no such machine")
	})

	t.Run("boot", func(t *testing.T) {
		r := e.nsb(t, run("--boot", "--", "sh", "-c", "systemctl is-system-running; hostname; exit 4")...)
		lines := strings.Fields(r.stdout)
		if r.code != 4 || len(lines) != 2 || (lines[0] != "running" && lines[0] != "degraded") || !strings.HasPrefix(lines[1], "run-") {
			t.Errorf("run --boot:\n%s", r)
		}
		wantNoTraces(t, e, before, "a booted run")
	})

	t.Run("two at once", func(t *testing.T) {
		done := make(chan result, 2)
		for i := range 2 {
			go func() {
				done <- e.nsb(t, run("--", "sh", "-c", fmt.Sprintf("sleep 2; hostname; exit %d", 10+i))...)
			}()
		}
		codes, names := map[int]bool{}, map[string]bool{}
		for range 2 {
			r := <-done
			codes[r.code] = true
			names[strings.TrimSpace(r.stdout)] = true
		}
		if !codes[10] || !codes[11] || len(names) != 2 {
			t.Errorf("two runs: codes %v, hostnames %v", codes, names)
		}
		wantNoTraces(t, e, before, "two runs")
	})

	// interrupt starts nsbox run, sends sig after wait and checks that
	// it ends and leaves nothing.
	interrupt := func(t *testing.T, sig syscall.Signal, wait time.Duration, boot bool) {
		args := run()
		if boot {
			args = append(args, "--boot")
		}
		full := append(append([]string{}, e.prefix...), e.argv(append(args, "--", "sleep", "600")...)...)
		cmd := exec.Command(full[0], full[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(wait)
		_ = cmd.Process.Signal(sig)
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		select {
		case <-waited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("run did not end within a minute of %v", sig)
		}
		if sig == syscall.SIGINT && cmd.ProcessState.ExitCode() != 130 {
			t.Errorf("interrupted run exited %d, want 130", cmd.ProcessState.ExitCode())
		}
		wantNoTraces(t, e, before, fmt.Sprintf("%v after %s", sig, wait))
	}
	if e.host != nil {
		// Signals reach nsbox in the test host only through its
		// prefix; the host's own runs test them.
		t.Log("interrupted runs are tested on the host only")
	} else {
		t.Run("SIGINT at start", func(t *testing.T) { interrupt(t, syscall.SIGINT, 50*time.Millisecond, false) })
		t.Run("SIGINT mid-command", func(t *testing.T) { interrupt(t, syscall.SIGINT, 2*time.Second, false) })
		t.Run("SIGTERM mid-command", func(t *testing.T) { interrupt(t, syscall.SIGTERM, 2*time.Second, false) })
		t.Run("SIGKILL of nsbox", func(t *testing.T) { interrupt(t, syscall.SIGKILL, 2*time.Second, false) })
		t.Run("SIGINT during a boot", func(t *testing.T) { interrupt(t, syscall.SIGINT, 500*time.Millisecond, true) })
		t.Run("SIGKILL of a booted run", func(t *testing.T) { interrupt(t, syscall.SIGKILL, 6*time.Second, true) })
	}

	t.Run("from a machine, and boot --ephemeral", func(t *testing.T) {
		for _, storage := range []string{"copy", "overlay"} {
			name := "e2e-run-" + storage
			root := e.rootDir + "/.nsbox/" + name
			e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", storage)
			e.mustNsb(t, "shell", name, "--", "sh", "-c", "echo mine > /root/mark; rm /etc/issue")
			// A run over the machine sees its files and changes none.
			r := e.mustNsb(t, "run", "--from", name, "--", "sh", "-c", "cat /root/mark; test ! -e /etc/issue && echo gone; echo x > /root/mark; touch /root/new")
			if r.stdout != "mine\ngone\n" {
				t.Errorf("run --from %s: %s", name, r)
			}
			snapshot := "cd " + root + " && find . -xdev -printf '%p %U %s %T@\\n' 2>/dev/null | sort | md5sum"
			if storage == "overlay" {
				snapshot = "cd " + e.rootDir + "/.nsbox/.overlay/" + name + "/upper && find . -printf '%p %U %s %T@\\n' | sort | md5sum"
			}
			tree := e.mustSh(t, snapshot)

			e.mustNsb(t, "boot", "--ephemeral", name, "--network", "none")
			wantFail(t, e.nsb(t, "run", "--from", name, "--", "true"), exitRunning, "is running")
			if r := e.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /root/mark; echo eph > /root/eph; echo x > /root/mark"); r.stdout != "mine\n" {
				t.Errorf("ephemeral %s: %s", name, r)
			}
			e.mustNsb(t, "stop", name)
			if got := e.mustSh(t, snapshot); got != tree {
				t.Errorf("%s's tree changed by an ephemeral boot", name)
			}
			e.mustNsb(t, "shell", name, "--", "sh", "-c", "test ! -e /root/eph && grep -qx mine /root/mark")
			// The next boot is a plain one, over the tree itself.
			e.mustNsb(t, "boot", name, "--network", "none")
			e.mustNsb(t, "shell", name, "--", "sh", "-c", "test ! -e /root/eph")
			e.mustNsb(t, "remove", "--force", name)
		}
		wantNoTraces(t, e, before, "ephemeral boots")
	})
}
