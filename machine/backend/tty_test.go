package backend

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

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
	old := ProcRoot
	ProcRoot = proc
	t.Cleanup(func() { ProcRoot = old })
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
		if m, s, err := OpenMachinePTY(leader); err == nil {
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
	master, slave, err := OpenMachinePTY(self)
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
	if m, s, err := OpenMachinePTY(gone); !errors.Is(err, ErrNotRunning) {
		if err == nil {
			m.Close()
			s.Close()
		}
		t.Errorf("a dead leader: %v", err)
	}
}
