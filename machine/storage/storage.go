// Package storage holds how a machine's tree is kept on disk: a copy of
// its base (copy, or a snapshot on btrfs), or an overlay of the base it was
// created from (lower, never written) and an upper directory of its own.
//
// An overlay machine runs with a user namespace whose root is host uid
// UIDBase: its base is mounted through an idmapped mount that shows the
// base's root as UIDBase, and the upper stores what the machine writes
// with those same host ids. systemd-nspawn --private-users=pick then finds
// the tree already owned by the range (the upper's top directory is
// UIDBase's) and neither chowns nor copies a file. Overlayfs cannot be
// idmapped itself (Linux refuses MOUNT_ATTR_IDMAP on it), which is why the
// mapping sits under it and not over it.
package storage

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
)

// ErrUnsupported marks what keeps this host from making overlay machines:
// no overlayfs, no idmapped mounts on the base's file system, no user
// namespaces.
var ErrUnsupported = errors.New("overlayfs cannot serve here")

// unsupported wraps err, a failure of a mount or user namespace that
// says the host cannot do overlay machines, in ErrUnsupported.
func unsupported(err error) error {
	for _, e := range []error{unix.EINVAL, unix.ENODEV, unix.EPERM, unix.ENOSYS, unix.EOPNOTSUPP, unix.ENOSPC, unix.EACCES} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w (%v)", ErrUnsupported, err)
		}
	}
	return err
}

// Kind is how a machine's tree is kept.
type Kind string

const (
	// Copy is a tree of its own, copied from the base (reflinked where
	// the file system can).
	Copy Kind = "copy"
	// Btrfs is a subvolume snapshot of the base.
	Btrfs Kind = "btrfs"
	// Overlay is the base, read-only, under an upper directory of the
	// machine's own.
	Overlay Kind = "overlay"
)

// ParseKind checks a --storage value: auto (""), copy, btrfs or overlay.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case "", "auto":
		return "", nil
	case Copy, Btrfs, Overlay:
		return k, nil
	}
	return "", fmt.Errorf("unknown storage %q (auto, overlay, btrfs or copy)", s)
}

// Record is what nsbox remembers of a machine's storage, as JSON in its
// state directory. A machine without one is a copy (made before storage
// kinds were recorded, or imported).
type Record struct {
	Kind Kind `json:"kind"`
	// Base is the key of the cached base the machine was made from, and
	// Lower the tree an overlay machine is mounted over.
	Base    string `json:"base,omitempty"`
	Version string `json:"base_version,omitempty"`
	// Bases is the base cache the base is in (CacheDir/bases when the
	// machine was made): later commands find it whatever their
	// --cache-dir.
	Bases string `json:"bases,omitempty"`
	Lower string `json:"lower,omitempty"`
	// UIDBase is the host uid of an overlay machine's root.
	UIDBase int `json:"uid_base,omitempty"`
	// Tree is the machine's tree (its root directory's store): a record
	// whose tree is gone is a create that was killed.
	Tree string `json:"tree,omitempty"`
	// Unshifted says the upper holds the machine's files under the ids
	// the machine sees (it last ran without a user namespace); otherwise
	// under UIDBase plus those ids.
	Unshifted bool `json:"unshifted,omitempty"`
	// Source is the URL of the tarball a create --from URL made the
	// machine from (what a create of it again compares).
	Source string `json:"source,omitempty"`
}

// UpperBase is the host id of the machine's root in its upper as stored:
// UIDBase, or 0 when Unshifted.
func (r Record) UpperBase() int {
	if r.Unshifted {
		return 0
	}
	return r.UIDBase
}

// RangeSize is the ids a machine's user namespace maps, as nspawn's pick.
const RangeSize = 0x10000

// The range nspawn's --private-users=pick chooses from, in blocks of
// RangeSize: UIDBase must lie in it for nspawn to take the tree's owner as
// the machine's range.
const (
	pickMin = 0x00080000
	pickMax = 0x6FFF0000
)

// PickUIDBase chooses a range for a new overlay machine that none of
// taken (the ranges of the other overlay machines) has.
func PickUIDBase(taken map[int]bool) (int, error) {
	blocks := (pickMax - pickMin) / RangeSize
	for range 64 {
		var b [4]byte
		if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
			return 0, err
		}
		base := pickMin + int(binary.LittleEndian.Uint32(b[:])%uint32(blocks))*RangeSize
		if !taken[base] {
			return base, nil
		}
	}
	return 0, errors.New("no free user id range for the machine")
}

