package storage

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// capOf is a file capability (cap_net_raw, permitted and effective):
// revision 3 of the root at host id root, or revision 2 for root -1.
func capOf(root int) []byte {
	le := binary.LittleEndian
	if root < 0 {
		v := make([]byte, 20)
		le.PutUint32(v, 0x02000000|1)
		le.PutUint32(v[4:], 1<<13)
		return v
	}
	v := make([]byte, 24)
	le.PutUint32(v, 0x03000000|1)
	le.PutUint32(v[4:], 1<<13)
	le.PutUint32(v[20:], uint32(root))
	return v
}

// aclWith is an access ACL (xattr form) with a named user and a named
// group of ids uid and gid.
func aclWith(uid, gid int) []byte {
	le := binary.LittleEndian
	v := make([]byte, 4, 4+6*8)
	le.PutUint32(v, 2)
	add := func(tag uint16, perm uint16, id uint32) {
		e := make([]byte, 8)
		le.PutUint16(e, tag)
		le.PutUint16(e[2:], perm)
		le.PutUint32(e[4:], id)
		v = append(v, e...)
	}
	add(0x01, 6, 0xFFFFFFFF)  // user::rw-
	add(0x02, 6, uint32(uid)) // user:uid:rw-
	add(0x04, 4, 0xFFFFFFFF)  // group::r--
	add(0x08, 4, uint32(gid)) // group:gid:r--
	add(0x10, 6, 0xFFFFFFFF)  // mask::rw-
	add(0x20, 4, 0xFFFFFFFF)  // other::r--
	return v
}

func getx(t *testing.T, path, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// Shift moves file capabilities and ACLs with the owners for every caller:
// a clone (one range to another), a machine that runs without a user
// namespace and back (a range to 0, 0 to a range), a receive (0 to a
// range); a capability of another root is kept as it was, a file's
// setuid bit too.
func TestShiftMovesCapabilitiesAndACLs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown and security.capability need root")
	}
	const a, b, other = 0x100000, 0x230000, 0x500000
	dir := t.TempDir()
	file := func(name string, uid int, mode uint32, cap []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		if cap != nil {
			if err := unix.Lsetxattr(p, "security.capability", cap, 0); err != nil {
				t.Fatal(err)
			}
		}
		// After the capability, whose setting clears a setuid bit.
		if err := unix.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ping := file("ping", a, 0o755, capOf(a))
	suid := file("suid", a+1000, 0o4755, capOf(a))
	nested := file("nested", a+1000, 0o755, capOf(a+100000%0x10000))
	foreign := file("foreign", a, 0o755, capOf(other))
	acl := file("acl", other+7, 0o644, nil)
	if err := unix.Lsetxattr(acl, "system.posix_acl_access", aclWith(a+1000, a+1001), 0); err != nil {
		t.Skipf("no ACLs here: %v", err)
	}
	if err := os.Link(ping, filepath.Join(dir, "ping-link")); err != nil {
		t.Fatal(err)
	}
	check := func(step string, root int) {
		t.Helper()
		want := capOf(root)
		if root == 0 {
			want = capOf(-1) // host root's reads as revision 2
		}
		for _, p := range []string{ping, suid} {
			if got := getx(t, p, "security.capability"); !bytes.Equal(got, want) {
				t.Errorf("%s: %s: capability %x, want %x", step, filepath.Base(p), got, want)
			}
		}
		if got := getx(t, nested, "security.capability"); !bytes.Equal(got, capOf(root+100000%0x10000)) {
			t.Errorf("%s: nested: capability %x, want the root at %d's", step, got, root+100000%0x10000)
		}
		if got := getx(t, foreign, "security.capability"); !bytes.Equal(got, capOf(other)) {
			t.Errorf("%s: foreign: capability %x, want %x as it was", step, got, capOf(other))
		}
		if got := getx(t, acl, "system.posix_acl_access"); !bytes.Equal(got, aclWith(root+1000, root+1001)) {
			t.Errorf("%s: acl: %x, want %x", step, got, aclWith(root+1000, root+1001))
		}
		if u, _, mode := owner(t, suid); int(u) != root+1000 || mode&os.ModeSetuid == 0 {
			t.Errorf("%s: suid: owner %d mode %v", step, u, mode)
		}
		if u, _, _ := owner(t, acl); u != other+7 {
			t.Errorf("%s: acl's owner moved: %d", step, u)
		}
	}
	check("before", a)
	for _, step := range []struct{ from, to int }{{a, b}, {b, 0}, {0, a}} {
		if err := Shift(dir, step.from, step.to); err != nil {
			t.Fatal(err)
		}
		check("after "+filepath.Base(dir)+" shift", step.to)
	}
}

// A capability attribute of a revision Shift does not know is left as it
// was, never rewritten as one of the new root's.
func TestShiftXattrsLeavesAnUnknownCapability(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("security.capability needs root")
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	odd := capOf(-1)
	binary.LittleEndian.PutUint32(odd, 0x05000000|1)
	move := func(id uint32) (int, bool) { return int(id) + 0x100000, id < 0x10000 }
	if err := shiftXattrs(p, map[string][]byte{xattrCapability: odd}, move, false); err != nil {
		t.Fatal(err)
	}
	if got := getx(t, p, "security.capability"); got != nil {
		t.Errorf("an unknown revision became the capability %x", got)
	}
}
