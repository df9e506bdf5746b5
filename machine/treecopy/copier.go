package treecopy

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

type devIno struct{ dev, ino uint64 }

// copier is one copy under way.
type copier struct {
	ctx      context.Context
	from, to Side
	o        Options
	stats    Stats
	// links holds an O_PATH descriptor of the copy of each source inode
	// with more than one link, for the next link to it.
	links map[devIno]int
}

func (c *copier) closeLinks() {
	for _, fd := range c.links {
		unix.Close(fd)
	}
}

// tmpName is a name for an entry made before it gets its own.
func tmpName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return ".#nsbox-cp." + hex.EncodeToString(b[:])
}

// toHost reports whether the copy leaves a machine for the host.
func (c *copier) toHost() bool { return c.o.FromMachine && !c.to.InRoot }

// mapID maps an owner from the source's ids to the destination's: the
// id the source's side sees moves to the same id in the destination's
// range, and one outside the source's range (a machine's ids are 0 to
// 65535, even one without a user namespace) becomes nobody.
func (c *copier) mapID(id uint32) int {
	if !c.from.InRoot && !c.to.InRoot {
		return int(id)
	}
	inside := int(id) - c.from.Shift
	if inside < 0 || inside >= RangeSize {
		inside = overflowID
	}
	return inside + c.to.Shift
}

// owner is the destination's owner of an entry the source's st has.
func (c *copier) owner(st *unix.Stat_t) (int, int) {
	if c.o.Owner != nil {
		return c.to.Shift + c.o.Owner.UID, c.to.Shift + c.o.Owner.GID
	}
	return c.mapID(st.Uid), c.mapID(st.Gid)
}

// mode is the permission bits the copy gets: setuid and setgid dropped
// on the way from a machine to the host (a setgid directory too: what
// others made in it would be the group's the machine chose).
func (c *copier) mode(st *unix.Stat_t) uint32 {
	m := st.Mode & 0o7777
	if c.toHost() && m&(unix.S_ISUID|unix.S_ISGID) != 0 {
		m &^= unix.S_ISUID | unix.S_ISGID
		c.stats.Stripped++
	}
	return m
}

// entry copies sname in directory sp (with stat st) to dname in directory
// dp. With atomic the copy is made under a temporary name and renamed
// into place (a directory onto a directory merges instead); without, dp
// is a directory of the copy's own, and dname is new.
func (c *copier) entry(sp int, sname string, st *unix.Stat_t, dp int, dname string, atomic bool, disp string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if atomic {
		var dt unix.Stat_t
		if err := unix.Fstatat(dp, dname, &dt, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			switch there := dt.Mode&unix.S_IFMT == unix.S_IFDIR; {
			case there && isDir:
				return c.merge(sp, sname, st, dp, dname, disp)
			case there:
				return &Error{Path: disp, Err: ErrFileOntoDir}
			case isDir:
				return &Error{Path: disp, Err: ErrDirOntoFile}
			}
		} else if !errors.Is(err, unix.ENOENT) {
			return &Error{Op: "cannot stat", Path: disp, Err: err}
		}
	}
	name := dname
	if atomic {
		name = tmpName()
	}
	if err := c.make(sp, sname, st, dp, name, disp); err != nil {
		if atomic {
			_ = removeAt(dp, name)
		}
		return err
	}
	if atomic {
		if err := unix.Renameat(dp, name, dp, dname); err != nil {
			_ = removeAt(dp, name)
			return &Error{Op: "cannot create", Path: disp, Err: err}
		}
	}
	return nil
}

// make creates name in dp as a copy of sname in sp.
func (c *copier) make(sp int, sname string, st *unix.Stat_t, dp int, name, disp string) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.dir(sp, sname, st, dp, name, disp)
	case unix.S_IFREG:
		return c.file(sp, sname, st, dp, name, disp)
	case unix.S_IFLNK:
		return c.symlink(sp, sname, st, dp, name, disp)
	case unix.S_IFCHR, unix.S_IFBLK:
		if c.toHost() {
			return &Error{Op: "cannot copy", Path: disp, Err: ErrDevice}
		}
		fallthrough
	default:
		uid, gid := c.owner(st)
		if err := makeNode(dp, name, st.Mode&unix.S_IFMT, int(st.Rdev), uid, gid, c.mode(st), st, disp); err != nil {
			return err
		}
		c.stats.Others++
		return nil
	}
}

