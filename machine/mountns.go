package machine

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

// mkdir_p makes dir and its parents, 0755.
static int mkdir_p(char *dir) {
	for (char *p = dir + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(dir, 0755) < 0 && errno != EEXIST) return -1;
			*p = '/';
		}
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) return -1;
	return 0;
}

// nsbox_move_mount runs before the Go runtime starts (and so while the
// process has one thread, which setns into a mount namespace requires).
// When nsbox starts itself with NSBOX_MOVE_MOUNT=NSFD:TREEFD:MKDIR:DEST,
// it enters the mount namespace NSFD and moves the detached mount TREEFD
// (from open_tree) onto DEST there, then exits. No program of the
// machine's runs with the host's privileges.
__attribute__((constructor)) static void nsbox_move_mount(void) {
	const char *spec = getenv("NSBOX_MOVE_MOUNT");
	if (!spec) return;
	int nsfd, treefd, mk, n = 0;
	if (sscanf(spec, "%d:%d:%d:%n", &nsfd, &treefd, &mk, &n) != 3 || n == 0) {
		fprintf(stderr, "bad NSBOX_MOVE_MOUNT\n");
		_exit(2);
	}
	char *dest = strdup(spec + n);
	if (setns(nsfd, CLONE_NEWNS) < 0) {
		fprintf(stderr, "enter the machine's mount namespace: %s\n", strerror(errno));
		_exit(1);
	}
	if (mk && mkdir_p(dest) < 0) {
		fprintf(stderr, "create %s: %s\n", dest, strerror(errno));
		_exit(1);
	}
	if (syscall(SYS_move_mount, treefd, "", AT_FDCWD, dest, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
		fprintf(stderr, "mount on %s: %s\n", dest, strerror(errno));
		_exit(1);
	}
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

	"golang.org/x/sys/unix"
)

// BindIntoMachine mounts host directory src on dst inside the running
// machine whose PID 1 is leader: a detached copy of src (open_tree), mapped
// to the machine's users when it has a user namespace, read-only if asked,
// moved into the machine's mount namespace by a helper that enters it
// before the Go runtime starts.
func BindIntoMachine(leader int, src, dst string, readOnly, mkdir bool) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	treeFile := os.NewFile(uintptr(tree), "tree")
	defer treeFile.Close()
	attr := unix.MountAttr{}
	userns := fmt.Sprintf("/proc/%d/ns/user", leader)
	own, _ := os.Readlink("/proc/self/ns/user")
	theirs, err := os.Readlink(userns)
	if err != nil {
		return err
	}
	if theirs != own {
		u, err := os.Open(userns)
		if err != nil {
			return err
		}
		defer u.Close()
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(u.Fd())
	}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if attr.Attr_set != 0 {
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			return fmt.Errorf("map %s to the machine's users: %w", src, err)
		}
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", leader))
	if err != nil {
		return err
	}
	defer ns.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	mk := 0
	if mkdir {
		mk = 1
	}
	cmd := exec.Command(self)
	// Children see ExtraFiles as fds 3 and 4.
	cmd.ExtraFiles = []*os.File{ns, treeFile}
	cmd.Env = []string{fmt.Sprintf("NSBOX_MOVE_MOUNT=3:4:%d:%s", mk, filepath.Clean(dst))}
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
