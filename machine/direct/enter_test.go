package direct

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/nsenter"
	"golang.org/x/sys/unix"
)

func TestExecEnv(t *testing.T) {
	path := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, c := range []struct {
		user          string
		environ, argv []string
	}{
		{"", []string{path, "container=systemd-nspawn", "HOME=/root", "USER=root", "LOGNAME=root", "TERM=xterm"}, []string{"id", "-u"}},
		{"0", []string{path, "container=systemd-nspawn", "HOME=/root", "USER=root", "LOGNAME=root", "TERM=xterm"}, []string{"id", "-u"}},
		{"www", []string{path, "container=systemd-nspawn", "TERM=xterm"}, []string{"/usr/sbin/runuser", "-u", "www", "--", "id", "-u"}},
	} {
		environ, argv := execEnv(c.user, []string{"TERM=xterm"}, []string{"id", "-u"})
		if !reflect.DeepEqual(environ, c.environ) || !reflect.DeepEqual(argv, c.argv) {
			t.Errorf("user %q: %q %q", c.user, environ, argv)
		}
	}
}

func TestNamespacesToEnter(t *testing.T) {
	host := map[string]nsID{"user": {4, 1}, "mnt": {4, 2}, "uts": {4, 3}, "ipc": {4, 4}, "net": {4, 5}, "pid": {4, 6}, "cgroup": {4, 7}, "time": {4, 8}}
	with := func(m map[string]nsID, kv ...any) map[string]nsID {
		out := map[string]nsID{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(out, kv[i].(string))
				continue
			}
			out[kv[i].(string)] = kv[i+1].(nsID)
		}
		return out
	}
	all := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET | unix.CLONE_NEWPID | unix.CLONE_NEWCGROUP)
	for _, c := range []struct {
		name        string
		own, theirs map[string]nsID
		want        uintptr
		wantErr     bool
	}{
		{"the host's own", host, host, 0, false},
		// nspawn's machine: all but time; no user namespace.
		{"nspawn", host, with(host, "mnt", nsID{4, 12}, "uts", nsID{4, 13}, "ipc", nsID{4, 14}, "net", nsID{4, 15}, "pid", nsID{4, 16}, "cgroup", nsID{4, 17}), all, false},
		{"private users", host, with(host, "user", nsID{4, 11}, "mnt", nsID{4, 12}, "uts", nsID{4, 13}, "ipc", nsID{4, 14}, "net", nsID{4, 15}, "pid", nsID{4, 16}, "cgroup", nsID{4, 17}), all | unix.CLONE_NEWUSER, false},
		{"the host's network", host, with(host, "mnt", nsID{4, 12}, "pid", nsID{4, 16}), unix.CLONE_NEWNS | unix.CLONE_NEWPID, false},
		{"a time namespace", host, with(host, "time", nsID{4, 18}), unix.CLONE_NEWTIME, false},
		// Same inode on another device is another namespace.
		{"by device too", host, with(host, "net", nsID{5, 5}), unix.CLONE_NEWNET, false},
		// A kernel without time namespaces: neither side has one.
		{"no time namespaces", with(host, "time", nil), with(host, "time", nil, "mnt", nsID{4, 12}), unix.CLONE_NEWNS, false},
		// PID 1 died while its namespaces were read: not half of them.
		{"gone", host, with(host, "mnt", nsID{4, 12}, "net", nil), 0, true},
	} {
		got, err := namespacesToEnter(c.own, c.theirs)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("%s: %#x %v, want %#x (error %v)", c.name, got, err, c.want, c.wantErr)
		}
	}
}

