package treecopy

import (
	"bytes"
	"errors"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// Extended attributes whose values hold user ids.
const (
	aclAccess  = "system.posix_acl_access"
	aclDefault = "system.posix_acl_default"
	capability = "security.capability"
)

// xattrs copies in's extended attributes to out (see mapXattr).
func (c *copier) xattrs(in, out int, disp string) error {
	names, err := host.ListXattrs(in)
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	if err != nil {
		return &Error{Op: "cannot read the attributes of", Path: disp, Err: err}
	}
	for _, name := range names {
		v, err := host.GetXattr(in, name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return &Error{Op: "cannot read the attributes of", Path: disp, Err: err}
		}
		if err := c.setXattr(out, name, v, disp); err != nil {
			return err
		}
	}
	return nil
}

// mapXattr is the value extended attribute name has on the copy, its
// ids mapped: ACL entries as owners are, a file capability's root to the
// destination's root. A capability does not leave a machine for the
// host; ok is false for one that is dropped.
func (c *copier) mapXattr(name string, v []byte) (_ []byte, ok bool) {
	switch name {
	case aclAccess, aclDefault:
		return c.mapACL(v), true
	case capability:
		if c.toHost() {
			c.stats.Stripped++
			return nil, false
		}
		v = c.mapCapability(v)
		return v, v != nil
	}
	return v, true
}

// setXattr gives out extended attribute name, mapped. What the
// destination's file system does not take is counted, not fatal, as cp
// does.
func (c *copier) setXattr(out int, name string, v []byte, disp string) error {
	v, ok := c.mapXattr(name, v)
	if !ok {
		return nil
	}
	if err := unix.Fsetxattr(out, name, v, 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
			c.stats.Unsupported++
			return nil
		}
		return &Error{Op: "cannot set the attributes of", Path: disp, Err: err}
	}
	return nil
}

// POSIX ACL xattrs: a version word, then 8-byte entries of tag, perms and
// id; the ids of named users and groups are the ones to map.
const (
	aclVersion  = 2
	aclTagUser  = 0x02
	aclTagGroup = 0x08
)

func (c *copier) mapACL(v []byte) []byte {
	if len(v) < 4 || le.Uint32(v) != aclVersion || (len(v)-4)%8 != 0 {
		return v
	}
	out := bytes.Clone(v)
	for off := 4; off+8 <= len(out); off += 8 {
		tag := le.Uint16(out[off:])
		if tag == aclTagUser || tag == aclTagGroup {
			le.PutUint32(out[off+4:], uint32(c.mapID(le.Uint32(out[off+4:]))))
		}
	}
	return out
}

// File capabilities: revision 2 holds no root (the host's), revision 3
// the root user id they are for.
const (
	capRev2   = 0x02000000
	capRev3   = 0x03000000
	capRevMsk = 0xFF000000
	capV2Size = 20
	capV3Size = 24
)

// mapCapability moves a file capability to the destination's root: a
// revision 3 one for a machine with a range, revision 2 for the host's
// root. nil drops it (a format this does not know).
func (c *copier) mapCapability(v []byte) []byte {
	if len(v) < capV2Size {
		return nil
	}
	magic := le.Uint32(v)
	var root uint32
	switch magic & capRevMsk {
	case capRev2:
	case capRev3:
		if len(v) < capV3Size {
			return nil
		}
		root = le.Uint32(v[capV2Size:])
	default:
		return nil
	}
	newRoot := c.mapID(root)
	flags := magic &^ capRevMsk
	if newRoot == 0 {
		out := make([]byte, capV2Size)
		copy(out, v[:capV2Size])
		le.PutUint32(out, capRev2|flags)
		return out
	}
	out := make([]byte, capV3Size)
	copy(out, v[:capV2Size])
	le.PutUint32(out, capRev3|flags)
	le.PutUint32(out[capV2Size:], uint32(newRoot))
	return out
}
