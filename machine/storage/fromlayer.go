package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The markers of an image layer (OCI's) for what overlayfs keeps as a
// 0:0 character device and an xattr.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
)

// ErrLayerUpper is an image layer that cannot be an overlay upper.
var ErrLayerUpper = errors.New("not an overlay upper")

// FromLayer makes the image layer extracted into upper (by nsbox's checked
// extraction, in a directory of root's that nothing else writes) an
// overlayfs upper: a whiteout ".wh.NAME" becomes the 0:0 character device
// NAME, and an opaque marker ".wh..wh..opq" the trusted.overlay.opaque
// attribute of its directory. Only these two are made here: the layer
// itself carries no trusted.* attribute (the extraction drops them), so no
// redirect or metacopy of overlayfs's can come from it.
func FromLayer(upper string) error {
	return filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p == upper || !strings.HasPrefix(name, whiteoutPrefix) {
			return nil
		}
		rel, _ := filepath.Rel(upper, p)
		if !d.Type().IsRegular() {
			return fmt.Errorf("%w: %s: a whiteout that is not a file", ErrLayerUpper, rel)
		}
		dir := filepath.Dir(p)
		target := strings.TrimPrefix(name, whiteoutPrefix)
		if name != opaqueMarker {
			if target == "" || target == "." || target == ".." || strings.HasPrefix(target, whiteoutPrefix) {
				return fmt.Errorf("%w: %s: not a whiteout of a name", ErrLayerUpper, rel)
			}
			if _, err := os.Lstat(filepath.Join(dir, target)); err == nil {
				return fmt.Errorf("%w: %s: a whiteout beside what it hides", ErrLayerUpper, rel)
			}
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		if name == opaqueMarker {
			if err := unix.Lsetxattr(dir, opaqueXattr, []byte("y"), 0); err != nil {
				return &os.PathError{Op: "setxattr", Path: dir, Err: err}
			}
			return nil
		}
		if err := unix.Mknod(filepath.Join(dir, target), unix.S_IFCHR, 0); err != nil {
			return &os.PathError{Op: "mknod", Path: filepath.Join(dir, target), Err: err}
		}
		return nil
	})
}

// Extended attributes that hold user ids, which Shift moves with the
// owners.
const (
	xattrCapability = "security.capability"
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
)

// idXattrs reads the attributes of path that hold ids (none of a symbolic
// link), before a chown clears its file capability.
func idXattrs(path string, mode os.FileMode) map[string][]byte {
	if mode&os.ModeSymlink != 0 {
		return nil
	}
	var out map[string][]byte
	names := []string{xattrACLAccess, xattrACLDefault}
	if mode.IsRegular() {
		names = append(names, xattrCapability)
	}
	for _, n := range names {
		buf := make([]byte, 256)
		sz, err := unix.Lgetxattr(path, n, buf)
		if errors.Is(err, unix.ERANGE) {
			if sz, err = unix.Lgetxattr(path, n, nil); err == nil {
				buf = make([]byte, sz)
				sz, err = unix.Lgetxattr(path, n, buf)
			}
		}
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[n] = buf[:sz]
	}
	return out
}

// shiftXattrs writes back the id-holding attributes of path with their
// ids moved: a file capability of the root at from (revision 3 naming
// from, or revision 2, which names host root, when from is 0) becomes one
// of the root at to (revision 3 naming to), as the kernel would store it
// when the machine's root set it; the named users and groups of ACLs move
// as owners do. A capability of another root is left as it is: the
// machine could not use it before either.
// chowned says path was chowned, which cleared its capability.
func shiftXattrs(path string, xs map[string][]byte, move func(uint32) (int, bool), chowned bool) error {
	le := binary.LittleEndian
	for n, v := range xs {
		out := v
	attr:
		switch n {
		case xattrCapability:
			const rev2, rev3, revMask, v2Size, v3Size = 0x02000000, 0x03000000, 0xFF000000, 20, 24
			if len(v) < v2Size {
				break
			}
			magic := le.Uint32(v)
			var root uint32
			switch {
			case magic&revMask == rev2:
				root = 0
			case magic&revMask == rev3 && len(v) >= v3Size:
				root = le.Uint32(v[v2Size:])
			default:
				break attr // restored as it was
			}
			to, ok := move(root)
			if !ok {
				break
			}
			out = make([]byte, v3Size)
			copy(out, v[:v2Size])
			le.PutUint32(out, rev3|magic&^revMask)
			le.PutUint32(out[v2Size:], uint32(to))
		case xattrACLAccess, xattrACLDefault:
			var ok bool
			if out, ok = mapACL(v, move); !ok {
				continue
			}
		}
		if bytes.Equal(out, v) && !(n == xattrCapability && chowned) {
			continue
		}
		if err := unix.Lsetxattr(path, n, out, 0); err != nil {
			return &os.PathError{Op: "setxattr " + n, Path: path, Err: err}
		}
	}
	return nil
}