// enterCommand is nsbox itself with the target's files as fds 3 on, in
// the order the NSBOX_ENTER entry names them, and the environment then the
// command as arguments.
func TestEnterCommand(t *testing.T) {
	open := func(name string) *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	tg := &enterTarget{pidfd: open("pidfd"), root: open("root"), cwd: open("cwd"),
		namespaces: unix.CLONE_NEWNS | unix.CLONE_NEWPID, bounding: 0xfdecbfff,
		cgroups: []*os.File{open("unified"), open("memory")}}
	c := enterCommand("web", tg, "", []string{"TERM=xterm"}, []string{"sh", "-c", "exit 3"})
	if c.Path != "/proc/self/exe" {
		t.Errorf("path %s", c.Path)
	}
	wantArgs := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=systemd-nspawn",
		"HOME=/root", "USER=root", "LOGNAME=root", "TERM=xterm", "sh", "-c", "exit 3"}
	if !reflect.DeepEqual(c.Args, wantArgs) {
		t.Errorf("args %q", c.Args)
	}
	if want := []string{"NSBOX_ENTER=3:4:5:0x20020000:0xfdecbfff:6:6,7:web"}; !reflect.DeepEqual(c.Env, want) {
		t.Errorf("env %q, want %q", c.Env, want)
	}
	if want := []*os.File{tg.pidfd, tg.root, tg.cwd, tg.cgroups[0], tg.cgroups[1]}; !reflect.DeepEqual(c.ExtraFiles, want) {
		t.Errorf("files %v", c.ExtraFiles)
	}
	c = enterCommand("web", &enterTarget{pidfd: tg.pidfd, root: tg.root, cwd: tg.cwd}, "www", nil, []string{"id"})
	if want := []string{"NSBOX_ENTER=3:4:5:0x0:0x0:2::web"}; !reflect.DeepEqual(c.Env, want) {
		t.Errorf("env without cgroups %q, want %q", c.Env, want)
	}
	if got := strings.Join(c.Args[2:], " "); got != "/usr/sbin/runuser -u www -- id" || len(c.ExtraFiles) != 3 {
		t.Errorf("another user: %q, %d files", got, len(c.ExtraFiles))
	}
}

// The helper refuses a malformed NSBOX_ENTER with status 125 and one
// line, before it does anything.
func TestEnterHelperRefusesBadSpec(t *testing.T) {
	if !nsenter.Available {
		t.Skip("built without cgo: no helper")
	}
	for _, spec := range []string{"x", "3:4:5:0x0:0x0:1:web", "3:4:5:0x0:0x0:-1::web", "1:4:5:0x0:0x0:0::web", "3:4:5:0x0:0x0:0:6,x:web", "3:4:5:0x0:0x0:0:2:web"} {
		cmd := exec.Command("/proc/self/exe", "true")
		cmd.Env = []string{nsenter.EnterEnv + "=" + spec}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 125 || strings.Count(stderr.String(), "\n") != 1 || !strings.HasPrefix(stderr.String(), "nsbox: shell ") {
			t.Errorf("spec %q: %v, stderr %q", spec, err, stderr.String())
		}
	}
	// Environment entries are NAME=value.
	cmd := exec.Command("/proc/self/exe", "NOTANENTRY", "true")
	cmd.Env = []string{nsenter.EnterEnv + "=3:4:5:0x0:0x0:1::web"}
	if out, err := cmd.CombinedOutput(); !strings.Contains(string(out), "bad environment entry") {
		t.Errorf("an entry without '=': %v %q", err, out)
	}
}

// fakeMachine is a process in namespaces of its own, as nspawn's PID 1
// is, chrooted into a small tree (the host's /usr read-only, a proc and a
// devpts of its own) and working in /work there.
type fakeMachine struct {
	leader backend.Proc
	root   string
	cmd    *exec.Cmd
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if !nsenter.Available {
		t.Skip("built without cgo: no helper")
	}
}

