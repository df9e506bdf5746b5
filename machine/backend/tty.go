package backend

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// AttachTerminal joins the caller's terminal to master, the controlling
// side of a pseudo terminal whose other side the payload holds, until the
// payload closes it. The caller's terminal is put in raw mode meanwhile and
// window size changes are passed on. The payload never sees the caller's
// terminal itself, so it cannot push input into it (TIOCSTI).
func AttachTerminal(master *os.File) {
	in := int(os.Stdin.Fd())
	if term.IsTerminal(in) {
		if st, err := term.MakeRaw(in); err == nil {
			defer term.Restore(in, st)
		}
		_ = pty.InheritSize(os.Stdin, master)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				_ = pty.InheritSize(os.Stdin, master)
			}
		}()
	}
	proxyTerminal(master, os.Stdin, os.Stdout)
}

// proxyTerminal copies in to master and master to out until every holder
// of the other side has closed it. When in ends, the terminal's end of
// file character (VEOF, ^D) is typed, as ssh -t does: a shell reading
// there sees the end of its input and ends.
func proxyTerminal(master *os.File, in io.Reader, out io.Writer) {
	go func() {
		if _, err := io.Copy(master, in); err == nil {
			sendEOF(master)
		}
	}()
	// Ends with EIO once every holder of the other side has closed it.
	_, _ = io.Copy(out, master)
}

// sendEOF types the end of file character of the terminal master controls.
func sendEOF(master *os.File) {
	eof := byte(4) // ^D
	if t, err := unix.IoctlGetTermios(int(master.Fd()), unix.TCGETS); err == nil && t.Cc[unix.VEOF] != 0 {
		eof = t.Cc[unix.VEOF]
	}
	_, _ = master.Write([]byte{eof})
}

// OpenMachinePTY opens a pseudo terminal in the devpts of leader's mount
// namespace, the machine's own /dev/pts, so that tty and ttyname find it
// inside: one from the host's devpts is "not a tty" there. ptmx is looked
// up in the machine's root without following any link (the tree is the
// machine root's) and must be the ptmx of a devpts. The other side is
// opened through the master (TIOCGPTPEER), never by path, and given to the
// machine's root, as a terminal it opened itself would be.
func OpenMachinePTY(leader Proc) (master, slave *os.File, err error) {
	root, err := unix.Open(filepath.Join(ProcRoot, strconv.Itoa(leader.PID), "root"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("root of PID %d: %w", leader.PID, err)
	}
	defer unix.Close(root)
	// The root opened is the leader's, not a later process's of its PID.
	if !leader.Alive() {
		return nil, nil, ErrNotRunning
	}
	fd, err := unix.Openat2(root, "dev/pts/ptmx", &unix.OpenHow{
		Flags:   unix.O_RDWR | unix.O_NOCTTY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("the machine's /dev/pts/ptmx: %w", err)
	}
	var st unix.Stat_t
	var fs unix.Statfs_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR ||
		unix.Major(st.Rdev) != 5 || unix.Minor(st.Rdev) != 2 ||
		unix.Fstatfs(fd, &fs) != nil || fs.Type != unix.DEVPTS_SUPER_MAGIC {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("the machine's /dev/pts/ptmx is not the ptmx of a devpts")
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pseudo terminal: %w", err)
	}
	peer, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open pseudo terminal peer: %w", errno)
	}
	if uid, ok := mappedRoot(leader.PID); ok {
		_ = unix.Fchown(int(peer), uid, -1)
	}
	// Non-blocking, so the runtime's poller reads it and Close ends a read.
	_ = unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), "ptmx"), os.NewFile(peer, "pts"), nil
}

// mappedRoot is the host uid of root in pid's user namespace.
func mappedRoot(pid int) (int, bool) {
	b, err := os.ReadFile(filepath.Join(ProcRoot, strconv.Itoa(pid), "uid_map"))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "0" {
			if uid, err := strconv.Atoi(f[1]); err == nil {
				return uid, true
			}
		}
	}
	return 0, false
}

// IsTerminal reports whether v is a terminal file.
func IsTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ShieldReader hides a terminal behind a pipe, so that the program reads
// the pipe and never holds the terminal itself. The copy from the terminal
// is nsbox's own and is left behind when the program ends: a copy made by
// os/exec would hold Wait until the next key press. Other readers are
// returned as they are. The caller calls the returned func once the
// program has ended.
func ShieldReader(r io.Reader) (io.Reader, func(), error) {
	if !IsTerminal(r) {
		return r, func() {}, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	go func() {
		_, _ = io.Copy(pw, r)
		pw.Close()
	}()
	return pr, func() { pr.Close() }, nil
}

// ShieldWriter hides a terminal behind a pipe: exec then copies through a
// pipe instead of handing the terminal to the program.
func ShieldWriter(w io.Writer) io.Writer {
	if IsTerminal(w) {
		return struct{ io.Writer }{w}
	}
	return w
}
