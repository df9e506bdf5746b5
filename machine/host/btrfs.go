package host

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctls nsbox uses, from linux/btrfs.h (golang.org/x/sys has
// none of them): _IOR/_IOW(0x94, NR, the argument's type).
const (
	btrfsIocSnapDestroy   = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args): 4096 bytes
	btrfsIocSnapCreateV2  = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2): 4096 bytes
	btrfsIocSubvolGetflag = 0x80089419 // _IOR(0x94, 25, __u64)
	btrfsIocGetSubvolInfo = 0x81f8943c // _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args): 504 bytes

	btrfsSubvolRdonly = 1 << 1 // BTRFS_SUBVOL_RDONLY, of the flags ioctls
	btrfsRootRdonly   = 1 << 0 // BTRFS_ROOT_SUBVOL_RDONLY, of the root item GET_SUBVOL_INFO returns
	btrfsSuperMagic   = 0x9123683e
	btrfsFirstFreeIno = 256 // the inode of every subvolume's top directory
)

// btrfsVolArgs is struct btrfs_ioctl_vol_args.
type btrfsVolArgs struct {
	fd   int64
	name [4088]byte
}

// btrfsVolArgsV2 is struct btrfs_ioctl_vol_args_v2 (the qgroup union
// unused).
type btrfsVolArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [4040]byte
}

// btrfsTimespec is struct btrfs_ioctl_timespec.
type btrfsTimespec struct {
	sec  uint64
	nsec uint32
	_    uint32
}

// btrfsSubvolInfoArgs is struct btrfs_ioctl_get_subvol_info_args.
type btrfsSubvolInfoArgs struct {
	treeID       uint64
	name         [256]byte
	parentID     uint64
	dirID        uint64
	generation   uint64
	flags        uint64
	uuid         [16]byte
	parentUUID   [16]byte
	receivedUUID [16]byte
	ctransid     uint64
	otransid     uint64
	stransid     uint64
	rtransid     uint64
	ctime        btrfsTimespec
	otime        btrfsTimespec
	stime        btrfsTimespec
	rtime        btrfsTimespec
	reserved     [8]uint64
}

// Compile-time checks that the structures have the kernel's sizes, which
// the ioctl numbers encode.
var (
	_ [4096 - unsafe.Sizeof(btrfsVolArgs{})]struct{}
	_ [unsafe.Sizeof(btrfsVolArgs{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(btrfsVolArgsV2{})]struct{}
	_ [unsafe.Sizeof(btrfsVolArgsV2{}) - 4096]struct{}
	_ [504 - unsafe.Sizeof(btrfsSubvolInfoArgs{})]struct{}
	_ [unsafe.Sizeof(btrfsSubvolInfoArgs{}) - 504]struct{}
)

// UUID is a btrfs subvolume's UUID; the zero UUID is none.
type UUID [16]byte

// IsZero reports whether u is no UUID (a subvolume that was not received
// has no received UUID).
func (u UUID) IsZero() bool { return u == UUID{} }

// String writes u as btrfs subvolume show does (8-4-4-4-12 hex digits),
// or "-" for none.
func (u UUID) String() string {
	if u.IsZero() {
		return "-"
	}
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ParseUUID reads a UUID as String writes it.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("%q is not a UUID", s)
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil {
		return u, fmt.Errorf("%q is not a UUID", s)
	}
	copy(u[:], b)
	return u, nil
}

// SubvolInfo is what the kernel says of a btrfs subvolume.
type SubvolInfo struct {
	ID       uint64
	UUID     UUID
	Parent   UUID // the subvolume it is a snapshot of, if any
	Received UUID // the UUID of the subvolume sent that it was received from, if any
	ReadOnly bool
}

// ErrNotSubvolume is returned for a directory that is not the top of a
// btrfs subvolume.
var ErrNotSubvolume = errors.New("not a btrfs subvolume")

// Subvolume describes the btrfs subvolume whose top directory is dir
// (BTRFS_IOC_GET_SUBVOL_INFO, Linux 4.18). dir itself must not be a
// symbolic link.
func Subvolume(dir string) (SubvolInfo, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return SubvolInfo{}, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	info, err := subvolumeFd(fd)
	if err != nil {
		return info, fmt.Errorf("%s: %w", dir, err)
	}
	return info, nil
}

func subvolumeFd(fd int) (SubvolInfo, error) {
	if !isSubvolumeFd(fd) {
		return SubvolInfo{}, ErrNotSubvolume
	}
	var a btrfsSubvolInfoArgs
	if err := ioctlPtr(fd, btrfsIocGetSubvolInfo, unsafe.Pointer(&a)); err != nil {
		return SubvolInfo{}, fmt.Errorf("BTRFS_IOC_GET_SUBVOL_INFO: %w", err)
	}
	return SubvolInfo{ID: a.treeID, UUID: a.uuid, Parent: a.parentUUID, Received: a.receivedUUID, ReadOnly: a.flags&btrfsRootRdonly != 0}, nil
}

// isSubvolumeFd reports whether the open directory fd is the top of a
// btrfs subvolume.
func isSubvolumeFd(fd int) bool {
	var sfs unix.Statfs_t
	var st unix.Stat_t
	return unix.Fstatfs(fd, &sfs) == nil && sfs.Type == btrfsSuperMagic &&
		unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == btrfsFirstFreeIno
}

// readOnlySubvolumeFd reports whether the open directory fd is the top of
// a read-only btrfs subvolume.
func readOnlySubvolumeFd(fd int) bool {
	if !isSubvolumeFd(fd) {
		return false
	}
	var flags uint64
	return ioctlPtr(fd, btrfsIocSubvolGetflag, unsafe.Pointer(&flags)) == nil && flags&btrfsSubvolRdonly != 0
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// setName copies name into a NUL-terminated ioctl buffer, refusing what
// is not one path component.
func setName(buf []byte, name string) error {
	if name == "" || name == "." || name == ".." || len(name) >= len(buf) || filepath.Base(name) != name {
		return fmt.Errorf("%q is not a subvolume name", name)
	}
	copy(buf, name)
	return nil
}

// SnapshotReadOnly makes dst a read-only snapshot of the subvolume src
// (BTRFS_IOC_SNAP_CREATE_V2). Both are opened without following a
// symbolic link in their last component; dst's directory must exist and
// dst must not.
func SnapshotReadOnly(src, dst string) error {
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: src, Err: err}
	}
	defer unix.Close(sfd)
	if !isSubvolumeFd(sfd) {
		return fmt.Errorf("snapshot %s: %w", src, ErrNotSubvolume)
	}
	pfd, err := unix.Open(filepath.Dir(dst), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(dst), Err: err}
	}
	defer unix.Close(pfd)
	a := &btrfsVolArgsV2{fd: int64(sfd), flags: btrfsSubvolRdonly}
	if err := setName(a.name[:], filepath.Base(dst)); err != nil {
		return err
	}
	if err := ioctlPtr(pfd, btrfsIocSnapCreateV2, unsafe.Pointer(a)); err != nil {
		return fmt.Errorf("snapshot %s as %s: %w", src, dst, err)
	}
	return nil
}

