package treecopy

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// paxXattr prefixes an extended attribute in a tar stream, as GNU tar
// and star write them.
const paxXattr = "SCHILY.xattr."

// WriteTar writes src on side from to w as a tar stream whose top entry
// is src's name: owners as the machine sees them (numeric), extended
// attributes as PAX records, hard links as links. A stream is the
// host's: setuid bits and file capabilities do not leave a machine in
// it, nor device nodes. Holes are written as zeros.
func WriteTar(ctx context.Context, from Side, src string, w io.Writer) (Stats, error) {
	return writeTar(ctx, from, src, w, true)
}

// WriteHostTar writes the host path src to w as WriteTar does, for a
// machine: what goes into a machine keeps its setuid and setgid bits,
// file capabilities and device nodes, as a copy from the host into a
// machine does (nsbox -H HOST cp PATH NAME:DIR streams it so).
func WriteHostTar(ctx context.Context, src string, w io.Writer) (Stats, error) {
	return writeTar(ctx, Host, src, w, false)
}

func writeTar(ctx context.Context, from Side, src string, w io.Writer, fromMachine bool) (Stats, error) {
	c := &copier{ctx: ctx, from: from, to: Host, o: Options{FromMachine: fromMachine}}
	t := &tarWriter{copier: c, tw: tar.NewWriter(w), seen: map[devIno]string{}}
	sp, sname, st, err := from.source(src)
	if err != nil {
		return c.stats, err
	}
	defer unix.Close(sp)
	if err := t.entry(sp, sname, &st, baseName(src), from.display(src)); err != nil {
		return c.stats, err
	}
	if err := t.tw.Close(); err != nil {
		return c.stats, &Error{Op: "cannot write", Path: "the archive", Err: err}
	}
	return c.stats, nil
}

type tarWriter struct {
	*copier
	tw   *tar.Writer
	seen map[devIno]string
}

func (t *tarWriter) header(st *unix.Stat_t, name string) *tar.Header {
	return &tar.Header{
		Name: name, Mode: int64(t.mode(st)), Uid: t.mapID(st.Uid), Gid: t.mapID(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()), AccessTime: time.Unix(st.Atim.Unix()),
		Format: tar.FormatPAX,
	}
}

func (t *tarWriter) entry(sp int, sname string, st *unix.Stat_t, name, disp string) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	h := t.header(st, name)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		d, err := openDir(t.from, sp, sname, st, disp)
		if err != nil {
			return err
		}
		defer d.Close()
		h.Typeflag, h.Name = tar.TypeDir, strings.TrimSuffix(name, "/")+"/"
		t.paxXattrs(int(d.Fd()), h)
		if err := t.write(h, nil, disp); err != nil {
			return err
		}
		t.stats.Dirs++
		names, err := d.Readdirnames(-1)
		if err != nil {
			return &Error{Op: "cannot read directory", Path: disp, Err: err}
		}
		sort.Strings(names)
		for _, n := range names {
			var cst unix.Stat_t
			if err := unix.Fstatat(int(d.Fd()), n, &cst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return &Error{Op: "cannot stat", Path: disp + "/" + n, Err: err}
			}
			if err := t.entry(int(d.Fd()), n, &cst, path.Join(name, n), disp+"/"+n); err != nil {
				return err
			}
		}
		return nil
	case unix.S_IFREG:
		key := devIno{st.Dev, st.Ino}
		if first, ok := t.seen[key]; ok && st.Nlink > 1 {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			t.stats.Links++
			return t.write(h, nil, disp)
		}
		fd, err := unix.Openat(sp, sname, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return &Error{Op: "cannot open", Path: disp, Err: err}
		}
		f := os.NewFile(uintptr(fd), disp)
		defer f.Close()
		var now unix.Stat_t
		if err := unix.Fstat(fd, &now); err != nil || now.Mode&unix.S_IFMT != unix.S_IFREG {
			return &Error{Op: "cannot copy", Path: disp, Err: errors.New("it changed while it was copied")}
		}
		if err := t.from.checkFS(fd, disp); err != nil {
			return err
		}
		h.Typeflag, h.Size = tar.TypeReg, now.Size
		t.paxXattrs(fd, h)
		if st.Nlink > 1 {
			t.seen[key] = name
		}
		t.stats.Files++
		return t.write(h, io.LimitReader(f, now.Size), disp)
	case unix.S_IFLNK:
		buf := make([]byte, 4096)
		n, err := unix.Readlinkat(sp, sname, buf)
		if err != nil {
			return &Error{Op: "cannot read symbolic link", Path: disp, Err: err}
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, string(buf[:n])
		t.stats.Others++
		return t.write(h, nil, disp)
	case unix.S_IFCHR, unix.S_IFBLK:
		if t.toHost() {
			return &Error{Op: "cannot copy", Path: disp, Err: ErrDevice}
		}
		h.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		t.stats.Others++
		return t.write(h, nil, disp)
	case unix.S_IFIFO:
		h.Typeflag = tar.TypeFifo
		t.stats.Others++
		return t.write(h, nil, disp)
	default:
		// Sockets have no place in a tar stream; tar skips them too.
		return nil
	}
}

