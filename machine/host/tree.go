package host

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// ErrMounted is returned when a tree to remove has something mounted in it.
var ErrMounted = errors.New("has file systems mounted inside")

// RemoveTree deletes dir and everything below it without following any
// symbolic link and without crossing into another mount: a host directory
// bind-mounted inside survives, and the removal fails instead.
func RemoveTree(dir string) error {
	dir = filepath.Clean(dir)
	if mps := MountsUnder(dir); len(mps) > 0 {
		return fmt.Errorf("%s %w (%s): unmount them first", dir, ErrMounted, strings.Join(mps, ", "))
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlink(dir)
	}
	parent, err := unix.Open(filepath.Dir(dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	defer unix.Close(parent)
	if err := removeAt(parent, filepath.Base(dir), &st, st.Dev); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// RemoveTreeAt removes the directory name of the open directory parent
// and everything below it, as RemoveTree does, only while it is the
// directory want describes (a stat of it): one swapped in meanwhile
// under its name is left.
func RemoveTreeAt(parent int, name string, want *unix.Stat_t) error {
	return removeAt(parent, name, want, want.Dev)
}

// removeAt removes the directory name inside the open directory parent
// (on device parentDev); want is what an earlier stat of name found. What
// it opens must still be that directory and no mount's root, so a mount
// made in the meantime is never entered. Another device that is no mount
// root is a btrfs subvolume (a base snapshotted inside a tree), which goes
// with the tree (a read-only one through the kernel, whole); where the kernel cannot tell mount roots (before Linux
// 5.8), another device is taken for a mount.
func removeAt(parent int, name string, want *unix.Stat_t, parentDev uint64) error {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		return err
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return fmt.Errorf("changed while being removed: %w", ErrMounted)
	}
	if root, known := fdMountRoot(fd); root || (!known && got.Dev != parentDev) {
		return ErrMounted
	}
	if readOnlySubvolumeFd(fd) {
		// Nothing can be unlinked in a read-only subvolume (a received
		// one, a snapshot kept as a parent): it goes whole.
		return destroyAt(parent, name, &got)
	}
	dev := got.Dev
	for {
		names, err := d.Readdirnames(256)
		for _, n := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return err
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := removeAt(fd, n, &st, dev); err != nil {
					return fmt.Errorf("%s/%w", n, err)
				}
				continue
			}
			if err := unix.Unlinkat(fd, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("%s: %w", n, err)
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := unix.Unlinkat(parent, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// fdMountRoot reports whether the open directory fd is the root of a
// mount, and whether the kernel could tell.
func fdMountRoot(fd int) (root, known bool) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO, &stx); err != nil {
		return false, false
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, false
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, true
}

// ReadSmallInRoot reads at most max bytes of the regular file path inside
// r, refusing anything else (a FIFO, a device) without blocking on it.
func ReadSmallInRoot(r *os.Root, path string, max int64) ([]byte, error) {
	f, err := r.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.ReadAll(io.LimitReader(f, max))
}

// WriteInRoot replaces path inside r atomically. A symbolic link at path is
// replaced, never followed.
func WriteInRoot(r *os.Root, path, content string) error {
	tmp := filepath.Join(filepath.Dir(path), ".#nsbox."+filepath.Base(path))
	_ = r.Remove(tmp)
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, content); err != nil {
		f.Close()
		_ = r.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		_ = r.Remove(tmp)
		return err
	}
	if err := r.Rename(tmp, path); err != nil {
		_ = r.Remove(tmp)
		return err
	}
	return nil
}

// PrivateDir makes dir (and its parents) if needed and makes sure that it
// is root's, mode 0700, and not a link: bases and machine trees hold files
// that are uid 0 on disk but were made by a machine's root (setuid
// programs, device nodes), which no host user may reach.
func PrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: not a directory of its own: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Uid != 0 {
		return fmt.Errorf("%s belongs to uid %d, not root (move it away)", dir, st.Uid)
	}
	if st.Mode&0o7777 != 0o700 {
		logrus.Warnf("%s had mode %04o: setting it to 0700, so that no host user reaches the files in it", dir, st.Mode&0o7777)
		return unix.Fchmod(fd, 0o700)
	}
	return nil
}
