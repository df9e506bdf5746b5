package bootstrap

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

// removeAt removes the directory name inside the open directory parent
// (on device parentDev); want is what an earlier stat of name found. What
// it opens must still be that directory and no mount's root, so a mount
// made in the meantime is never entered. Another device that is no mount
// root is a btrfs subvolume (a base snapshotted inside a tree), which goes
// with the tree; where the kernel cannot tell mount roots (before Linux
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

// Personalise makes a freshly bootstrapped or cloned root its own machine:
// hostname set, machine id emptied so the first boot generates one, and
// D-Bus's machine id a link to it (DBusMachineIDLink). Every write stays
// inside root even if the tree holds hostile symbolic links.
func Personalise(root, hostname string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, f := range []struct {
		path, content string
	}{
		{"etc/hostname", hostname + "\n"},
		{"etc/machine-id", ""},
	} {
		if err := WriteInRoot(r, f.path, f.content); err != nil {
			return fmt.Errorf("personalise %s: %w", f.path, err)
		}
	}
	if _, _, err := LinkDBusMachineID(r); err != nil {
		return fmt.Errorf("personalise %s: %w", DBusMachineID, err)
	}
	return nil
}

// DBusMachineID is where D-Bus keeps its machine id, relative to a root.
// debootstrap leaves a file there with the id the bootstrap generated, and
// systemd's first boot takes it for the machine's own ("Initializing
// machine ID from D-Bus machine ID"), so every copy of one base would share
// one id. Debian's dbus makes it a link to /etc/machine-id instead, which
// systemd does not read (it opens the file with O_NOFOLLOW).
const DBusMachineID = "var/lib/dbus/machine-id"

// DBusMachineIDTarget is what DBusMachineID links to inside the machine.
const DBusMachineIDTarget = "/etc/machine-id"

// LinkDBusMachineID makes DBusMachineID inside r a link to /etc/machine-id,
// as Debian's dbus does, unless it is such a link already or the tree has
// no /var/lib/dbus. It reports whether it changed anything and what a
// regular file there held (the id the tree would otherwise have taken at
// its first boot). The link is made beside it and renamed over it, inside
// r, so the path is never missing for a machine that runs meanwhile.
func LinkDBusMachineID(r *os.Root) (changed bool, old string, err error) {
	fi, err := r.Lstat(DBusMachineID)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, derr := r.Lstat(filepath.Dir(DBusMachineID)); derr != nil {
			return false, "", nil // no dbus in this tree
		}
	case err != nil:
		return false, "", err
	case fi.Mode()&os.ModeSymlink != 0:
		if cur, err := r.Readlink(DBusMachineID); err == nil && cur == DBusMachineIDTarget {
			return false, "", nil
		}
	case fi.Mode().IsRegular():
		if b, err := ReadSmallInRoot(r, DBusMachineID, 4096); err == nil {
			old = strings.TrimSpace(string(b))
		}
	}
	tmp := filepath.Join(filepath.Dir(DBusMachineID), ".#nsbox.machine-id")
	_ = r.Remove(tmp)
	if err := r.Symlink(DBusMachineIDTarget, tmp); err != nil {
		return false, old, err
	}
	if err := r.Rename(tmp, DBusMachineID); err != nil {
		_ = r.Remove(tmp)
		return false, old, err
	}
	return true, old, nil
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
