package machine

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

// made holds what make_dest created, so that a failed bind leaves nothing.
static char *made[256];
static int nmade;

static void record(const char *p) {
	if (nmade < (int)(sizeof made / sizeof made[0])) made[nmade++] = strdup(p);
}

// make_dest makes dest's missing parents (0755) and dest itself: a
// directory, or an empty file (0644) to bind a file onto when file is set.
static int make_dest(char *dest, int file) {
	for (char *p = dest + 1; *p; p++) {
		if (*p != '/') continue;
		*p = 0;
		if (mkdir(dest, 0755) == 0) record(dest);
		else if (errno != EEXIST) { *p = '/'; return -1; }
		*p = '/';
	}
	if (file) {
		int fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd >= 0) { close(fd); record(dest); }
		else if (errno != EEXIST) return -1;
	} else if (mkdir(dest, 0755) == 0) record(dest);
	else if (errno != EEXIST) return -1;
	return 0;
}

// undo_dest removes what make_dest created, deepest first.
static void undo_dest(void) {
	while (nmade > 0) remove(made[--nmade]);
}

static void die(const char *what) {
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	_exit(1);
}

// fail reports a failure after make_dest, undoing what it made.
static void fail(const char *fmt, ...) {
	va_list ap;
	undo_dest();
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	_exit(1);
}

