package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
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

// ErrLayer is returned for a tree that WriteLayer cannot write as an
// image layer: more holes than it expands, a tree deeper than it walks,
// an overlayfs upper that uses what OCI layers cannot say.
var ErrLayer = errors.New("cannot be an image layer")

// DefaultMaxHoles is what the holes of a tree's sparse files may come to
// before WriteLayer refuses it: a layer holds them as zeros.
const DefaultMaxHoles = 1 << 30

// maxDepth is how deep WriteLayer walks: it holds a descriptor for each
// directory on the way down.
const maxDepth = 2048

// idRange is the ids of a machine's user namespace, and overflowID what
// it sees for an id outside them (nobody).
const (
	idRange    = 0x10000
	overflowID = 65534
)

// LayerOptions say how WriteLayer writes a tree.
type LayerOptions struct {
	// Shift is the host id of the machine's root in the tree as stored:
	// owners are written as the machine sees them (the host's id less
	// Shift, nobody for one outside its range).
	Shift int
	// Upper says the tree is an overlayfs upper directory: its
	// whiteouts (0/0 character devices) become OCI whiteouts (.wh.NAME)
	// and its opaque directories (trusted.overlay.opaque) get the OCI
	// opaque marker (.wh..wh..opq).
	Upper bool
	// Name is what messages call the tree ("web:" names web:/etc/x);
	// "": its path.
	Name string
	// MaxHoles caps the bytes of holes expanded; 0: DefaultMaxHoles.
	MaxHoles int64
	// Progress, when set, hears the bytes of file data written so far.
	Progress func(int64)
}

// LayerStats counts what WriteLayer wrote and left out.
type LayerStats struct {
	Files, Dirs, Links, Symlinks, Whiteouts, Opaque int
	Bytes                                           int64 // file data
	// Left out: device nodes and sockets (a machine gets its own /dev;
	// nsbox's pull drops device nodes too), extended attributes that are
	// the host's (trusted.*, security.* but capabilities), capabilities
	// for another user namespace, and directories that are other file
	// systems mounted in the tree.
	Devices, Sockets, Xattrs, Mounts int
}

// WriteLayer writes the tree at dir to w as an uncompressed image layer
// (a tar stream): members sorted by name, parents first, without a member
// for dir itself; owners numeric as the machine sees them; modes (setuid
// bits too), modification times (whole seconds, no access or change
// times), symbolic links, hard links within the tree, FIFOs, extended
// attributes (user.*, file capabilities and ACLs, their ids mapped as
// owners are). The same tree gives the same bytes.
//
// dir belongs to a machine whose root may have planted anything in it:
// every step is taken relative to its parent's descriptor without
// following a link, a file is read only through a descriptor checked to
// be the regular file that was listed, a directory that is another
// mount is written without its contents (as tar --one-file-system),
// device nodes are left out, and the holes of sparse files (written as
// zeros) are capped.
func WriteLayer(ctx context.Context, dir string, w io.Writer, o LayerOptions) (LayerStats, error) {
	if o.MaxHoles <= 0 {
		o.MaxHoles = DefaultMaxHoles
	}
	if o.Name != "" {
		o.Name = strings.TrimSuffix(o.Name, "/")
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return LayerStats{}, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	root := os.NewFile(uintptr(fd), dir)
	defer root.Close()
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, &stx); err != nil {
		return LayerStats{}, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	lw := &layerWriter{ctx: ctx, o: o, tw: tar.NewWriter(w), dir: dir, mnt: stx.Mnt_id, links: map[[2]uint64]string{}}
	if err := lw.children(root, "", 1); err != nil {
		return lw.stats, err
	}
	if err := lw.tw.Close(); err != nil {
		return lw.stats, err
	}
	return lw.stats, nil
}

type layerWriter struct {
	ctx   context.Context
	o     LayerOptions
	tw    *tar.Writer
	dir   string
	mnt   uint64
	links map[[2]uint64]string // first member of each hard-linked file
	holes int64
	stats LayerStats
}

// disp is a member's path for messages.
func (l *layerWriter) disp(rel string) string {
	if l.o.Name != "" {
		return l.o.Name + "/" + rel
	}
	return path.Join(l.dir, rel)
}

// id is host id as the machine sees it.
func (l *layerWriter) id(host uint32) int {
	if int64(host) >= int64(l.o.Shift) && int64(host) < int64(l.o.Shift)+idRange {
		return int(host) - l.o.Shift
	}
	return overflowID
}

// children writes the members under the directory d (rel is its member
// name, "" for the top), opaque marker first.
func (l *layerWriter) children(d *os.File, rel string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: %s is more than %d directories deep", ErrLayer, l.disp(rel), maxDepth)
	}
	if l.o.Upper {
		opaque, err := l.upperDir(int(d.Fd()), rel)
		if err != nil {
			return err
		}
		if opaque {
			l.stats.Opaque++
			if err := l.marker(path.Join(rel, opaqueMarker), time.Unix(0, 0)); err != nil {
				return err
			}
		}
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return &os.PathError{Op: "read directory", Path: l.disp(rel), Err: err}
	}
	sort.Strings(names)
	if l.o.Upper {
		// Whiteouts before their siblings, as the OCI image spec asks.
		var rest []string
		for _, n := range names {
			var st unix.Stat_t
			if unix.Fstatat(int(d.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				if err := l.entry(d, n, path.Join(rel, n), depth); err != nil {
					return err
				}
				continue
			}
			rest = append(rest, n)
		}
		names = rest
	}
	for _, n := range names {
		if err := l.ctx.Err(); err != nil {
			return err
		}
		if err := l.entry(d, n, path.Join(rel, n), depth); err != nil {
			return err
		}
	}
	return nil
}

// upperDir reads what overlayfs keeps on a directory of an upper: whether
// it is opaque, and refuses what an image layer cannot say (a directory
// renamed from a lower one, a file whose data stays in a lower one).
func (l *layerWriter) upperDir(fd int, rel string) (bool, error) {
	for _, x := range []string{"trusted.overlay.redirect", "trusted.overlay.metacopy"} {
		if _, err := unix.Fgetxattr(fd, x, nil); err == nil {
			return false, fmt.Errorf("%w: %s has overlayfs's %s, which an image layer cannot say", ErrLayer, l.disp(rel), x)
		}
	}
	v, err := host.GetXattr(fd, "trusted.overlay.opaque")
	if err != nil {
		return false, nil
	}
	if string(v) == "x" {
		// Whiteouts kept as xattrs, for a layer of a nested overlay:
		// never in an upper overlayfs writes.
		return false, fmt.Errorf("%w: %s holds overlayfs xattr whiteouts", ErrLayer, l.disp(rel))
	}
	return string(v) == "y", nil
}

// marker writes an empty whiteout member.
func (l *layerWriter) marker(name string, mtime time.Time) error {
	return l.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, ModTime: mtime})
}