// paxXattrs records fd's extended attributes in h, mapped; what cannot
// be read is left out.
func (t *tarWriter) paxXattrs(fd int, h *tar.Header) {
	names, _ := host.ListXattrs(fd)
	for _, n := range names {
		v, err := host.GetXattr(fd, n)
		if err != nil {
			continue
		}
		if v, ok := t.mapXattr(n, v); ok {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[paxXattr+n] = string(v)
		}
	}
}

func (t *tarWriter) write(h *tar.Header, data io.Reader, disp string) error {
	if err := t.tw.WriteHeader(h); err != nil {
		return &Error{Op: "cannot write", Path: "the archive", Err: err}
	}
	if data == nil {
		return nil
	}
	n, err := io.Copy(t.tw, ctxReader{t.ctx, data})
	t.progress(n)
	if err != nil {
		return &Error{Op: "cannot copy", Path: disp, Err: err}
	}
	return nil
}

// ExtractTar unpacks the tar stream r into the existing directory dst on
// side to, as tar -xp does: owners from the stream (ids as the machine
// sees them) moved to its range, modes, times, extended attributes, hard
// links within the stream. No member names a path outside dst: "..",
// absolute names and links in the way are refused, and every step is
// taken from dst's descriptor without following links. A file appears
// complete (made under a temporary name, then renamed).
func ExtractTar(ctx context.Context, r io.Reader, to Side, dst string, o Options) (Stats, error) {
	c := &copier{ctx: ctx, from: Host, to: to, o: o}
	top, err := to.open(dst, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return c.stats, &Error{Op: "cannot extract into", Path: to.display(dst), Err: err}
	}
	defer unix.Close(top)
	if err := to.checkFS(top, to.display(dst)); err != nil {
		return c.stats, err
	}
	x := &extractor{copier: c, top: top, disp: to.display(dst)}
	defer x.closeDirs()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return c.stats, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return c.stats, fmt.Errorf("read the tar stream: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue // git archive's comment, say
		}
		if err := x.member(h, tr); err != nil {
			return c.stats, err
		}
	}
	return c.stats, x.finish()
}

type extractor struct {
	*copier
	top  int
	disp string
	// dirs are the directories made or set, their times set last.
	dirs []dirTimes
	// open holds descriptors of directories by their member path.
	open map[string]int
}

type dirTimes struct {
	path         string
	atime, mtime unix.Timespec
}

func (x *extractor) closeDirs() {
	for _, fd := range x.open {
		unix.Close(fd)
	}
}

// memberPath cleans a member's name; "" for the top directory itself.
func memberPath(name string) (string, error) {
	p := path.Clean("/" + name)
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q: a member name with \"..\" is refused", name)
		}
	}
	return strings.TrimPrefix(p, "/"), nil
}

// dir opens directory p (a cleaned member path) below the top, never
// through a link; with create, missing directories are made (0755, as
// tar does for directories the stream does not list).
func (x *extractor) dir(p string, create bool) (int, error) {
	if p == "" || p == "." {
		return x.top, nil
	}
	if x.open == nil {
		x.open = map[string]int{}
	}
	if fd, ok := x.open[p]; ok {
		return fd, nil
	}
	parent, err := x.dir(path.Dir(p), create)
	if err != nil {
		return -1, err
	}
	name := path.Base(p)
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdirat(parent, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, &Error{Op: "cannot create directory", Path: x.disp + "/" + p, Err: err}
		}
		if err := unix.Fchownat(parent, name, x.to.Shift, x.to.Shift, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return -1, &Error{Op: "cannot set the owner of", Path: x.disp + "/" + p, Err: err}
		}
		fd, err = unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, &Error{Op: "cannot extract into", Path: x.disp + "/" + p, Err: errors.New("not a directory (a link is not followed)")}
	}
	if err != nil {
		return -1, &Error{Op: "cannot open", Path: x.disp + "/" + p, Err: err}
	}
	if err := x.to.checkFS(fd, x.disp+"/"+p); err != nil {
		unix.Close(fd)
		return -1, err
	}
	x.open[p] = fd
	return fd, nil
}

