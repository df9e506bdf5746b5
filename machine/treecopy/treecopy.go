// Package treecopy copies files and trees between the host and machines,
// as cp -a does: modes, owners, times, extended attributes and ACLs, hard
// links within the copy, holes of sparse files. Each side is a root that
// paths resolve in: the host's own, or a machine's root directory, where
// every step is taken relative to a descriptor (openat2 with
// RESOLVE_IN_ROOT for the paths a user names, O_NOFOLLOW below them), so
// that no link a machine planted, and no path it swaps meanwhile, leads
// outside it. Owners are mapped between the sides' user id ranges.
package treecopy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// RangeSize is the ids a machine's range holds.
const RangeSize = 0x10000

// overflowID is the owner a machine sees for an id outside its range.
const overflowID = 65534

// Side is one end of a copy.
type Side struct {
	// FD is a directory that paths of this side resolve in (a machine's
	// root directory) when InRoot; for the host, paths are the host's
	// and FD is unix.AT_FDCWD.
	FD     int
	InRoot bool
	// Shift is the host id of this side's id 0: a machine's range, 0 for
	// the host and for machines without a user namespace.
	Shift int
	// Name is what messages call this side's paths ("web:" for a
	// machine, "" for the host).
	Name string
}

// Host is the host's side.
var Host = Side{FD: unix.AT_FDCWD}

// Options are a copy's choices.
type Options struct {
	// Owner, when set, owns every copied entry: ids as the destination
	// sees them.
	Owner *Owner
	// FromMachine drops setuid and setgid bits and refuses device nodes:
	// what a machine's root made is no privilege on the host.
	FromMachine bool
	// Progress, when set, is told the bytes of file data copied so far.
	Progress func(bytes int64)
}

// Owner is a user and group as a side sees them.
type Owner struct{ UID, GID int }

// Stats counts what a copy did.
type Stats struct {
	Files, Dirs, Links, Others int
	Bytes                      int64
	// Stripped counts files whose setuid or setgid bit was dropped.
	Stripped int
	// Unsupported counts extended attributes the destination refused.
	Unsupported int
	// LinksLost counts files copied apart from a hard link of theirs
	// (nsbox ran out of descriptors to keep them by).
	LinksLost int
}

// Error is a copy's failure at one path, worded as cp words its errors.
type Error struct {
	Op   string
	Path string
	Err  error
}

func (e *Error) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("%s: %s", e.Path, describe(e.Err))
	}
	return fmt.Sprintf("%s %s: %s", e.Op, e.Path, describe(e.Err))
}

func (e *Error) Unwrap() error { return e.Err }

// describe words an errno as cp does, without Go's "operation" prefix.
func describe(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) && errno == unix.EOVERFLOW {
		return "the machine mounted this file system itself, for ids that do not include host root's (copy into its tree instead)"
	}
	if errors.As(err, &errno) {
		s := errno.Error()
		return strings.ToUpper(s[:1]) + s[1:]
	}
	return err.Error()
}

// ErrNotDir and the like are the failures cp reports in its own words.
var (
	ErrDirOntoFile = errors.New("cannot overwrite non-directory with directory")
	ErrFileOntoDir = errors.New("cannot overwrite directory with non-directory")
	ErrIntoItself  = errors.New("cannot copy a directory into itself")
	ErrDevice      = errors.New("a device node is not copied out of a machine")
	ErrKernelFS    = errors.New("a kernel file system is not copied from or into a machine")
)

// kernelFS are the file systems whose files are the kernel's, not a
// machine's: a machine's root can mount or bind them anywhere in its
// tree, and nsbox, as host root, must not read or write them for it.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC: "proc", unix.SYSFS_MAGIC: "sysfs", unix.CGROUP_SUPER_MAGIC: "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2", unix.DEBUGFS_MAGIC: "debugfs", unix.TRACEFS_MAGIC: "tracefs",
	unix.SECURITYFS_MAGIC: "securityfs", unix.BPF_FS_MAGIC: "bpf", unix.PSTOREFS_MAGIC: "pstore",
	unix.EFIVARFS_MAGIC: "efivarfs", unix.DEVPTS_SUPER_MAGIC: "devpts",
	0x19800202: "mqueue", unix.BINFMTFS_MAGIC: "binfmt_misc", unix.SELINUX_MAGIC: "selinuxfs",
	unix.SMACK_MAGIC: "smackfs", unix.NSFS_MAGIC: "nsfs", 0x62656570: "configfs",
}

// checkFS refuses fd, on a machine's side, when it is on a kernel file
// system.
func (s Side) checkFS(fd int, disp string) error {
	if !s.InRoot {
		return nil
	}
	var sf unix.Statfs_t
	if err := unix.Fstatfs(fd, &sf); err != nil {
		return &Error{Op: "cannot stat", Path: disp, Err: err}
	}
	if n, ok := kernelFS[int64(sf.Type)]; ok {
		return &Error{Op: "cannot copy", Path: disp, Err: fmt.Errorf("%w (%s)", ErrKernelFS, n)}
	}
	return nil
}

// display names p on side s for messages.
func (s Side) display(p string) string { return s.Name + p }

// resolveFlags are openat2's for a path a user names on side s: inside
// its root for a machine, no magic links (/proc/self/...) either way.
func (s Side) resolveFlags() uint64 {
	if s.InRoot {
		return unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS
	}
	return unix.RESOLVE_NO_MAGICLINKS
}

// open opens p on side s with flags, links followed inside the side.
func (s Side) open(p string, flags int) (int, error) {
	if s.InRoot && (p == "" || p == "/") {
		p = "."
	}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(s.FD, p, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: s.resolveFlags()})
		if (errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)) && tries < 1000 {
			// RESOLVE_IN_ROOT fails when a rename raced the walk; a
			// machine renaming in a loop gets a failure in the end.
			continue
		}
		return fd, err
	}
}

