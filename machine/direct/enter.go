package direct

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/nsenter"
	"golang.org/x/sys/unix"
)

// enterTarget is a running machine's PID 1 as the shell helper (the
// NSBOX_ENTER mode of machine/nsenter) enters it: the process as a pidfd,
// so that a PID reused since it was looked up is never entered, with what
// was read of it while the pidfd showed it alive.
type enterTarget struct {
	pidfd, root, cwd *os.File
	namespaces       uintptr // CLONE_NEW* flags of PID 1's namespaces that differ from ours
	bounding         uint64  // PID 1's capability bounding set
	cgroups          []*os.File
}

// Close closes the files of t.
func (t *enterTarget) Close() {
	for _, f := range append([]*os.File{t.pidfd, t.root, t.cwd}, t.cgroups...) {
		if f != nil {
			f.Close()
		}
	}
}

// chdir makes dir, a path inside the machine, the command's working
// directory instead of PID 1's: opened here, inside the machine's root as
// its processes see it, and entered by the helper by descriptor.
func (t *enterTarget) chdir(dir string) error {
	fd, err := backend.OpenWorkdir(int(t.root.Fd()), dir)
	if err != nil {
		return err
	}
	t.cwd.Close()
	t.cwd = os.NewFile(uintptr(fd), dir)
	return nil
}

// namespaceKinds are the namespaces nsenter -a enters, as /proc/PID/ns
// names them, with their CLONE_NEW* flags.
var namespaceKinds = []struct {
	name string
	flag uintptr
}{
	{"user", unix.CLONE_NEWUSER}, {"mnt", unix.CLONE_NEWNS}, {"uts", unix.CLONE_NEWUTS},
	{"ipc", unix.CLONE_NEWIPC}, {"net", unix.CLONE_NEWNET}, {"pid", unix.CLONE_NEWPID},
	{"cgroup", unix.CLONE_NEWCGROUP}, {"time", unix.CLONE_NEWTIME},
}

// nsID identifies a namespace: the inode behind /proc/PID/ns/NAME.
type nsID struct{ dev, ino uint64 }

// namespacesOf reads the namespaces of the process whose /proc directory
// is dir. Kinds that this kernel lacks are left out.
func namespacesOf(dir string) (map[string]nsID, error) {
	out := make(map[string]nsID, len(namespaceKinds))
	for _, k := range namespaceKinds {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "ns", k.name), &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("%s namespace of %s: %w", k.name, dir, err)
		}
		out[k.name] = nsID{dev: st.Dev, ino: st.Ino}
	}
	return out, nil
}

// namespacesToEnter is the CLONE_NEW* flags of the namespaces in theirs
// (the machine's PID 1's) that differ from own (nsbox's), as nsenter -a
// enters them: the user namespace only when it differs (entering one's
// own is refused), and every other kind that differs. A kind own has and
// theirs lacks means PID 1 is gone: entering all but that one would run
// the command half inside.
func namespacesToEnter(own, theirs map[string]nsID) (uintptr, error) {
	var flags uintptr
	for _, k := range namespaceKinds {
		mine, ok := own[k.name]
		if !ok {
			continue
		}
		their, ok := theirs[k.name]
		if !ok {
			return 0, fmt.Errorf("its PID 1 has no %s namespace (gone?)", k.name)
		}
		if their != mine {
			flags |= k.flag
		}
	}
	return flags, nil
}

// openEnterTarget opens leader, the machine's PID 1, for the shell
// helper: a pidfd, confirmed to be that process by its start time once
// open; its namespaces, bounding set, root and working directory, read
// while the pidfd shows it alive (so they are its own, not those of a
// later process with its PID); and procs, the cgroup.procs files to join.
func openEnterTarget(leader backend.Proc, procs []string) (*enterTarget, error) {
	pidfd, err := unix.PidfdOpen(leader.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("its PID 1 (%d) is gone: %w", leader.PID, err)
	}
	t := &enterTarget{pidfd: os.NewFile(uintptr(pidfd), "pidfd")}
	done := false
	defer func() {
		if !done {
			t.Close()
		}
	}()
	if !leader.Alive() {
		return nil, fmt.Errorf("its PID 1 (%d) changed: %w", leader.PID, backend.ErrNotRunning)
	}
	dir := filepath.Join(backend.ProcRoot, strconv.Itoa(leader.PID))
	own, err := namespacesOf(filepath.Join(backend.ProcRoot, "self"))
	if err != nil {
		return nil, err
	}
	theirs, err := namespacesOf(dir)
	if err != nil {
		return nil, err
	}
	if t.namespaces, err = namespacesToEnter(own, theirs); err != nil {
		return nil, err
	}
	if t.bounding, err = capBoundingMask(leader.PID); err != nil {
		return nil, fmt.Errorf("read the capabilities of its PID 1: %w", err)
	}
	if t.root, err = openPath(filepath.Join(dir, "root")); err != nil {
		return nil, err
	}
	if t.cwd, err = openPath(filepath.Join(dir, "cwd")); err != nil {
		return nil, err
	}
	// Still alive now: what was read and opened above is that process's.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return nil, fmt.Errorf("its PID 1 (%d) is gone: %w", leader.PID, err)
	}
	for _, p := range procs {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("join the machine's cgroups: open %s: %w", p, err)
		}
		t.cgroups = append(t.cgroups, os.NewFile(uintptr(fd), p))
	}
	done = true
	return t, nil
}

// openPath opens the directory at path (a /proc link of the machine's
// PID 1) for fchdir alone.
func openPath(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// execEnv is what a command run in a machine gets: a clean environment
// (a PATH of the machine's, container=systemd-nspawn, root's HOME, USER
// and LOGNAME when it runs as root, then env) and the command, run
// through runuser as any other user.
func execEnv(user string, env, argv []string) (environ, cmd []string) {
	environ = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=systemd-nspawn"}
	if user == "" || user == "root" || user == "0" {
		environ = append(environ, "HOME=/root", "USER=root", "LOGNAME=root")
		return append(environ, env...), argv
	}
	return append(environ, env...), append([]string{"/usr/sbin/runuser", "-u", user, "--"}, argv...)
}

// enterCommand is the command that runs argv as user in machine name
// through the shell helper: nsbox itself (the running image, never a path
// that may have been replaced since), with t's files as its fds 3, 4, 5
// (pidfd, root, working directory) and 6 on (cgroup.procs files), the
// NSBOX_ENTER entry that says so, and the command's environment then the
// command as its arguments.
func enterCommand(name string, t *enterTarget, user string, env, argv []string) *host.Cmd {
	environ, cmd := execEnv(user, env, argv)
	files := append([]*os.File{t.pidfd, t.root, t.cwd}, t.cgroups...)
	spec := nsenter.Enter{PIDFD: 3, Root: 4, Cwd: 5, Namespaces: t.namespaces, Bounding: t.bounding,
		Env: len(environ), Machine: name}
	for i := range t.cgroups {
		spec.Cgroups = append(spec.Cgroups, 6+i)
	}
	return &host.Cmd{
		Path:       "/proc/self/exe",
		Args:       append(environ, cmd...),
		Env:        []string{spec.String()},
		ExtraFiles: files,
	}
}