// overflowID is the id a machine sees for a host id it does not map
// (nobody).
const overflowID = 65534

// Confine keeps tree, received as the machine sees it (ids 0 to
// RangeSize-1), to ids of that range alone, before Shift moves it into
// the machine's range: an owner, or a named user or group of an ACL,
// outside it (a host id the sender chose: a host user's, another
// machine's range here) becomes nobody (overflowID), and the setuid or
// setgid bit of such an owner goes; a file capability of a root outside
// it (revision 3) goes. Whiteouts (0:0 character devices) are left.
func Confine(tree string) error {
	out := func(id uint32) bool { return id >= RangeSize }
	return walkOwned(tree, func(path string, fi os.FileInfo, st *syscall.Stat_t) error {
		xs := idXattrs(path, fi.Mode())
		le := binary.LittleEndian
		if v, ok := xs[xattrCapability]; ok && len(v) >= 24 && le.Uint32(v)&0xFF000000 == 0x03000000 && out(le.Uint32(v[20:])) {
			if err := unix.Lremovexattr(path, xattrCapability); err != nil {
				return &os.PathError{Op: "removexattr", Path: path, Err: err}
			}
			delete(xs, xattrCapability)
		}
		nobody := func(id uint32) (int, bool) { return overflowID, out(id) }
		for _, n := range []string{xattrACLAccess, xattrACLDefault} {
			v, ok := xs[n]
			if !ok {
				continue
			}
			if m, ok := mapACL(v, nobody); ok && !bytes.Equal(m, v) {
				if err := unix.Lsetxattr(path, n, m, 0); err != nil {
					return &os.PathError{Op: "setxattr " + n, Path: path, Err: err}
				}
			}
		}
		if !out(st.Uid) && !out(st.Gid) {
			return nil
		}
		uid, gid := int(st.Uid), int(st.Gid)
		mode := st.Mode & 0o7777
		if out(st.Uid) {
			uid, mode = overflowID, mode&^unix.S_ISUID
		}
		if out(st.Gid) {
			gid, mode = overflowID, mode&^unix.S_ISGID
		}
		// Lchown clears setuid, setgid and the file capability: what
		// stays is put back.
		if err := os.Lchown(path, uid, gid); err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		if mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			if err := unix.Chmod(path, mode); err != nil {
				return err
			}
		}
		if v, ok := xs[xattrCapability]; ok {
			if err := unix.Lsetxattr(path, xattrCapability, v, 0); err != nil {
				return &os.PathError{Op: "setxattr", Path: path, Err: err}
			}
		}
		return nil
	})
}

// mapACL returns a POSIX ACL (as the system.posix_acl_* attributes hold
// it: a version word, then 8-byte entries of tag, permissions and id) with
// the ids of its named users and groups that move says move changed; not
// ok for what is not such an ACL.
func mapACL(v []byte, move func(uint32) (int, bool)) ([]byte, bool) {
	le := binary.LittleEndian
	if len(v) < 4 || le.Uint32(v) != 2 || (len(v)-4)%8 != 0 {
		return nil, false
	}
	out := append([]byte(nil), v...)
	for off := 4; off+8 <= len(out); off += 8 {
		if tag := le.Uint16(out[off:]); tag == 0x02 || tag == 0x08 { // ACL_USER, ACL_GROUP
			if id, ok := move(le.Uint32(out[off+4:])); ok {
				le.PutUint32(out[off+4:], uint32(id))
			}
		}
	}
	return out, true
}

// walkOwned calls fn for every file of tree (lstat's), but whiteouts (0:0
// character devices), which mean "deleted" whoever owns them.
func walkOwned(tree string, fn func(path string, fi os.FileInfo, st *syscall.Stat_t) error) error {
	return filepath.Walk(tree, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner to read", path)
		}
		if fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0 {
			return nil
		}
		return fn(path, fi, st)
	})
}