// Layout is where an overlay machine's parts live: the merged tree at
// Target (the machine's tree, a mount point while mounted) and the upper,
// work and lower-mount directories beside one another in Dir.
type Layout struct {
	Target string
	Dir    string
}

func (l Layout) Upper() string { return filepath.Join(l.Dir, "upper") }
func (l Layout) Work() string  { return filepath.Join(l.Dir, "work") }

// lowerMount is where the idmapped base is mounted for the moment the
// overlay is made.
func (l Layout) lowerMount() string { return filepath.Join(l.Dir, "lower") }

// optionSafe reports whether path can be given in overlayfs's mount
// options, where commas separate options and colons lower layers.
func optionSafe(path string) bool {
	return !strings.ContainsAny(path, ",:\\\n")
}

// Prepare makes the upper and work directories of a new overlay machine:
// the upper's top directory becomes the machine's root directory, owned by
// the machine's root (uidBase) with the base root's mode.
func (l Layout) Prepare(lower string, uidBase int) error {
	for _, p := range []string{lower, l.Dir, l.Target} {
		if !optionSafe(p) {
			return fmt.Errorf("%s: an overlay cannot name a path with a comma, colon or backslash", p)
		}
	}
	if err := PrepareUpper(l.Upper(), l.Work(), lower, uidBase, 0); err != nil {
		return err
	}
	return os.MkdirAll(l.lowerMount(), 0o700)
}

// Mounted reports whether target is an overlay mount point.
func Mounted(target string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(target, &fs); err != nil {
		return false
	}
	return fs.Type == unix.OVERLAYFS_SUPER_MAGIC && isMountPoint(target)
}

func isMountPoint(path string) bool {
	for _, mp := range host.MountsUnder(path) {
		if mp == filepath.Clean(path) {
			return true
		}
	}
	return false
}

// Mount mounts the machine's tree at Target: lower (the base) mapped so
// that its root is uidBase (as it is stored with uidBase 0), under the
// upper. Already mounted, it does nothing. The caller serialises mounts
// of one machine.
func (l Layout) Mount(ctx context.Context, r host.Runner, lower string, uidBase int) error {
	if Mounted(l.Target) {
		return nil
	}
	if !optionSafe(lower) || !optionSafe(l.Dir) || !optionSafe(l.Target) {
		return fmt.Errorf("%s: an overlay cannot name a path with a comma, colon or backslash", l.Target)
	}
	if uidBase == 0 {
		return unsupported(l.mountOver(lower))
	}
	s := Stack{Target: l.Target, Upper: l.Upper(), Work: l.Work(), Lowers: []Lower{{Path: lower}}, UIDBase: uidBase}
	return unsupported(mountStack(ctx, r, s, []string{l.lowerMount()}))
}

// mountOver mounts the overlay of the upper over lower at Target.
func (l Layout) mountOver(lower string) error {
	// metacopy off: an upper that holds only metadata trusts the lower
	// for data, which the kernel advises against for layers it does not
	// trust.
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,metacopy=off", lower, l.Upper(), l.Work())
	if err := unix.Mount("overlay", l.Target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount the overlay at %s: %w", l.Target, err)
	}
	return nil
}

// MountView mounts at target, read-only, the machine's tree with owners
// as the machine sees them (its root as 0): the upper, mapped down from
// uidBase, over the lower as it is stored. Host tools that read there
// (tar for export) see what the machine has. The machine must not run.
func (l Layout) MountView(ctx context.Context, r host.Runner, lower string, uidBase int, target string) error {
	if !optionSafe(lower) || !optionSafe(l.Dir) || !optionSafe(target) {
		return fmt.Errorf("%s: an overlay cannot name a path with a comma, colon or backslash", l.Target)
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return err
	}
	if uidBase == 0 {
		return mountReadOnly(target, l.Upper(), lower)
	}
	userns, err := UserNSMap(ctx, r, uidBase, 0)
	if err != nil {
		return err
	}
	defer userns.Close()
	tree, err := unix.OpenTree(unix.AT_FDCWD, l.Upper(), unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open %s: %w", l.Upper(), err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY, Userns_fd: uint64(userns.Fd()), Propagation: unix.MS_PRIVATE}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("map %s to the machine's view: %w", l.Upper(), err)
	}
	um := filepath.Join(l.Dir, "upper-view")
	if err := os.MkdirAll(um, 0o700); err != nil {
		return err
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, um, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount %s at %s: %w", l.Upper(), um, err)
	}
	defer unix.Unmount(um, unix.MNT_DETACH)
	return mountReadOnly(target, um, lower)
}

