package host

import (
	"os"

	"golang.org/x/sys/unix"
)

// DiskUsage adds up the blocks of every file under root, counting hard
// links once and not crossing into other file systems, as du -sx does.
// It walks by directory descriptors (fstatat on each name), which costs
// the kernel one lookup a file instead of a whole path's.
func DiskUsage(root string) (int64, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: root, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return 0, &os.PathError{Op: "stat", Path: root, Err: err}
	}
	u := usage{dev: st.Dev, seen: map[uint64]bool{}, total: st.Blocks * 512}
	u.dir(fd)
	return u.total, nil
}

type usage struct {
	dev   uint64
	seen  map[uint64]bool // inodes with more than one link, counted once
	total int64
}

// dir adds what directory fd holds, and closes fd. What cannot be read
// (gone meanwhile, no permission) is left out, as du reports and goes on.
func (u *usage) dir(fd int) {
	d := os.NewFile(uintptr(fd), "")
	defer d.Close()
	for {
		names, err := d.Readdirnames(1024)
		for _, n := range names {
			var st unix.Stat_t
			if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != u.dev {
				continue // gone, or another file system mounted here
			}
			isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
			if st.Nlink > 1 && !isDir {
				if u.seen[st.Ino] {
					continue
				}
				u.seen[st.Ino] = true
			}
			u.total += st.Blocks * 512
			if isDir {
				if sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
					u.dir(sub)
				}
			}
		}
		if err != nil || len(names) == 0 {
			return // io.EOF, or a directory that cannot be read further
		}
	}
}