// nsbox_move_mount runs before the Go runtime starts (and so while the
// process has one thread, which setns and unshare of mount and user
// namespaces require). When nsbox starts itself with
// NSBOX_MOVE_MOUNT=MNTNS:USERNS:TREE:MKDIR:DEST it mounts the detached
// tree TREE (from open_tree, already idmapped and made read-only as asked)
// on DEST in the machine's mount namespace MNTNS, then exits.
//
// With a user namespace (USERNS >= 0) the tree first passes through a
// mount namespace owned by the machine's user namespace: the kernel locks
// the flags of every mount it copies into such a namespace (MNT_LOCK_*,
// as for nspawn's own --bind-ro), so the machine's root cannot remount a
// read-only bind writable. The steps:
//   1. a private mount namespace of the host's, where TREE is attached
//      on a tmpfs of its own;
//   2. the machine's user namespace, then a new mount namespace owned by
//      it: the copy of TREE there is locked;
//   3. a detached clone of that copy (open_tree keeps the locks);
//   4. the machine's mount namespace, where the clone is moved onto DEST.
// From step 2 on the helper is the machine's root (uid and gid 0 of its
// user namespace) with only its privileges, so DEST and its parents are
// made as the machine's root would make them, and owned by it.
//
// TREE may be a file: it is then bound onto a file, and MKDIR makes DEST
// an empty file (its parents directories). When the bind fails, what
// MKDIR made goes again.
__attribute__((constructor)) static void nsbox_move_mount(void) {
	const char *spec = getenv("NSBOX_MOVE_MOUNT");
	if (!spec) return;
	int mntns, userns, tree, mk, n = 0;
	if (sscanf(spec, "%d:%d:%d:%d:%n", &mntns, &userns, &tree, &mk, &n) != 4 || n == 0) {
		fprintf(stderr, "bad NSBOX_MOVE_MOUNT\n");
		_exit(2);
	}
	char *dest = strdup(spec + n);
	struct stat st;
	if (fstat(tree, &st) < 0) die("inspect the tree");
	int file = !S_ISDIR(st.st_mode);
	if (userns >= 0) {
		if (unshare(CLONE_NEWNS) < 0) die("make a private mount namespace");
		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make it private");
		if (mount("nsbox", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) die("mount a tmpfs");
		// A file is attached on a file, a directory on a directory.
		if (file) {
			int fd = open("/run/bind", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd < 0) die("make the anchor");
			close(fd);
		} else if (mkdir("/run/bind", 0700) < 0) die("make the anchor");
		if (syscall(SYS_move_mount, tree, "", AT_FDCWD, "/run/bind", MOVE_MOUNT_F_EMPTY_PATH) < 0) die("attach the tree");
		if (mount(NULL, "/run/bind", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make the tree private");
		if (setns(userns, CLONE_NEWUSER) < 0) die("enter the machine's user namespace");
		if (unshare(CLONE_NEWNS) < 0) die("make a mount namespace of the machine's user namespace");
		tree = syscall(SYS_open_tree, AT_FDCWD, "/run/bind", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
		if (tree < 0) die("clone the locked tree");
		// setns kept the host's IDs (which reached the anchor, host
		// root's), but the machine does not map them: what DEST needs made
		// would show as nobody there. Become the machine's root.
		(void)setgroups(0, NULL);
		if (setresgid(0, 0, 0) < 0) die("become the machine's root group");
		if (setresuid(0, 0, 0) < 0) die("become the machine's root");
	}
	if (setns(mntns, CLONE_NEWNS) < 0) die("enter the machine's mount namespace");
	if (mk && make_dest(dest, file) < 0) fail("create %s in the machine: %s", dest, strerror(errno));
	struct stat dst;
	if (stat(dest, &dst) < 0) {
		if (errno == ENOENT) fail("%s does not exist in the machine (add --mkdir to create it)", dest);
		fail("%s in the machine: %s", dest, strerror(errno));
	}
	if (file && S_ISDIR(dst.st_mode)) fail("%s is a directory in the machine: a file is bound onto a file", dest);
	if (!file && !S_ISDIR(dst.st_mode)) fail("%s is not a directory in the machine: a directory is bound onto a directory", dest);
	if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dest, MOVE_MOUNT_F_EMPTY_PATH) < 0) fail("mount on %s: %s", dest, strerror(errno));
	_exit(0);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// machineNS holds the namespaces of a machine's PID 1, opened through a
// pidfd so that a PID reused between looking the leader up and opening
// its namespaces is never mistaken for the machine.
type machineNS struct {
	mnt, user *os.File // user is nil when the machine shares the host's
}

func (n machineNS) Close() {
	n.mnt.Close()
	if n.user != nil {
		n.user.Close()
	}
}

// openMachineNS opens the mount and user namespaces of leader. still
// confirms, once the pidfd is open, that leader is still the machine's PID
// 1 (a PID that died and was reused would fail it); the pidfd then shows
// that the process whose namespaces were opened is that same one.
func openMachineNS(leader int, still func() bool) (machineNS, error) {
	pidfd, err := unix.PidfdOpen(leader, 0)
	if err != nil {
		return machineNS{}, fmt.Errorf("the machine's PID 1 (%d) is gone: %w", leader, err)
	}
	defer unix.Close(pidfd)
	if !still() {
		return machineNS{}, fmt.Errorf("the machine's PID 1 changed; try again")
	}
	var n machineNS
	if n.mnt, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", leader)); err != nil {
		return n, err
	}
	own, _ := os.Readlink("/proc/self/ns/user")
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", leader))
	if err != nil {
		n.Close()
		return machineNS{}, err
	}
	if theirs != own {
		if n.user, err = os.Open(fmt.Sprintf("/proc/%d/ns/user", leader)); err != nil {
			n.Close()
			return machineNS{}, err
		}
	}
	// Still alive now: the files opened above are that process's.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		n.Close()
		return machineNS{}, fmt.Errorf("the machine's PID 1 (%d) is gone", leader)
	}
	return n, nil
}

// BindIntoMachine mounts host directory or file src on dst inside the
// running machine whose PID 1 is leader (still confirms it, see
// openMachineNS): a detached copy of src (open_tree), mapped to the machine's users when it
// has a user namespace, read-only if asked, moved into the machine's mount
// namespace by a helper that enters it before the Go runtime starts. In a
// machine with a user namespace the bind's flags are locked: its root
// cannot make a read-only bind writable. With mkdir, dst and its parents
// are made by the machine's root (dst an empty file when src is a file),
// and removed again when the bind fails.
func BindIntoMachine(leader int, still func() bool, src, dst string, readOnly, mkdir bool) error {
	ns, err := openMachineNS(leader, still)
	if err != nil {
		return err
	}
	defer ns.Close()
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	treeFile := os.NewFile(uintptr(tree), "tree")
	defer treeFile.Close()
	// Private: a copy of a shared mount is a peer of the host's, and
	// mounts the machine made on it would show on the host.
	attr := unix.MountAttr{Propagation: unix.MS_PRIVATE}
	if ns.user != nil {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(ns.user.Fd())
	}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("map %s to the machine's users: %w", src, err)
	}
	// The running image, not the path it was started from: a binary a
	// user can rewrite must not be run a second time as root.
	self := "/proc/self/exe"
	mk := 0
	if mkdir {
		mk = 1
	}
	cmd := exec.Command(self)
	// Children see ExtraFiles as fds 3, 4, 5.
	cmd.ExtraFiles = []*os.File{ns.mnt, treeFile}
	userns := -1
	if ns.user != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, ns.user)
		userns = 5
	}
	cmd.Env = []string{fmt.Sprintf("NSBOX_MOVE_MOUNT=3:%d:4:%d:%s", userns, mk, filepath.Clean(dst))}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return errors.New(msg)
	}
	return nil
}