func (l *layerWriter) header(st *unix.Stat_t, name string) *tar.Header {
	return &tar.Header{
		Name: name, Mode: int64(st.Mode & 0o7777), Uid: l.id(st.Uid), Gid: l.id(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, 0),
	}
}

// entry writes the member name of directory d (rel: its member name).
func (l *layerWriter) entry(d *os.File, name, rel string, depth int) error {
	dfd := int(d.Fd())
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "stat", Path: l.disp(rel), Err: err}
	}
	h := l.header(&st, rel)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: l.disp(rel), Err: err}
		}
		sub := os.NewFile(uintptr(fd), l.disp(rel))
		defer sub.Close()
		var stx unix.Statx_t
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, &stx); err != nil {
			return &os.PathError{Op: "stat", Path: l.disp(rel), Err: err}
		}
		if uint64(stx.Ino) != st.Ino || stx.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s changed while it was read", l.disp(rel))
		}
		h.Typeflag, h.Name = tar.TypeDir, rel+"/"
		l.xattrs(fd, h)
		if err := l.tw.WriteHeader(h); err != nil {
			return err
		}
		l.stats.Dirs++
		if stx.Mnt_id != l.mnt {
			l.stats.Mounts++
			return nil
		}
		return l.children(sub, rel, depth+1)
	case unix.S_IFREG:
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := l.links[key]; ok {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			l.stats.Links++
			return l.tw.WriteHeader(h)
		}
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: l.disp(rel), Err: err}
		}
		f := os.NewFile(uintptr(fd), l.disp(rel))
		defer f.Close()
		var now unix.Stat_t
		if err := unix.Fstat(fd, &now); err != nil || now.Mode&unix.S_IFMT != unix.S_IFREG || now.Ino != st.Ino || now.Dev != st.Dev {
			return fmt.Errorf("%s changed while it was read", l.disp(rel))
		}
		if l.o.Upper {
			if _, err := unix.Fgetxattr(fd, "trusted.overlay.metacopy", nil); err == nil {
				return fmt.Errorf("%w: %s has overlayfs's trusted.overlay.metacopy (its data is in the base)", ErrLayer, l.disp(rel))
			}
			if _, err := unix.Fgetxattr(fd, "trusted.overlay.whiteout", nil); err == nil {
				return fmt.Errorf("%w: %s is an overlayfs xattr whiteout", ErrLayer, l.disp(rel))
			}
		}
		if holes := now.Size - now.Blocks*512; holes > 0 {
			l.holes += holes
			if l.holes > l.o.MaxHoles {
				return fmt.Errorf("%w: %s is a sparse file of %s with %s of holes, more than an image layer, which holds them as zeros, may take (%s in all); remove it or make it smaller", ErrLayer, l.disp(rel), FormatSize(now.Size), FormatSize(holes), FormatSize(l.o.MaxHoles))
			}
		}
		h.Typeflag, h.Size, h.Mode = tar.TypeReg, now.Size, int64(now.Mode&0o7777)
		l.xattrs(fd, h)
		if err := l.tw.WriteHeader(h); err != nil {
			return err
		}
		n, err := io.Copy(l.tw, &ctxReader{ctx: l.ctx, r: io.LimitReader(f, now.Size), progress: l.progress})
		if err != nil {
			return fmt.Errorf("read %s: %w", l.disp(rel), err)
		}
		if n != now.Size {
			return fmt.Errorf("%s changed while it was read", l.disp(rel))
		}
		if now.Nlink > 1 {
			l.links[key] = rel
		}
		l.stats.Files++
		return nil
	case unix.S_IFLNK:
		target, err := readlinkat(dfd, name)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: l.disp(rel), Err: err}
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
		l.stats.Symlinks++
		return l.tw.WriteHeader(h)
	case unix.S_IFCHR:
		if l.o.Upper && st.Rdev == 0 {
			l.stats.Whiteouts++
			return l.marker(path.Join(path.Dir(rel), whiteoutPrefix+name), time.Unix(st.Mtim.Sec, 0))
		}
		l.stats.Devices++
		return nil
	case unix.S_IFBLK:
		l.stats.Devices++
		return nil
	case unix.S_IFIFO:
		h.Typeflag = tar.TypeFifo
		l.stats.Files++
		return l.tw.WriteHeader(h)
	default:
		l.stats.Sockets++
		return nil
	}
}