// makeNode makes a FIFO, socket or device node name in dp and gives it
// its owner, mode and times through a descriptor of its own, checked to
// be a node of that type: never by name, which whoever can write in dp
// could meanwhile point somewhere else with a link (a chmod by name
// follows it, on the host).
func makeNode(dp int, name string, typ uint32, rdev, uid, gid int, mode uint32, st *unix.Stat_t, disp string) error {
	if err := unix.Mknodat(dp, name, typ|0o600, rdev); err != nil {
		return &Error{Op: "cannot create", Path: disp, Err: err}
	}
	fd, err := unix.Openat(dp, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &Error{Op: "cannot open", Path: disp, Err: err}
	}
	defer unix.Close(fd)
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil || now.Mode&unix.S_IFMT != typ {
		return &Error{Op: "cannot create", Path: disp, Err: errors.New("it was replaced while it was made")}
	}
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return &Error{Op: "cannot set the owner of", Path: disp, Err: err}
	}
	// An O_PATH descriptor takes no fchmod; its /proc/self/fd link
	// names the very inode (what glibc's fchmodat does for
	// AT_SYMLINK_NOFOLLOW), and it is no symbolic link (checked above).
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), mode); err != nil {
		return &Error{Op: "cannot set the mode of", Path: disp, Err: err}
	}
	return setTimes(fd, st.Atim, st.Mtim, disp)
}

// openDir opens directory sname in sp for reading, never through a link,
// and checks that it is still the one stat'ed.
func openDir(side Side, sp int, sname string, st *unix.Stat_t, disp string) (*os.File, error) {
	fd, err := unix.Openat(sp, sname, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "cannot open", Path: disp, Err: err}
	}
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		unix.Close(fd)
		return nil, &Error{Op: "cannot copy", Path: disp, Err: errors.New("it changed while it was copied")}
	}
	if err := side.checkFS(fd, disp); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), disp), nil
}

// dir copies directory sname into a new directory name.
func (c *copier) dir(sp int, sname string, st *unix.Stat_t, dp int, name, disp string) error {
	src, err := openDir(c.from, sp, sname, st, disp)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := unix.Mkdirat(dp, name, 0o700); err != nil {
		return &Error{Op: "cannot create directory", Path: disp, Err: err}
	}
	fd, err := unix.Openat(dp, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &Error{Op: "cannot open", Path: disp, Err: err}
	}
	defer unix.Close(fd)
	c.stats.Dirs++
	if err := c.children(src, fd, false, disp); err != nil {
		return err
	}
	return c.attrs(int(src.Fd()), fd, st, disp)
}

// merge copies directory sname into the existing directory dname.
func (c *copier) merge(sp int, sname string, st *unix.Stat_t, dp int, dname, disp string) error {
	src, err := openDir(c.from, sp, sname, st, disp)
	if err != nil {
		return err
	}
	defer src.Close()
	fd, err := unix.Openat(dp, dname, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &Error{Op: "cannot open", Path: disp, Err: err}
	}
	defer unix.Close(fd)
	if err := c.to.checkFS(fd, disp); err != nil {
		return err
	}
	c.stats.Dirs++
	if err := c.children(src, fd, true, disp); err != nil {
		return err
	}
	return c.attrs(int(src.Fd()), fd, st, disp)
}

// children copies the entries of src into directory dp.
func (c *copier) children(src *os.File, dp int, atomic bool, disp string) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return &Error{Op: "cannot read directory", Path: disp, Err: err}
	}
	sort.Strings(names)
	sp := int(src.Fd())
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(sp, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // gone meanwhile
			}
			return &Error{Op: "cannot stat", Path: disp + "/" + n, Err: err}
		}
		if err := c.entry(sp, n, &st, dp, n, atomic, disp+"/"+n); err != nil {
			return err
		}
	}
	return nil
}

// file copies regular file sname to a new file name: a link to the copy
// of the same inode where one was made already.
func (c *copier) file(sp int, sname string, st *unix.Stat_t, dp int, name, disp string) error {
	key := devIno{st.Dev, st.Ino}
	if st.Nlink > 1 {
		if fd, ok := c.links[key]; ok {
			if err := unix.Linkat(fd, "", dp, name, unix.AT_EMPTY_PATH); err != nil {
				return &Error{Op: "cannot create hard link", Path: disp, Err: err}
			}
			c.stats.Links++
			return nil
		}
	}
	// O_NONBLOCK: a FIFO put in the file's place must not hang the copy;
	// the type is checked once it is open.
	in, err := unix.Openat(sp, sname, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return &Error{Op: "cannot open", Path: disp, Err: err}
	}
	defer unix.Close(in)
	var now unix.Stat_t
	if err := unix.Fstat(in, &now); err != nil || now.Mode&unix.S_IFMT != unix.S_IFREG {
		return &Error{Op: "cannot copy", Path: disp, Err: errors.New("it changed while it was copied")}
	}
	if err := c.from.checkFS(in, disp); err != nil {
		return err
	}
	out, err := unix.Openat(dp, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &Error{Op: "cannot create regular file", Path: disp, Err: err}
	}
	defer unix.Close(out)
	if err := c.data(in, out, now.Size, disp); err != nil {
		return err
	}
	c.stats.Files++
	if err := c.attrs(in, out, &now, disp); err != nil {
		return err
	}
	if st.Nlink > 1 {
		// The copy's own descriptor: its name may change meanwhile.
		if fd, err := unix.FcntlInt(uintptr(out), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			c.links[key] = fd
		} else {
			c.stats.LinksLost++
		}
	}
	return nil
}