// mountReadOnly mounts at target the read-only overlay of upper over
// lower.
func mountReadOnly(target, upper, lower string) error {
	opts := fmt.Sprintf("lowerdir=%s:%s", upper, lower)
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, opts); err != nil {
		return fmt.Errorf("mount a view at %s: %w", target, err)
	}
	return nil
}

// Unmount unmounts the machine's tree; not mounted, it does nothing.
func (l Layout) Unmount() error {
	for Mounted(l.Target) {
		if err := unix.Unmount(l.Target, 0); err != nil {
			if errors.Is(err, unix.EBUSY) {
				// A process still inside keeps its view; the tree is
				// gone from the host's.
				err = unix.Unmount(l.Target, unix.MNT_DETACH)
			}
			if err != nil {
				return fmt.Errorf("unmount %s: %w", l.Target, err)
			}
		}
	}
	return nil
}

// UserNSMap returns a user namespace whose ids inside.. are host ids
// base.. (for RangeSize ids), made by a process of the host's own cat that
// is killed as soon as the namespace is open: it lives on in the returned
// file. As an idmapped mount's namespace it shows a file owned by
// inside+N on disk as owned by base+N.
func UserNSMap(ctx context.Context, r host.Runner, inside, base int) (*os.File, error) {
	var ns *os.File
	var nsErr error
	// cat's own start (its loader, its libc) is of no use here: the
	// namespace is there, mapped, once the kernel has started it.
	c := &host.Cmd{Path: "cat", UserNS: &host.IDMap{InsideID: inside, HostID: base, Size: RangeSize},
		Started: func(p *os.Process) {
			ns, nsErr = os.Open(fmt.Sprintf("/proc/%d/ns/user", p.Pid))
			_ = p.Kill()
		}}
	// Its end, killed, is no failure once the namespace is open.
	err := r.Run(ctx, c)
	if ns != nil {
		return ns, nil
	}
	if nsErr != nil {
		err = nsErr
	} else if err == nil {
		err = errors.New("the namespace's process did not start")
	}
	return nil, fmt.Errorf("make a user namespace mapping uid %d to %d: %w", inside, base, err)
}

// ShiftPaths gives what host root wrote at paths (relative to upper), and
// the directories above them, to the machine's root: entries whose ids lie
// in [0, RangeSize) move to [to, to+RangeSize). Only these paths are
// touched, never what else the upper holds (a file the machine got there
// some other way stays host root's, out of its reach), and every step is
// resolved inside upper (os.Root: a link the machine planted never leads
// out) without following the last one (Lchown).
func ShiftPaths(upper string, paths []string, to int) error {
	r, err := os.OpenRoot(upper)
	if err != nil {
		return err
	}
	defer r.Close()
	seen := map[string]bool{}
	for _, p := range paths {
		for q := filepath.Clean(p); q != "." && q != "/" && !seen[q]; q = filepath.Dir(q) {
			seen[q] = true
			fi, err := r.Lstat(q)
			if err != nil {
				// Not there, or behind a link out of the upper: nsbox
				// wrote nothing there (its writes are confined alike).
				continue
			}
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok || (fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0) {
				continue
			}
			if st.Uid >= RangeSize && st.Gid >= RangeSize {
				continue
			}
			uid, gid := int(st.Uid), int(st.Gid)
			if uid < RangeSize {
				uid += to
			}
			if gid < RangeSize {
				gid += to
			}
			if err := r.Lchown(q, uid, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// Shift moves the owners of every file in tree whose ids lie in
// [from, from+RangeSize) to the same place in [to, to+RangeSize): what
// host root wrote into an overlay machine (from 0) becomes its root's, and
// a cloned upper becomes its new range's. File capabilities and ACLs move
// with them (see shiftXattrs). Whiteouts (0:0 character devices) mean
// "deleted" whoever owns them, and are left.
func Shift(tree string, from, to int) error {
	move := func(id uint32) (int, bool) {
		if int(id) >= from && int(id) < from+RangeSize {
			return int(id) - from + to, true
		}
		return int(id), false
	}
	return walkOwned(tree, func(path string, fi os.FileInfo, st *syscall.Stat_t) error {
		uid, u := move(st.Uid)
		gid, g := move(st.Gid)
		xs := idXattrs(path, fi.Mode())
		if !u && !g && len(xs) == 0 {
			return nil
		}
		if u || g {
			// Lchown clears setuid and setgid bits and the file
			// capability: they are put back.
			if err := os.Lchown(path, uid, gid); err != nil {
				return err
			}
			if fi.Mode()&os.ModeSymlink == 0 && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
				if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
					return err
				}
			}
		}
		return shiftXattrs(path, xs, move, u || g)
	})
}
