package backend

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Proc names a process safely across PID reuse: its PID and its start time
// in clock ticks since boot, from /proc/PID/stat.
type Proc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// ProcRoot is /proc; tests point it at a fake tree.
var ProcRoot = "/proc"

// readProc reads the start time and state of pid. The command name in
// /proc/PID/stat may hold spaces and parentheses, so fields are counted
// from the last ')'.
func readProc(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile(filepath.Join(ProcRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return start, f[0][0], nil
}

// ProcOf records pid with its start time.
func ProcOf(pid int) (Proc, error) {
	start, _, err := readProc(pid)
	return Proc{PID: pid, Start: start}, err
}

// Alive reports whether p is still the same, living process: a PID reused
// by another process, or a zombie, is not alive.
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := readProc(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// Children lists the child PIDs of pid.
func Children(pid int) []int { return children(pid) }

// children lists the child PIDs of pid.
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(filepath.Join(ProcRoot, strconv.Itoa(pid), "task", "*", "children"))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// PidNamespaceMembers lists every process in the PID namespace of pid.
func PidNamespaceMembers(pid int) []int {
	ns, err := os.Readlink(filepath.Join(ProcRoot, strconv.Itoa(pid), "ns", "pid"))
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir(ProcRoot)
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join(ProcRoot, e.Name(), "ns", "pid")); err == nil && l == ns {
			out = append(out, n)
		}
	}
	return out
}

// ContainerChild finds the container's PID 1 among nspawn's children: the
// one in a PID namespace of its own. nspawn's short-lived intermediate child
// shares nspawn's namespace and is passed over.
func ContainerChild(nspawn int) (Proc, bool) {
	own, err := os.Readlink(filepath.Join(ProcRoot, strconv.Itoa(nspawn), "ns", "pid"))
	if err != nil {
		return Proc{}, false
	}
	for _, kid := range children(nspawn) {
		ns, err := os.Readlink(filepath.Join(ProcRoot, strconv.Itoa(kid), "ns", "pid"))
		if err != nil || ns == own {
			continue
		}
		if p, err := ProcOf(kid); err == nil {
			return p, true
		}
	}
	return Proc{}, false
}

// KillWorkingIn kills every process that works in dir: its command line
// names dir, or its root or working directory is inside it. It is used on
// trees whose owner died, to stop what the owner had started.
func KillWorkingIn(dir string) {
	dir = filepath.Clean(dir)
	inside := func(p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	ents, _ := os.ReadDir(ProcRoot)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		base := filepath.Join(ProcRoot, e.Name())
		hit := false
		if b, err := os.ReadFile(filepath.Join(base, "cmdline")); err == nil {
			for _, arg := range strings.Split(string(b), "\x00") {
				if inside(filepath.Clean(arg)) && arg != "" {
					hit = true
				}
			}
		}
		for _, l := range []string{"cwd", "root"} {
			if t, err := os.Readlink(filepath.Join(base, l)); err == nil && inside(t) {
				hit = true
			}
		}
		if hit {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// PidExists reports whether a process with this PID exists here.
func PidExists(pid int) bool {
	_, err := os.Stat(filepath.Join(ProcRoot, strconv.Itoa(pid)))
	return err == nil
}

// SignalChildren sends sig to the children of leader, each through a
// pidfd that is checked, once open, to be a child of leader still (its
// parent PID, with leader's own pidfd still alive), so a PID reused
// meanwhile by another process is never signalled. It returns how many
// it signalled.
func SignalChildren(leader Proc, sig unix.Signal) int {
	lfd, err := unix.PidfdOpen(leader.PID, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(lfd)
	if !leader.Alive() {
		return 0
	}
	n := 0
	for _, pid := range children(leader.PID) {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if parentOf(pid) == leader.PID && unix.PidfdSendSignal(lfd, 0, nil, 0) == nil && unix.PidfdSendSignal(fd, sig, nil, 0) == nil {
			n++
		}
		unix.Close(fd)
	}
	return n
}

// parentOf is the parent PID of pid (PPid in its status), or 0.
func parentOf(pid int) int {
	b, err := os.ReadFile(filepath.Join(ProcRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