// data copies size bytes of in to out, leaving holes where in has them.
func (c *copier) data(in, out int, size int64, disp string) error {
	var off int64
	for off < size {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		start, err := unix.Seek(in, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // a hole to the end
		}
		if err != nil {
			// No SEEK_DATA here: all of it is data.
			start = off
		}
		end, err := unix.Seek(in, start, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if err := c.span(in, out, start, end, disp); err != nil {
			return err
		}
		off = end
	}
	if err := unix.Ftruncate(out, size); err != nil {
		return &Error{Op: "cannot write", Path: disp, Err: err}
	}
	return nil
}

// span copies bytes [start, end) of in to the same place in out: in the
// kernel where it can (copy_file_range, a reflink on file systems that
// share blocks), through a buffer where it cannot.
func (c *copier) span(in, out int, start, end int64, disp string) error {
	for start < end {
		// In chunks, so that an interrupt is heard within one.
		if err := c.ctx.Err(); err != nil {
			return err
		}
		roff, woff := start, start
		n, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(end-start, 64<<20)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
				return c.spanBuffered(in, out, start, end, disp)
			}
			return &Error{Op: "cannot write", Path: disp, Err: err}
		}
		if n == 0 {
			break // the file shrank meanwhile
		}
		start += int64(n)
		c.progress(int64(n))
	}
	return nil
}

func (c *copier) spanBuffered(in, out int, start, end int64, disp string) error {
	buf := make([]byte, 1<<20)
	for start < end {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n, err := unix.Pread(in, buf[:min(end-start, int64(len(buf)))], start)
		if err != nil {
			return &Error{Op: "cannot read", Path: disp, Err: err}
		}
		if n == 0 {
			return nil
		}
		for w := 0; w < n; {
			m, err := unix.Pwrite(out, buf[w:n], start+int64(w))
			if err != nil {
				return &Error{Op: "cannot write", Path: disp, Err: err}
			}
			w += m
		}
		start += int64(n)
		c.progress(int64(n))
	}
	return nil
}

func (c *copier) progress(n int64) {
	c.stats.Bytes += n
	if c.o.Progress != nil {
		c.o.Progress(c.stats.Bytes)
	}
}

// symlink copies link sname as a new link name with the same target.
func (c *copier) symlink(sp int, sname string, st *unix.Stat_t, dp int, name, disp string) error {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(sp, sname, buf)
	if err != nil {
		return &Error{Op: "cannot read symbolic link", Path: disp, Err: err}
	}
	if err := unix.Symlinkat(string(buf[:n]), dp, name); err != nil {
		return &Error{Op: "cannot create symbolic link", Path: disp, Err: err}
	}
	c.stats.Others++
	uid, gid := c.owner(st)
	if err := unix.Fchownat(dp, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &Error{Op: "cannot set the owner of", Path: disp, Err: err}
	}
	return setTimesAt(dp, name, st, disp)
}

// attrs gives out (a copy of in, with stat st) in's owner, extended
// attributes, mode and times.
func (c *copier) attrs(in, out int, st *unix.Stat_t, disp string) error {
	if err := c.own(out, st, func() error { return c.xattrs(in, out, disp) }, disp); err != nil {
		return err
	}
	return setTimes(out, st.Atim, st.Mtim, disp)
}

// own gives out the owner and mode of st, and its extended attributes
// (setXattrs) in between: a chown clears setuid bits and file
// capabilities.
func (c *copier) own(out int, st *unix.Stat_t, setXattrs func() error, disp string) error {
	uid, gid := c.owner(st)
	if err := unix.Fchown(out, uid, gid); err != nil {
		return &Error{Op: "cannot set the owner of", Path: disp, Err: err}
	}
	if err := setXattrs(); err != nil {
		return err
	}
	if err := unix.Fchmod(out, c.mode(st)); err != nil {
		return &Error{Op: "cannot set the mode of", Path: disp, Err: err}
	}
	return nil
}

// setTimes sets the times of fd (any descriptor, O_PATH too).
func setTimes(fd int, atime, mtime unix.Timespec, disp string) error {
	if err := unix.UtimesNanoAt(fd, "", []unix.Timespec{atime, mtime}, unix.AT_EMPTY_PATH); err != nil {
		return &Error{Op: "cannot set the times of", Path: disp, Err: err}
	}
	return nil
}

func setTimesAt(dp int, name string, st *unix.Stat_t, disp string) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dp, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &Error{Op: "cannot set the times of", Path: disp, Err: err}
	}
	return nil
}

// removeAt removes name in dp and, for a directory, all below it, never
// through a link.
func removeAt(dp int, name string) error {
	err := unix.Unlinkat(dp, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dp, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	names, _ := f.Readdirnames(-1)
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			f.Close()
			return err
		}
	}
	f.Close()
	return unix.Unlinkat(dp, name, unix.AT_REMOVEDIR)
}

// le32 and friends read the little-endian words of xattr values.
var le = binary.LittleEndian