// startFakeMachine starts one; with userns it has a user namespace that
// maps 65536 IDs from host ID 200000, as nspawn's --private-users does.
// dropCaps are left out of its bounding set.
func startFakeMachine(t *testing.T, userns bool, dropCaps string) *fakeMachine {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	for _, d := range []string{"usr", "proc", "dev/pts", "work", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "marker"), []byte("in the machine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The machine's root (an unmapped user under userns) walks to its tree.
	for _, d := range []string{filepath.Dir(base), base, root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Wait reaps the leader in the background: once killed, it is gone.
	script := `set -e
mount --make-rprivate /
mount --bind /usr "$1/usr"
mount -o remount,bind,ro "$1/usr"
mount -t proc proc "$1/proc"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$1/dev/pts"
exec setpriv --bounding-set=` + dropCaps + ` chroot "$1" /bin/sh -c 'cd /work && exec sleep 1000'`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", root)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC |
			syscall.CLONE_NEWNET | syscall.CLONE_NEWCGROUP,
		Setsid: true,
	}
	if userns {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 65536}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 65536}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		// Its root: the host's root is not mapped there.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &fakeMachine{root: root, cmd: cmd}
	t.Cleanup(func() { m.kill() })
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if cwd == filepath.Join(root, "work") && string(comm) == "sleep\n" {
			break
		}
		select {
		case <-exited:
			t.Fatalf("the fake machine did not start: %s", stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fake machine did not start: cwd %q, comm %q", cwd, comm)
		}
	}
	var err error
	if m.leader, err = backend.ProcOf(pid); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *fakeMachine) kill() {
	if m.leader.PID <= 0 {
		// Not started yet: the shell that starts it, never pid 0 (the
		// test's own process group).
		if m.cmd.Process != nil {
			_ = m.cmd.Process.Kill()
		}
		return
	}
	_ = syscall.Kill(m.leader.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); m.leader.Alive() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeBackend is a direct backend whose machine name runs as m, with the
// cgroups of a machine of that name.
func fakeBackend(t *testing.T, m *fakeMachine) (*Backend, string) {
	t.Helper()
	name := fmt.Sprintf("enter-test-%d", m.leader.PID)
	if err := makeCgroup(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.kill(); removeCgroup(name) })
	self, err := backend.ProcOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	d := &Backend{RunDir: t.TempDir(), Runner: host.ExecRunner{}}
	if err := os.MkdirAll(filepath.Join(d.RunDir, "machines"), 0o755); err != nil {
		t.Fatal(err)
	}
	st := state{Name: name, Supervisor: self, Leader: m.leader}
	if err := host.WriteFileAtomic(d.statePath(name), mustJSON(st), 0o644); err != nil {
		t.Fatal(err)
	}
	return d, name
}

func run(t *testing.T, d *Backend, name string, argv ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	status, err := d.Exec(context.Background(), name, backend.ExecSpec{Argv: argv, Env: []string{"TERM=dumb"}, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	return out.String(), errb.String(), status
}

func procStatus(t *testing.T, text, field string) string {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in %q", field, text)
	return ""
}

// The helper puts the command in every namespace of the machine's PID 1,
// its root and working directory, its cgroups and bounding set, with a
// clean environment and no fd of the host's, and passes its exit status
// and signals back.
func TestEnterFakeMachine(t *testing.T) {
	needRoot(t)
	for _, userns := range []bool{false, true} {
		t.Run(fmt.Sprintf("userns=%v", userns), func(t *testing.T) {
			m := startFakeMachine(t, userns, "-sys_module,-sys_rawio,-sys_time")
			d, name := fakeBackend(t, m)
			leaderStatus, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.leader.PID))
			if err != nil {
				t.Fatal(err)
			}

			out, _, status := run(t, d, name, "sh", "-c", "for n in cgroup ipc mnt net pid time user uts; do echo $n $(readlink /proc/self/ns/$n); done")
			if status != 0 {
				t.Fatalf("namespaces: status %d", status)
			}
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(l)
				want, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", m.leader.PID, f[0]))
				if len(f) != 2 || f[1] != want {
					t.Errorf("namespace %s: %q, the machine's %q", f[0], l, want)
				}
			}

			out, _, _ = run(t, d, name, "sh", "-c", "cat /marker; pwd; cat /proc/self/status; cat /proc/self/cgroup; ls /proc/self/fd; id -u; cat /proc/self/uid_map")
			if !strings.HasPrefix(out, "in the machine\n/work\n") {
				t.Errorf("root and working directory: %q", out)
			}
			bnd := procStatus(t, string(leaderStatus), "CapBnd")
			for _, f := range []string{"CapBnd", "CapPrm", "CapEff"} {
				if got := procStatus(t, out, f); got != bnd {
					t.Errorf("%s %s, the machine's bounding set %s", f, got, bnd)
				}
			}
			for _, f := range []string{"CapInh", "CapAmb"} {
				if got := procStatus(t, out, f); got != "0000000000000000" {
					t.Errorf("%s %s", f, got)
				}
			}
			if !strings.Contains(out, "\n0::/nsbox/"+name+"/exec\n") {
				t.Errorf("not in the machine's exec cgroup:\n%s", out)
			}
			env, _, _ := run(t, d, name, "env")
			if want := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\ncontainer=systemd-nspawn\nHOME=/root\nUSER=root\nLOGNAME=root\nTERM=dumb\n"; env != want {
				t.Errorf("environment:\n%s", env)
			}
			// ls's own fd 3 (its listing of the directory) and no other.
			if !strings.Contains(out, "\n0\n1\n2\n3\n0\n") {
				t.Errorf("fds or uid:\n%s", out)
			}
			if userns && !strings.Contains(out, "200000") {
				t.Errorf("not in the machine's user namespace:\n%s", out)
			}

			if _, _, status = run(t, d, name, "sh", "-c", "exit 7"); status != 7 {
				t.Errorf("exit 7: status %d", status)
			}
			if _, _, status = run(t, d, name, "sh", "-c", "kill -TERM $$"); status != 128+15 {
				t.Errorf("killed by SIGTERM: status %d", status)
			}
			_, stderr, status := run(t, d, name, "no-such-command")
			if status != 127 || stderr != "nsbox: shell "+name+": run no-such-command: No such file or directory\n" {
				t.Errorf("a command not found: status %d, %q", status, stderr)
			}
			if _, stderr, status = run(t, d, name, "/marker"); status != 126 {
				t.Errorf("a command that cannot run: status %d, %q", status, stderr)
			}

			// A PID 1 whose PID now names another process (another start
			// time) is not entered.
			st, _ := d.readState(name)
			st.Leader.Start++
			if err := host.WriteFileAtomic(d.statePath(name), mustJSON(st), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Exec(context.Background(), name, backend.ExecSpec{Argv: []string{"true"}}); err == nil {
				t.Error("a reused PID was entered")
			}
			st.Leader.Start--
			if err := host.WriteFileAtomic(d.statePath(name), mustJSON(st), 0o644); err != nil {
				t.Fatal(err)
			}
			// Nor a dead one.
			m.kill()
			if _, err := d.Exec(context.Background(), name, backend.ExecSpec{Argv: []string{"true"}}); err == nil {
				t.Error("a dead PID 1 was entered")
			}
		})
	}
}

