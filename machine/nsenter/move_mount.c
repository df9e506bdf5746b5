// The bind helper (NSBOX_MOVE_MOUNT): mounts a detached tree in a
// machine. nsenter.c calls it before the Go runtime starts, while the
// process has one thread, as setns into mount and user namespaces
// requires. See nsenter.go.

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

#include "nsenter.h"

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
// NSBOX_MOVE_MOUNT=MNTNS:USERNS:TREE:MKDIR:DEST (spec is the value) it
// mounts the detached tree TREE (from open_tree, already idmapped and
// made read-only as asked) on DEST in the machine's mount namespace
// MNTNS, then exits.
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
void nsbox_move_mount(const char *spec) {
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