// parentOf opens the directory that holds p's last component on side s,
// and returns that component ("." for a root).
func (s Side) parentOf(p string) (int, string, error) {
	clean := path.Clean(p)
	if s.InRoot {
		clean = path.Clean("/" + p)
	}
	dir, base := path.Split(clean)
	if base == "" || base == "." || base == "/" {
		// The root itself (or "."): its own parent, named ".".
		fd, err := s.open(clean, unix.O_PATH|unix.O_DIRECTORY)
		return fd, ".", err
	}
	if base == ".." {
		fd, err := s.open(clean, unix.O_PATH|unix.O_DIRECTORY)
		return fd, ".", err
	}
	if dir == "" {
		dir = "."
	}
	fd, err := s.open(dir, unix.O_PATH|unix.O_DIRECTORY)
	return fd, base, err
}

// source opens the directory that holds src on side s and stats src in
// it, its last step not followed: what a copy of src copies.
func (s Side) source(src string) (int, string, unix.Stat_t, error) {
	var st unix.Stat_t
	sp, sname, err := s.parentOf(src)
	if err != nil {
		return -1, "", st, &Error{Path: s.display(src), Err: err}
	}
	if err := unix.Fstatat(sp, sname, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Close(sp)
		return -1, "", st, &Error{Op: "cannot stat", Path: s.display(src), Err: err}
	}
	return sp, sname, st, nil
}

// baseName is the name a copy of src gets: its last component, "." for
// a root.
func baseName(src string) string {
	if b := path.Base(path.Clean("/" + src)); b != "/" {
		return b
	}
	return "."
}

// Copy copies src on side from to dst on side to. As cp does: a dst that
// is a directory receives src under its own name; otherwise dst names the
// copy, and a file there is replaced. A tree is copied whole (cp -a). A
// new entry appears at once, complete (made under a temporary name and
// renamed); a directory copied onto an existing one is merged into it,
// each file replaced at once.
func Copy(ctx context.Context, from Side, src string, to Side, dst string, o Options) (Stats, error) {
	c := &copier{ctx: ctx, from: from, to: to, o: o, links: map[devIno]int{}}
	defer c.closeLinks()
	sp, sname, st, err := from.source(src)
	if err != nil {
		return c.stats, err
	}
	defer unix.Close(sp)
	// The destination: an existing directory (links followed inside the
	// side, as cp follows them) takes src under its name.
	dp, dname, err := c.destination(dst, src, st)
	if err != nil {
		return c.stats, err
	}
	defer unix.Close(dp)
	if err := to.checkFS(dp, to.display(dst)); err != nil {
		return c.stats, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := notIntoItself(&st, dp); err != nil {
			return c.stats, &Error{Op: "cannot copy", Path: from.display(src) + " into " + to.display(dst), Err: err}
		}
	}
	disp := to.display(dst)
	if dname != "." && path.Base(dst) != dname {
		disp = to.display(path.Join(dst, dname))
	}
	err = c.entry(sp, sname, &st, dp, dname, true, disp)
	return c.stats, err
}

// destination resolves dst for a source with stat st named by src: the
// directory that gets the copy and the copy's name in it.
func (c *copier) destination(dst, src string, st unix.Stat_t) (int, string, error) {
	to := c.to
	srcBase := baseName(src)
	fd, err := to.open(dst, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil {
		if srcBase == "." {
			// The contents of a root go into the directory itself.
			parent, err := unix.Openat(fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(fd)
			if err != nil {
				return -1, "", &Error{Path: to.display(dst), Err: err}
			}
			return parent, ".", nil
		}
		return fd, srcBase, nil
	}
	if !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.ENOENT) {
		return -1, "", &Error{Op: "cannot open", Path: to.display(dst), Err: err}
	}
	if strings.HasSuffix(dst, "/") {
		if errors.Is(err, unix.ENOENT) {
			return -1, "", &Error{Op: "cannot create", Path: to.display(dst), Err: unix.ENOTDIR}
		}
		return -1, "", &Error{Op: "cannot open", Path: to.display(dst), Err: unix.ENOTDIR}
	}
	parent, name, err := to.parentOf(dst)
	if err != nil {
		return -1, "", &Error{Op: "cannot create", Path: to.display(dst), Err: err}
	}
	if name == "." {
		unix.Close(parent)
		return -1, "", &Error{Op: "cannot create", Path: to.display(dst), Err: unix.EEXIST}
	}
	var dt unix.Stat_t
	if err := unix.Fstatat(parent, name, &dt, unix.AT_SYMLINK_NOFOLLOW); err == nil &&
		dt.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		unix.Close(parent)
		return -1, "", &Error{Path: to.display(dst), Err: ErrDirOntoFile}
	}
	return parent, name, nil
}

// notIntoItself refuses copying directory src into itself or below it,
// which would never end: on one side, when the destination's directory
// has the source among its ancestors.
func notIntoItself(src *unix.Stat_t, dp int) error {
	fd, err := unix.Openat(dp, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	for i := 0; i < 4096; i++ {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return err
		}
		if st.Dev == src.Dev && st.Ino == src.Ino {
			unix.Close(fd)
			return ErrIntoItself
		}
		up, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return nil
		}
		var ust unix.Stat_t
		if err := unix.Fstat(up, &ust); err != nil || ust.Dev == st.Dev && ust.Ino == st.Ino {
			unix.Close(up)
			return nil
		}
		fd = up
	}
	unix.Close(fd)
	return nil
}

// IsNotExist reports whether err is a copy's "no such file".
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOENT) }
