package nsenter

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// MoveMountEnv is the variable that makes the constructor act.
const MoveMountEnv = "NSBOX_MOVE_MOUNT"

// MoveMount is the environment entry that makes a started nsbox mount the
// detached tree on fd tree at dest in the mount namespace on fd mntns
// (through the user namespace on fd userns first, -1 for none), making
// dest and its missing parents first when mkdir is set.
func MoveMount(mntns, userns, tree int, mkdir bool, dest string) string {
	mk := 0
	if mkdir {
		mk = 1
	}
	return fmt.Sprintf("%s=%d:%d:%d:%d:%s", MoveMountEnv, mntns, userns, tree, mk, filepath.Clean(dest))
}

// EnterEnv is the variable that makes the constructor run a command in a
// machine (enter.c).
const EnterEnv = "NSBOX_ENTER"

// Enter describes a command run in a running machine: the fds the started
// nsbox inherits, what it enters and keeps, and how its arguments divide
// into the command's environment and the command.
type Enter struct {
	PIDFD int // the machine's PID 1, as a pidfd
	Root  int // PID 1's root directory, opened O_PATH
	Cwd   int // PID 1's working directory, opened O_PATH
	// Namespaces is the CLONE_NEW* flags of the namespaces to enter
	// through the pidfd: PID 1's that differ from nsbox's.
	Namespaces uintptr
	// Bounding is the capability bounding set to keep: PID 1's.
	Bounding uint64
	Cgroups  []int // cgroup.procs files to join, open for writing
	// Env is how many of the arguments, after argv[0], are the command's
	// environment ("NAME=value"); the rest is the command.
	Env int
	// Machine names the machine in messages.
	Machine string
}

// String is the environment entry that makes a started nsbox do e:
// NSBOX_ENTER=PIDFD:ROOT:CWD:NSFLAGS:BOUNDING:NENV:CGROUP,...:MACHINE.
func (e Enter) String() string {
	cg := make([]string, len(e.Cgroups))
	for i, fd := range e.Cgroups {
		cg[i] = strconv.Itoa(fd)
	}
	return fmt.Sprintf("%s=%d:%d:%d:%#x:%#x:%d:%s:%s", EnterEnv, e.PIDFD, e.Root, e.Cwd,
		e.Namespaces, e.Bounding, e.Env, strings.Join(cg, ","), e.Machine)
}
