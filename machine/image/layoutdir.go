package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// StagedDir is a directory being filled beside its final name, in a
// directory that a host user may control (export --format oci): made
// under a fresh ".#" name, root's and 0700, reached only through its own
// descriptor, and renamed into place when it is whole.
type StagedDir struct {
	dir  *os.File // the parent, opened once
	base string   // the final name in dir
	tmp  string   // the staging name in dir
	self *os.File // the staging directory
	st   unix.Stat_t
	done bool
	// Existed: an empty directory had the final name when staging began;
	// Publish replaces it only while it stays empty.
	Existed bool
}

// CreateStagedDir stages a directory for path, which must not exist or be
// an empty directory: anything else there is refused and kept. The
// parent of path is opened following only root's symbolic links (see
// openFollowingRoot), and path itself is not followed.
func CreateStagedDir(path string) (*StagedDir, error) {
	path = filepath.Clean(path)
	parent, base := filepath.Dir(path), filepath.Base(path)
	if base == "/" || base == "." || base == ".." {
		return nil, fmt.Errorf("%s: name a new directory", path)
	}
	d, err := openFollowingRoot(parent, unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("directory %s does not exist (create it first)", parent)
	}
	if errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("%s is not a directory", parent)
	}
	if err != nil {
		return nil, err
	}
	s := &StagedDir{dir: d, base: base}
	if err := s.checkTarget(); err != nil {
		d.Close()
		return nil, err
	}
	dfd := int(d.Fd())
	for range 100 {
		name, err := tempName(base)
		if err != nil {
			d.Close()
			return nil, err
		}
		err = unix.Mkdirat(dfd, name, 0o700)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			d.Close()
			return nil, &os.PathError{Op: "mkdir", Path: path, Err: err}
		}
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Fstat(fd, &s.st)
		}
		if err != nil || s.st.Uid != 0 {
			// Swapped already: what is at the name is not ours.
			if fd >= 0 {
				unix.Close(fd)
			}
			d.Close()
			return nil, fmt.Errorf("%s: the staging directory was replaced as it was made", path)
		}
		s.tmp, s.self = name, os.NewFile(uintptr(fd), filepath.Join(parent, name))
		return s, nil
	}
	d.Close()
	return nil, fmt.Errorf("mkdir %s: no free temporary name", path)
}

// checkTarget refuses anything at the final name but an empty directory.
func (s *StagedDir) checkTarget() error {
	var st unix.Stat_t
	err := unix.Fstatat(int(s.dir.Fd()), s.base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "stat", Path: s.Path(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s already exists and is not a directory (remove it, or name a new directory)", s.Path())
	}
	fd, err := unix.Openat(int(s.dir.Fd()), s.base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.Path(), Err: err}
	}
	f := os.NewFile(uintptr(fd), s.Path())
	defer f.Close()
	if names, err := f.Readdirnames(1); len(names) > 0 || (err != nil && err != io.EOF) {
		return fmt.Errorf("%s already exists and is not empty (remove it, or name a new directory)", s.Path())
	}
	s.Existed = true
	return nil
}

// Path is the directory's final path, as the user gave it.
func (s *StagedDir) Path() string { return filepath.Join(s.dir.Name(), s.base) }

// Dir is the staging directory as a path that leads to it whatever
// happens to its name: through this process's descriptor of it.
func (s *StagedDir) Dir() string { return "/proc/self/fd/" + strconv.Itoa(int(s.self.Fd())) }

// FD is the staging directory's descriptor.
func (s *StagedDir) FD() int { return int(s.self.Fd()) }

// Publish gives the staging directory its final name: where nothing had
// it, only while nothing has it (RENAME_NOREPLACE); over the empty
// directory that had it, only while it is empty (rename refuses to
// replace a directory that is not, and any other file with a directory).
func (s *StagedDir) Publish() error {
	if err := syncTree(s.self); err != nil {
		return err
	}
	dfd := int(s.dir.Fd())
	var err error
	if s.Existed {
		err = unix.Renameat(dfd, s.tmp, dfd, s.base)
	} else {
		err = unix.Renameat2(dfd, s.tmp, dfd, s.base, unix.RENAME_NOREPLACE)
	}
	switch {
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EISDIR):
		return fmt.Errorf("%s was made meanwhile, and is kept (remove it, or name a new directory)", s.Path())
	case err != nil:
		return &os.PathError{Op: "rename", Path: s.Path(), Err: err}
	}
	_ = s.dir.Sync()
	var st unix.Stat_t
	if unix.Fstatat(dfd, s.base, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != s.st.Dev || st.Ino != s.st.Ino {
		s.tmp = ""
		s.Abort()
		return fmt.Errorf("%s was replaced in its directory while it was written", s.Path())
	}
	s.done = true
	s.self.Close()
	s.dir.Close()
	return nil
}

// syncTree fsyncs every file and directory under d, and d.
func syncTree(d *os.File) error {
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		fd, err := unix.Openat(int(d.Fd()), n, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), n)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = syncTree(f)
			if err != nil {
				f.Close()
				return err
			}
		} else if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		f.Close()
	}
	return d.Sync()
}

// Abort removes the staging directory and what is in it, while its name
// is still it: one swapped in under that name is left.
func (s *StagedDir) Abort() {
	if s.done {
		return
	}
	s.done = true
	if s.tmp != "" {
		_ = host.RemoveTreeAt(int(s.dir.Fd()), s.tmp, &s.st)
	}
	s.self.Close()
	s.dir.Close()
}