// DeleteSubvolume deletes the subvolume dir, read-only or not, with
// everything in it (BTRFS_IOC_SNAP_DESTROY): what a tree walk cannot
// remove from a read-only subvolume. dir is opened without following a
// symbolic link, and must be the top of a subvolume with nothing mounted
// in it; a subvolume with subvolumes inside is refused by the kernel
// (ENOTEMPTY). A dir that does not exist is no error.
func DeleteSubvolume(dir string) error {
	dir = filepath.Clean(dir)
	if mps := MountsUnder(dir); len(mps) > 0 {
		return fmt.Errorf("%s %w", dir, ErrMounted)
	}
	pfd, err := unix.Open(filepath.Dir(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "open", Path: filepath.Dir(dir), Err: err}
	}
	defer unix.Close(pfd)
	fd, err := unix.Openat(pfd, filepath.Base(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	ok := err == nil && isSubvolumeFd(fd)
	unix.Close(fd)
	if !ok {
		return fmt.Errorf("delete %s: %w", dir, ErrNotSubvolume)
	}
	if err := destroyAt(pfd, filepath.Base(dir), &st); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", dir, err)
	}
	return nil
}

// destroyAt deletes the subvolume name of the open directory parent,
// while name is still the directory want describes.
func destroyAt(parent int, name string, want *unix.Stat_t) error {
	var st unix.Stat_t
	if err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		return fmt.Errorf("changed while being removed: %w", ErrMounted)
	}
	a := &btrfsVolArgs{}
	if err := setName(a.name[:], name); err != nil {
		return err
	}
	return ioctlPtr(parent, btrfsIocSnapDestroy, unsafe.Pointer(a))
}

// btrfsIocFsInfo is _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1024
// bytes, the file system's UUID at offset 16.
const btrfsIocFsInfo = 0x8400941f

// BtrfsFilesystem returns the UUID of the btrfs file system dir is on
// (BTRFS_IOC_FS_INFO): two directories with the same one can share
// snapshots, whatever subvolumes they are in.
func BtrfsFilesystem(dir string) (UUID, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return UUID{}, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	var a [1024]byte
	if err := ioctlPtr(fd, btrfsIocFsInfo, unsafe.Pointer(&a)); err != nil {
		return UUID{}, fmt.Errorf("%s: BTRFS_IOC_FS_INFO: %w", dir, err)
	}
	var u UUID
	copy(u[:], a[16:32])
	return u, nil
}
