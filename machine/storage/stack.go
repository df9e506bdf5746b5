package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
)

// Lower is one read-only layer of an overlay: a tree whose root user is
// host id Owner on disk (0 for a base or a copy machine, an overlay
// machine's UIDBase for its upper).
type Lower struct {
	Path  string
	Owner int
}

// Stack is an overlay of lowers (topmost first) under Upper, each lower
// mapped so that its root is host id UIDBase: a tree that nspawn
// --private-users=pick takes as the range UIDBase.. without a chown.
type Stack struct {
	Target, Upper, Work string
	// Scratch holds the mount points of the mapped lowers for the moment
	// the overlay is made.
	Scratch string
	Lowers  []Lower
	UIDBase int
}

// scratchPoints are where the mapped lowers are mounted in Scratch.
func (s Stack) scratchPoints() []string {
	out := make([]string, len(s.Lowers))
	for i := range s.Lowers {
		out[i] = filepath.Join(s.Scratch, "lower"+strconv.Itoa(i))
	}
	return out
}

// MountStack mounts s at s.Target; the upper and work directories exist,
// the upper's top directory owned by UIDBase. Already mounted, it does
// nothing.
func MountStack(ctx context.Context, r host.Runner, s Stack) error {
	return mountStack(ctx, r, s, s.scratchPoints())
}

// mountStack mounts s with its lowers mapped at points, one for each.
func mountStack(ctx context.Context, r host.Runner, s Stack, points []string) error {
	if Mounted(s.Target) {
		return nil
	}
	if len(s.Lowers) == 0 {
		return fmt.Errorf("%s: an overlay needs a lower layer", s.Target)
	}
	for _, p := range append([]string{s.Target, s.Upper, s.Work}, points...) {
		if !optionSafe(p) {
			return fmt.Errorf("%s: an overlay cannot name a path with a comma, colon or backslash", p)
		}
	}
	// One user namespace for each distinct owner: it moves that owner's
	// range to the machine's.
	userns := map[int]*os.File{}
	defer func() {
		for _, f := range userns {
			f.Close()
		}
	}()
	for i, l := range s.Lowers {
		ns, ok := userns[l.Owner]
		if !ok {
			var err error
			if ns, err = UserNSMap(ctx, r, l.Owner, s.UIDBase); err != nil {
				return err
			}
			userns[l.Owner] = ns
		}
		tree, err := unix.OpenTree(unix.AT_FDCWD, l.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("open the lower layer %s: %w", l.Path, err)
		}
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY, Userns_fd: uint64(ns.Fd()), Propagation: unix.MS_PRIVATE}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			unix.Close(tree)
			return fmt.Errorf("map the lower layer %s to the machine's users: %w", l.Path, err)
		}
		if err := os.MkdirAll(points[i], 0o700); err != nil {
			unix.Close(tree)
			return err
		}
		err = unix.MoveMount(tree, "", unix.AT_FDCWD, points[i], unix.MOVE_MOUNT_F_EMPTY_PATH)
		unix.Close(tree)
		if err != nil {
			return fmt.Errorf("mount the lower layer at %s: %w", points[i], err)
		}
		// The overlay holds the layer itself: the helper mount goes at
		// once.
		defer unix.Unmount(points[i], unix.MNT_DETACH)
	}
	// metacopy off: an upper that holds only metadata trusts the lower
	// for data, which the kernel advises against for layers it does not
	// trust.
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,metacopy=off", strings.Join(points, ":"), s.Upper, s.Work)
	if err := unix.Mount("overlay", s.Target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount the overlay at %s: %w", s.Target, err)
	}
	return nil
}

// PrepareUpper makes upper and work (and their parent) for a stack
// whose root is uidBase's, with the mode of the topmost lower's root.
func PrepareUpper(upper, work, top string, uidBase, owner int) error {
	var st unix.Stat_t
	if err := unix.Stat(top, &st); err != nil {
		return err
	}
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.Chown(upper, uidBase+int(st.Uid)-owner, uidBase+int(st.Gid)-owner); err != nil {
		return err
	}
	return os.Chmod(upper, os.FileMode(st.Mode&0o7777))
}
