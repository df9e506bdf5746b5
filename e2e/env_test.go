//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// env is a place where nsbox runs: this host, or the test host.
type env struct {
	name     string   // "direct" or "machined"
	prefix   []string // turns a command into one that runs there
	nsbox    string   // path of the binary there
	rootDir  string   // --root-dir for machines: a directory of the suite's own
	cacheDir string   // --cache-dir: the suite's base cache, never the host's
	host     *testHost
}

// argv is an nsbox command line in the environment: its binary, backend,
// root and cache directories, then args.
func (e *env) argv(args ...string) []string {
	return append([]string{e.nsbox, "--backend", e.name, "--root-dir", e.rootDir, "--cache-dir", e.cacheDir}, args...)
}

// cmdline is argv for scripts.
func (e *env) cmdline(args ...string) string {
	return strings.Join(e.argv(args...), " ")
}

// result is what a finished command left.
type result struct {
	cmd    string
	stdout string
	stderr string
	code   int
}

func (r result) String() string {
	return fmt.Sprintf("$ %s\nexit %d\nstdout: %s\nstderr: %s", r.cmd, r.code, r.stdout, r.stderr)
}

// run runs argv in the environment with stdin and a 10-minute bound.
func (e *env) runIn(t *testing.T, stdin string, argv ...string) result {
	t.Helper()
	full := append(append([]string{}, e.prefix...), argv...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	r := result{cmd: strings.Join(argv, " "), stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if r.code < 0 {
			r.code = 255
		}
	case err != nil:
		t.Fatalf("%s: %v", r.cmd, err)
	}
	return r
}

func (e *env) run(t *testing.T, argv ...string) result {
	t.Helper()
	return e.runIn(t, "", argv...)
}

// sh runs a shell script in the environment.
func (e *env) sh(t *testing.T, script string) result {
	t.Helper()
	return e.run(t, "sh", "-c", script)
}

// nsb runs nsbox with the environment's backend, root and cache directories.
func (e *env) nsb(t *testing.T, args ...string) result {
	t.Helper()
	return e.run(t, e.argv(args...)...)
}

// mustNsb runs nsbox and fails the test unless it exits 0.
func (e *env) mustNsb(t *testing.T, args ...string) result {
	t.Helper()
	r := e.nsb(t, args...)
	if r.code != 0 {
		e.diagnose(t)
		t.Fatalf("nsbox failed:\n%s", r)
	}
	return r
}

// query runs a search (grep, pgrep, ls | grep) and returns what it found.
// Exit 1 means "nothing"; anything else than 0 or 1 (a missing program)
// fails the test, so an absent tool never passes for a clean system.
func (e *env) query(t *testing.T, script string) string {
	t.Helper()
	r := e.sh(t, script)
	if r.code > 1 {
		t.Fatalf("query failed:\n%s", r)
	}
	return r.stdout
}

// mustSh runs a script and fails the test unless it exits 0.
func (e *env) mustSh(t *testing.T, script string) string {
	t.Helper()
	r := e.sh(t, script)
	if r.code != 0 {
		t.Fatalf("command failed:\n%s", r)
	}
	return r.stdout
}

// pty runs nsbox on a pseudo terminal, types each input line after a
// pause, and returns everything the terminal showed.
func (e *env) pty(t *testing.T, inputs []string, args ...string) (string, int) {
	t.Helper()
	return e.onPty(t, inputs, 30*time.Second, e.argv(args...)...)
}

// onPty runs argv in the environment on a pseudo terminal of its own,
// types each input after a pause, waits at most limit for it to end, and
// returns what the terminal showed and the exit status.
func (e *env) onPty(t *testing.T, inputs []string, limit time.Duration, argv ...string) (string, int) {
	t.Helper()
	full := append(append([]string{}, e.prefix...), argv...)
	cmd := exec.Command(full[0], full[1:]...)
	f, err := pty.Start(cmd)
	if err != nil {
		t.Fatalf("pty: %v", err)
	}
	defer f.Close()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&out, f); close(done) }()
	for _, in := range inputs {
		time.Sleep(time.Second)
		if _, err := f.Write([]byte(in)); err != nil {
			t.Fatalf("pty write: %v", err)
		}
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case <-waited:
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-waited
		t.Fatalf("%s on a terminal did not end; the terminal showed:\n%s", strings.Join(argv, " "), out.String())
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// writeFile puts data at path in the environment's file system.
func (e *env) writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if e.host != nil {
		path = fmt.Sprintf("/proc/%d/root%s", e.host.leader, path)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// diagnose prints what a person needs to see why a scenario failed.
func (e *env) diagnose(t *testing.T) {
	t.Helper()
	if e.host != nil {
		t.Logf("test host journal:\n%s", e.sh(t, "journalctl -n 50 --no-pager").stdout)
		t.Logf("nsbox units:\n%s", e.sh(t, "journalctl -u 'nsbox-*' -n 50 --no-pager").stdout)
		return
	}
	t.Logf("console logs:\n%s", e.sh(t, "tail -n 30 /var/log/nsbox/e2e-*.log 2>/dev/null").stdout)
}

// hostEnv is nsbox on this host, with machines in a root directory of the
// test's own and the suite's base cache.
func hostEnv(t *testing.T, backend string) *env {
	root, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-root-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	e := &env{name: backend, prefix: nil, nsbox: nsboxBin, rootDir: root, cacheDir: suiteCache}
	t.Cleanup(func() {
		// Machines a failed test left: stop and remove them, then the root.
		e.removeOwnMachines(t)
		// The store stays after its last machine; it goes with the root.
		os.Remove(root + "/.nsbox")
		os.Remove(root)
	})
	return e
}

// guestRoot and guestCache are the suite's root and base cache inside the
// test host; its /srv and /var/cache/nsbox are a user's (bootTestHost).
const (
	guestRoot  = "/var/tmp/nsbox-e2e-root"
	guestCache = "/var/cache/nsbox-e2e"
)

// guestEnv is nsbox inside the booted test host.
func guestEnv(t *testing.T, h *testHost) *env {
	e := &env{name: "machined", prefix: h.prefix(), nsbox: "/usr/local/bin/nsbox", rootDir: guestRoot, cacheDir: guestCache, host: h}
	t.Cleanup(func() { e.removeOwnMachines(t) })
	return e
}

// removeOwnMachines removes the machines a failed test left in the
// environment's root directory; running machines of other root
// directories, which list shows too, are not its own.
func (e *env) removeOwnMachines(t *testing.T) {
	var infos []info
	_ = json.Unmarshal([]byte(e.nsb(t, "list", "--output", "json").stdout), &infos)
	for _, i := range infos {
		if i.Managed && strings.HasPrefix(i.Root, e.rootDir+"/") {
			e.nsb(t, "remove", "--force", i.Name)
		}
	}
}