// startHelper starts the helper as host.ExecRunner would, and returns it
// with its stdout.
func startHelper(t *testing.T, c *host.Cmd) (*exec.Cmd, io.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.ExtraFiles = c.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out, &stderr
}

// The command inherits no fd but 0, 1 and 2: not those the helper was
// given, nor any other the helper inherited. Nor does the environment
// nsbox was started with stay in the helper's memory, where the machine's
// root could read it in /proc/PID/environ of the child before its exec.
func TestEnterLeavesNothingOfTheHost(t *testing.T) {
	needRoot(t)
	m := startFakeMachine(t, true, "-sys_module")
	tg, err := openEnterTarget(m.leader, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	c := enterCommand("web", tg, "", nil, []string{"sh", "-c", "ls -1 /proc/self/fd; read x; exit 0"})
	extra, err := os.Open("/")
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	c.ExtraFiles = append(c.ExtraFiles, extra, extra)
	c.Env = append(c.Env, "NSBOX_TEST_SECRET=hunter2")
	stdin, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env, cmd.ExtraFiles, cmd.Stdin = append(os.Environ(), c.Env...), c.ExtraFiles, stdin
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	b := make([]byte, 8)
	if _, err := io.ReadFull(out, b); err != nil || string(b) != "0\n1\n2\n3\n" {
		t.Errorf("fds of the command: %v %q", err, b)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
	if err != nil || bytes.Contains(env, []byte("hunter2")) || bytes.Contains(env, []byte("PATH=")) {
		t.Errorf("the helper's environment after it started the command: %v %q", err, env)
	}
	w.Close()
	if err := cmd.Wait(); err != nil {
		t.Error(err)
	}
}

// The pidfd holds the process that was checked: when it dies after the
// check, the helper refuses it, even if its PID is reused.
func TestEnterRefusesDeadLeader(t *testing.T) {
	needRoot(t)
	m := startFakeMachine(t, true, "-sys_module")
	tg, err := openEnterTarget(m.leader, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	m.kill()
	if m.leader.Alive() {
		t.Fatal("the fake machine did not die")
	}
	cmd, out, stderr := startHelper(t, enterCommand("web", tg, "", nil, []string{"echo", "entered"}))
	b, _ := io.ReadAll(out)
	err = cmd.Wait()
	if cmd.ProcessState.ExitCode() != 125 || len(b) != 0 || !strings.Contains(stderr.String(), "its PID 1 is gone") {
		t.Errorf("a dead PID 1: %v, stdout %q, stderr %q", err, b, stderr.String())
	}
}

// SIGTERM, SIGHUP and SIGINT sent to the helper alone reach the command,
// which has the default handling of every signal, even of those ignored
// where nsbox was started (SIGINT under nohup's cousins, a shell's trap).
func TestEnterForwardsSignals(t *testing.T) {
	needRoot(t)
	m := startFakeMachine(t, false, "-sys_module")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT} {
		tg, err := openEnterTarget(m.leader, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := enterCommand("web", tg, "", nil, []string{"sh", "-c", "echo ready; exec sleep 30"})
		// Started by a shell that ignores the signal: the helper inherits
		// that, the command must not.
		c.Args = append([]string{"-c", fmt.Sprintf(`trap "" %d; exec "$0" "$@"`, sig), self}, c.Args...)
		c.Path = "/bin/sh"
		cmd, out, stderr := startHelper(t, c)
		tg.Close()
		line := make([]byte, 6)
		if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
			t.Fatalf("%v: %q %v %s", sig, line, err, stderr)
		}
		// The signal is for sleep, the command sh becomes.
		waitForChild(t, cmd.Process.Pid, "sleep")
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if got := cmd.ProcessState.ExitCode(); got != 128+int(sig) {
			t.Errorf("%v to the helper: status %d, want %d (%s)", sig, got, 128+int(sig), stderr)
		}
	}
}

// waitForChild waits until a child of pid runs comm.
func waitForChild(t *testing.T, pid int, comm string) {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		seen = seen[:0]
		for _, kid := range strings.Fields(string(b)) {
			c, _ := os.ReadFile("/proc/" + kid + "/comm")
			if strings.TrimSpace(string(c)) == comm {
				return
			}
			seen = append(seen, strings.TrimSpace(string(c)))
		}
	}
	t.Fatalf("no child of %d runs %s; last seen: %q", pid, comm, seen)
}

// On a terminal of the machine's devpts, the command has it as its
// controlling terminal (136:0, in /proc/PID/stat's tty_nr), and tty names
// it.
func TestEnterOnMachineTerminal(t *testing.T) {
	needRoot(t)
	for _, userns := range []bool{false, true} {
		m := startFakeMachine(t, userns, "-sys_module")
		master, slave, err := backend.OpenMachinePTY(m.leader)
		if err != nil {
			t.Fatal(err)
		}
		tg, err := openEnterTarget(m.leader, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := enterCommand("web", tg, "", nil, []string{"sh", "-c", "tty; ls -1 /proc/self/fd; read -r a b c d e f g rest </proc/self/stat; echo tty_nr=$g"})
		c.TTY = slave
		done := make(chan error, 1)
		go func() { done <- host.ExecRunner{}.Run(context.Background(), c) }()
		var shown bytes.Buffer
		copied := make(chan struct{})
		go func() { _, _ = io.Copy(&shown, master); close(copied) }()
		err = <-done
		slave.Close()
		tg.Close()
		select {
		case <-copied:
		case <-time.After(5 * time.Second):
		}
		master.Close()
		got := strings.ReplaceAll(shown.String(), "\r", "")
		if err != nil || got != "/dev/pts/0\n0\n1\n2\n3\ntty_nr=34816\n" {
			t.Errorf("userns=%v: %v, the terminal showed %q", userns, err, got)
		}
	}
}

// The bounding set read is the leader's, as a number.
func TestCapBoundingMask(t *testing.T) {
	old := backend.ProcRoot
	backend.ProcRoot = t.TempDir()
	defer func() { backend.ProcRoot = old }()
	dir := filepath.Join(backend.ProcRoot, "42")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tsystemd\nCapInh:\t0000000000000000\nCapBnd:\t00000000fdecbfff\nCapAmb:\t0000000000000000\n"), 0o644)
	if m, err := capBoundingMask(42); err != nil || m != 0xfdecbfff {
		t.Errorf("mask %#x %v", m, err)
	}
	if s, err := capBounding(42); err != nil || !strings.HasPrefix(s, "-all,+cap_0,+cap_1,") || strings.Contains(s, "+cap_16,") {
		t.Errorf("setpriv's words: %s %v", s, err)
	}
	if _, err := capBoundingMask(43); err == nil {
		t.Error("no status file: no error")
	}
}
