package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// exitRunner records the programs it is asked to run and ends each with
// status.
type exitRunner struct {
	ran    []*host.Cmd
	status int
}

func (r *exitRunner) Run(ctx context.Context, c *host.Cmd) error {
	r.ran = append(r.ran, c)
	if r.status != 0 {
		return &host.ExitError{Cmd: c.Path, Status: r.status}
	}
	return nil
}

// withStdin makes f the process's stdin for the test.
func withStdin(t *testing.T, f *os.File) {
	t.Helper()
	old := os.Stdin
	os.Stdin = f
	t.Cleanup(func() { os.Stdin = old })
}

// The login shell on machined runs through systemd-run like a command,
// so its exit status comes back (OpenMachineShell has none), and without a
// pseudo terminal when stdin is no terminal, so that the end of the input
// ends it.
func TestMachinedLoginShellStatusAndPipes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the lifecycle checks root first")
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	withStdin(t, devnull)
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	r := &exitRunner{status: 3}
	m.Backend.(*Machined).Runner = r
	mkMachine(t, m, "web")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}

	for _, argv := range [][]string{nil, {}} { // "shell web" and "shell web --"
		r.ran = nil
		status, err := m.Shell(context.Background(), "web", "", argv)
		if err != nil || status != 3 {
			t.Fatalf("shell %q: status %d, %v; want 3", argv, status, err)
		}
		if len(r.ran) != 1 || r.ran[0].Path != "systemd-run" {
			t.Fatalf("ran %v", r.ran)
		}
		c := r.ran[0]
		line := strings.Join(c.Args, " ")
		for _, want := range []string{"--machine=web", "--wait", "--pipe", "--uid=root", "getent passwd", "-l"} {
			if !strings.Contains(line, want) {
				t.Errorf("systemd-run %s: lacks %q", line, want)
			}
		}
		if strings.Contains(line, "--pty") || c.Foreground || c.TTY != nil {
			t.Errorf("a shell reading a file got a terminal: %s (foreground %v)", line, c.Foreground)
		}
		if c.Stdin != os.Stdin {
			t.Errorf("the shell does not read nsbox's stdin: %v", c.Stdin)
		}
	}
}