func (l *layerWriter) progress(n int64) {
	l.stats.Bytes += n
	if l.o.Progress != nil {
		l.o.Progress(l.stats.Bytes)
	}
}

// readlinkat reads a symbolic link's target, however long.
func readlinkat(dfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// Extended attributes kept in a layer, and what holds ids in them.
const (
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
	xattrCapability = "security.capability"
	paxXattr        = "SCHILY.xattr."
)

// xattrs records fd's extended attributes in h as PAX records: user.*,
// ACLs and file capabilities, their ids mapped; the host's (trusted.*,
// other security.*) are left out.
func (l *layerWriter) xattrs(fd int, h *tar.Header) {
	names, _ := host.ListXattrs(fd)
	sort.Strings(names)
	for _, n := range names {
		if !strings.HasPrefix(n, "user.") && n != xattrACLAccess && n != xattrACLDefault && n != xattrCapability {
			if !strings.HasPrefix(n, "trusted.overlay.") {
				l.stats.Xattrs++
			}
			continue
		}
		v, err := host.GetXattr(fd, n)
		if err != nil {
			continue
		}
		switch n {
		case xattrACLAccess, xattrACLDefault:
			v = l.mapACL(v)
		case xattrCapability:
			if v = l.mapCapability(v); v == nil {
				l.stats.Xattrs++
				continue
			}
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[paxXattr+n] = string(v)
	}
}

// mapACL maps the ids of a POSIX ACL's named users and groups (a version
// word, then 8-byte entries of tag, permissions and id).
func (l *layerWriter) mapACL(v []byte) []byte {
	le := binary.LittleEndian
	if len(v) < 4 || le.Uint32(v) != 2 || (len(v)-4)%8 != 0 {
		return v
	}
	out := bytes.Clone(v)
	for off := 4; off+8 <= len(out); off += 8 {
		if tag := le.Uint16(out[off:]); tag == 0x02 || tag == 0x08 {
			le.PutUint32(out[off+4:], uint32(l.id(le.Uint32(out[off+4:]))))
		}
	}
	return out
}

// mapCapability gives a file capability as the machine's root sees it:
// revision 3 for the machine's root (host id Shift) becomes revision 2
// (no root named: whoever runs the image); one for another root is
// dropped (nil), as the machine could not use it either.
func (l *layerWriter) mapCapability(v []byte) []byte {
	const (
		rev2, rev3, revMask = 0x02000000, 0x03000000, 0xFF000000
		v2Size, v3Size      = 20, 24
	)
	le := binary.LittleEndian
	if len(v) < v2Size {
		return nil
	}
	magic := le.Uint32(v)
	switch magic & revMask {
	case rev2:
		return v[:v2Size]
	case rev3:
		if len(v) < v3Size || int64(le.Uint32(v[v2Size:])) != int64(l.o.Shift) {
			return nil
		}
		out := bytes.Clone(v[:v2Size])
		le.PutUint32(out, rev2|magic&^revMask)
		return out
	}
	return nil
}

// ctxReader stops a copy when ctx ends, and tells progress what it read.
type ctxReader struct {
	ctx      context.Context
	r        io.Reader
	progress func(int64)
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if n > 0 && c.progress != nil {
		c.progress(int64(n))
	}
	return n, err
}