func (x *extractor) member(h *tar.Header, data io.Reader) error {
	p, err := memberPath(h.Name)
	if err != nil {
		return err
	}
	disp := x.disp + "/" + p
	st := headerStat(h)
	if p == "" {
		if h.Typeflag != tar.TypeDir {
			return fmt.Errorf("%q: the top of the stream must be a directory", h.Name)
		}
		return x.setDir(x.top, st, h, "", disp)
	}
	parent, err := x.dir(path.Dir(p), true)
	if err != nil {
		return err
	}
	name := path.Base(p)
	var there unix.Stat_t
	exists := unix.Fstatat(parent, name, &there, unix.AT_SYMLINK_NOFOLLOW) == nil
	if h.Typeflag == tar.TypeDir {
		if exists && there.Mode&unix.S_IFMT != unix.S_IFDIR {
			return &Error{Path: disp, Err: ErrDirOntoFile}
		}
		if !exists {
			if err := unix.Mkdirat(parent, name, 0o700); err != nil {
				return &Error{Op: "cannot create directory", Path: disp, Err: err}
			}
			x.stats.Dirs++
		}
		fd, err := x.dir(p, false)
		if err != nil {
			return err
		}
		return x.setDir(fd, st, h, p, disp)
	}
	if exists && there.Mode&unix.S_IFMT == unix.S_IFDIR {
		return &Error{Path: disp, Err: ErrFileOntoDir}
	}
	tmp := tmpName()
	if err := x.make(h, st, data, parent, tmp, disp); err != nil {
		_ = removeAt(parent, tmp)
		return err
	}
	if err := unix.Renameat(parent, tmp, parent, name); err != nil {
		_ = removeAt(parent, tmp)
		return &Error{Op: "cannot create", Path: disp, Err: err}
	}
	return nil
}

// headerStat is what the stream says of a member, as a stat.
func headerStat(h *tar.Header) *unix.Stat_t {
	st := &unix.Stat_t{Uid: uint32(h.Uid), Gid: uint32(h.Gid), Mode: uint32(h.Mode & 0o7777)}
	st.Mtim = unix.NsecToTimespec(h.ModTime.UnixNano())
	st.Atim = st.Mtim
	if !h.AccessTime.IsZero() {
		st.Atim = unix.NsecToTimespec(h.AccessTime.UnixNano())
	}
	return st
}

func (x *extractor) make(h *tar.Header, st *unix.Stat_t, data io.Reader, parent int, name, disp string) error {
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		fd, err := unix.Openat(parent, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return &Error{Op: "cannot create regular file", Path: disp, Err: err}
		}
		f := os.NewFile(uintptr(fd), disp)
		defer f.Close()
		n, err := io.Copy(f, data)
		x.progress(n)
		if err != nil {
			return &Error{Op: "cannot write", Path: disp, Err: err}
		}
		x.stats.Files++
		return x.setFile(fd, st, h, disp)
	case tar.TypeLink:
		lp, err := memberPath(h.Linkname)
		if err != nil || lp == "" {
			return fmt.Errorf("%q: a hard link to %q is refused", h.Name, h.Linkname)
		}
		ld, err := x.dir(path.Dir(lp), false)
		if err != nil {
			return err
		}
		if err := unix.Linkat(ld, path.Base(lp), parent, name, 0); err != nil {
			return &Error{Op: "cannot create hard link", Path: disp, Err: err}
		}
		x.stats.Links++
		return nil
	case tar.TypeSymlink:
		if err := unix.Symlinkat(h.Linkname, parent, name); err != nil {
			return &Error{Op: "cannot create symbolic link", Path: disp, Err: err}
		}
		x.stats.Others++
		uid, gid := x.owner(st)
		if err := unix.Fchownat(parent, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &Error{Op: "cannot set the owner of", Path: disp, Err: err}
		}
		return setTimesAt(parent, name, st, disp)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(unix.S_IFIFO)
		switch h.Typeflag {
		case tar.TypeChar:
			mode = unix.S_IFCHR
		case tar.TypeBlock:
			mode = unix.S_IFBLK
		}
		uid, gid := x.owner(st)
		if err := makeNode(parent, name, mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))), uid, gid, st.Mode, st, disp); err != nil {
			return err
		}
		x.stats.Others++
		return nil
	default:
		return fmt.Errorf("%q: a tar member of type %q is not supported", h.Name, string(h.Typeflag))
	}
}

// setFile gives a new file its owner, attributes, mode and times.
func (x *extractor) setFile(fd int, st *unix.Stat_t, h *tar.Header, disp string) error {
	if err := x.own(fd, st, func() error { return x.paxXattrs(fd, h, disp) }, disp); err != nil {
		return err
	}
	return setTimes(fd, st.Atim, st.Mtim, disp)
}

// setDir gives a directory its owner, attributes and mode now and its
// times once the stream has ended.
func (x *extractor) setDir(fd int, st *unix.Stat_t, h *tar.Header, p, disp string) error {
	if err := x.own(fd, st, func() error { return x.paxXattrs(fd, h, disp) }, disp); err != nil {
		return err
	}
	x.dirs = append(x.dirs, dirTimes{p, st.Atim, st.Mtim})
	return nil
}

func (x *extractor) paxXattrs(fd int, h *tar.Header, disp string) error {
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattr); ok {
			if err := x.setXattr(fd, name, []byte(v), disp); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish sets the times of the directories, deepest first.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		fd, err := x.dir(d.path, false)
		if err != nil {
			return err
		}
		if err := setTimes(fd, d.atime, d.mtime, x.disp+"/"+d.path); err != nil {
			return err
		}
	}
	return nil
}

// ctxReader ends a read once ctx has ended: a file of a terabyte of
// holes, written out as zeros, stops at an interrupt.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