// The end of the input on a pseudo terminal is its end of file
// character, so that the program there sees the end too.
func TestProxyTerminalSendsEOF(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo terminal: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	go proxyTerminal(master, strings.NewReader("line\n"), io.Discard)
	got := make(chan string, 1)
	go func() {
		// Canonical mode: "line\n", then a read of 0 bytes at ^D.
		var all []byte
		buf := make([]byte, 64)
		for {
			n, err := slave.Read(buf)
			if n == 0 || err != nil {
				got <- string(all)
				return
			}
			all = append(all, buf[:n]...)
		}
	}()
	select {
	case s := <-got:
		if s != "line\n" {
			t.Errorf("read %q before the end of file", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the program on the terminal never saw the end of its input")
	}
}

// fakeLeader makes a fake /proc with PID 4242, whose root is root.
func fakeLeader(t *testing.T, root string) Proc {
	t.Helper()
	proc := t.TempDir()
	dir := filepath.Join(proc, "4242")
	os.MkdirAll(dir, 0o755)
	stat := "4242 (systemd) S" + strings.Repeat(" 0", 18) + " 777 0 0\n"
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	os.Symlink(root, filepath.Join(dir, "root"))
	old := procRoot
	procRoot = proc
	t.Cleanup(func() { procRoot = old })
	return Proc{PID: 4242, Start: 777}
}

// The machine's tree is its root's: a ptmx that is a link, or no device
// of a devpts, is refused.
func TestOpenMachinePTYRefusesPlantedPtmx(t *testing.T) {
	for _, plant := range []func(dir string) error{
		func(dir string) error { return os.Symlink("/dev/ptmx", filepath.Join(dir, "ptmx")) },
		func(dir string) error { return os.WriteFile(filepath.Join(dir, "ptmx"), nil, 0o666) },
		func(dir string) error {
			return unix.Mknod(filepath.Join(dir, "ptmx"), unix.S_IFCHR|0o666, int(unix.Mkdev(5, 2)))
		},
	} {
		root := t.TempDir()
		pts := filepath.Join(root, "dev", "pts")
		os.MkdirAll(pts, 0o755)
		if err := plant(pts); err != nil {
			t.Logf("plant: %v", err)
			continue
		}
		leader := fakeLeader(t, root)
		if m, s, err := openMachinePTY(leader); err == nil {
			m.Close()
			s.Close()
			t.Errorf("a planted %s was opened", pts)
		}
	}
}

// The pseudo terminal comes from the devpts of the leader's mount
// namespace, here this process's own.
func TestOpenMachinePTY(t *testing.T) {
	self, err := ProcOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	master, slave, err := openMachinePTY(self)
	if err != nil {
		t.Skipf("no devpts here: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	name, err := os.Readlink(filepath.Join("/proc/self/fd", strconv.Itoa(int(slave.Fd()))))
	if err != nil || !strings.HasPrefix(name, "/dev/pts/") {
		t.Errorf("slave is %q, %v", name, err)
	}
	if _, err := slave.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := master.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "x") {
		t.Errorf("master read %q, %v", buf[:n], err)
	}
	// Stale: a leader that is gone gets no terminal.
	gone := self
	gone.Start++
	if m, s, err := openMachinePTY(gone); !errors.Is(err, ErrNotRunning) {
		if err == nil {
			m.Close()
			s.Close()
		}
		t.Errorf("a dead leader: %v", err)
	}
}

// vanishing is machined with a machine that goes away while it is
// asked: listed, then unknown to GetMachine (as DescribeMachine answers
// with UnknownObject, mapped to ErrNoSuchMachine).
type vanishing struct {
	*fakeMachined
	getErr error
}

func (v *vanishing) GetMachine(name string) (dbusapi.Machine, error) {
	if name == "web" && v.getErr != nil {
		return dbusapi.Machine{}, v.getErr
	}
	return v.fakeMachined.GetMachine(name)
}

func TestMachineGoneBetweenCalls(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	mkMachine(t, m, "web")
	gone := fmt.Errorf("%w: Unknown object '/org/freedesktop/machine1/machine/web'.", dbusapi.ErrNoSuchMachine)
	v := &vanishing{fakeMachined: f, getErr: gone}
	m.Backend.(*Machined).Machines = v
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}

	check := func(what string) {
		t.Helper()
		if _, err := m.Backend.Get(ctx, "web"); !errors.Is(err, ErrNotRunning) {
			t.Errorf("%s: get: %v, want ErrNotRunning", what, err)
		}
		i, err := m.Status(ctx, "web")
		if err != nil || i.State != "stopped" {
			t.Errorf("%s: status: %+v, %v; want stopped", what, i, err)
		}
		infos, err := m.List(ctx)
		if err != nil || len(infos) != 1 || infos[0].State != "stopped" {
			t.Errorf("%s: list: %+v, %v; want web stopped", what, infos, err)
		}
	}
	check("removed while asked")

	// Registered still, with a leader that is gone.
	v.getErr = nil
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: deadPID(t)}
	check("leader gone")

	// Any other answer is an error, not a stopped machine.
	v.getErr = errors.New("connection reset")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}
	if _, err := m.List(ctx); err == nil {
		t.Error("list passed over an error of machined")
	}
	if _, err := m.Status(ctx, "web"); err == nil {
		t.Error("status passed over an error of machined")
	}
}

// deadPID is a PID no process has.
func deadPID(t *testing.T) int {
	t.Helper()
	for pid := 4194000; pid > 4000000; pid-- {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); os.IsNotExist(err) {
			return pid
		}
	}
	t.Skip("no free PID found")
	return 0
}
