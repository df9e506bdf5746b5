package machine

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/nsenter"
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
func BindIntoMachine(ctx context.Context, r host.Runner, leader int, still func() bool, src, dst string, readOnly, mkdir bool) error {
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
	c := &host.Cmd{Path: "/proc/self/exe"}
	// The helper sees ExtraFiles as fds 3, 4, 5.
	c.ExtraFiles = []*os.File{ns.mnt, treeFile}
	userns := -1
	if ns.user != nil {
		c.ExtraFiles = append(c.ExtraFiles, ns.user)
		userns = 5
	}
	c.Env = []string{nsenter.MoveMount(3, userns, 4, mkdir, dst)}
	if err := r.Run(ctx, c); err != nil {
		var ee *host.ExitError
		if errors.As(err, &ee) && ee.Tail != "" {
			return errors.New(ee.Tail)
		}
		return err
	}
	return nil
}
