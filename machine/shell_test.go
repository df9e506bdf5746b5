package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/machined"
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

func (v *vanishing) GetMachines(names []string) ([]dbusapi.Machine, []error) {
	return getEach(names, v.GetMachine)
}

func TestMachineGoneBetweenCalls(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	mkMachine(t, m, "web")
	gone := fmt.Errorf("%w: Unknown object '/org/freedesktop/machine1/machine/web'.", dbusapi.ErrNoSuchMachine)
	v := &vanishing{fakeMachined: f, getErr: gone}
	m.Backend.(*machined.Backend).Machines = v
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}

	check := func(what string) {
		t.Helper()
		if _, err := m.Backend.Get(ctx, "web"); !errors.Is(err, ErrNotRunning) {
			t.Errorf("%s: get: %v, want ErrNotRunning", what, err)
		}
		i, err := m.Status(ctx, "web", ListOptions{})
		if err != nil || i.State != "stopped" {
			t.Errorf("%s: status: %+v, %v; want stopped", what, i, err)
		}
		infos, err := m.List(ctx, ListOptions{})
		if err != nil || len(infos) != 1 || infos[0].State != "stopped" {
			t.Errorf("%s: list: %+v, %v; want web stopped", what, infos, err)
		}
	}
	check("removed while asked")

	// Registered still, with a leader that is gone.
	v.getErr = nil
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: deadPID(t)}
	check("leader gone")

	// Any other answer is an error, not a stopped
	v.getErr = errors.New("connection reset")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}
	if _, err := m.List(ctx, ListOptions{}); err == nil {
		t.Error("list passed over an error of machined")
	}
	if _, err := m.Status(ctx, "web", ListOptions{}); err == nil {
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

// The login shell on machined runs through systemd-run like a command,
// so its exit status comes back (OpenMachineShell has none), and without a
// pseudo terminal when stdin is no terminal, so that the end of the input
// ends it.
func TestMachinedLoginShellStatusAndPipes(t *testing.T) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	withStdin(t, devnull)
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	r := &exitRunner{status: 3}
	m.Backend.(*machined.Backend).Runner = r
	mkMachine(t, m, "web")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}

	for _, argv := range [][]string{nil, {}} { // "shell web" and "shell web --"
		r.ran = nil
		status, err := m.Shell(context.Background(), "web", ExecOptions{}, argv)
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
