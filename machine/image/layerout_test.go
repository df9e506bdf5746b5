package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// member is what a test reads back of a layer member.
type member struct {
	typ         byte
	mode        int64
	uid, gid    int
	link, data  string
	pax         map[string]string
	mtime, atim time.Time
}

// readLayer reads a layer with archive/tar, in order.
func readLayer(t *testing.T, b []byte) ([]string, map[string]member) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	out := map[string]member{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		names = append(names, h.Name)
		out[h.Name] = member{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid, link: h.Linkname, data: string(data), pax: h.PAXRecords, mtime: h.ModTime, atim: h.AccessTime}
	}
}

func writeLayer(t *testing.T, dir string, o LayerOptions) ([]byte, LayerStats, error) {
	t.Helper()
	var buf bytes.Buffer
	st, err := WriteLayer(context.Background(), dir, &buf, o)
	return buf.Bytes(), st, err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// capV3 is a revision 3 file capability (cap_net_raw) for root rootid.
func capV3(rootid uint32) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b, 0x03000000|1) // effective
	binary.LittleEndian.PutUint32(b[4:], 1<<13)    // cap_net_raw permitted
	binary.LittleEndian.PutUint32(b[20:], rootid)
	return b
}

// acl is a POSIX ACL xattr with a named user uid.
func acl(uid uint32) []byte {
	le := binary.LittleEndian
	b := make([]byte, 4+5*8)
	le.PutUint32(b, 2)
	put := func(i int, tag uint16, perm uint16, id uint32) {
		le.PutUint16(b[4+i*8:], tag)
		le.PutUint16(b[4+i*8+2:], perm)
		le.PutUint32(b[4+i*8+4:], id)
	}
	put(0, 0x01, 6, 0xffffffff) // user obj
	put(1, 0x02, 4, uid)        // named user
	put(2, 0x04, 4, 0xffffffff) // group obj
	put(3, 0x10, 4, 0xffffffff) // mask
	put(4, 0x20, 0, 0xffffffff) // other
	return b
}

// An overlayfs upper as overlayfs leaves it (whiteouts as 0/0 character
// devices, an opaque directory marked trusted.overlay.opaque), owned by
// a machine's range, becomes an OCI layer: OCI whiteouts before their
// siblings, the opaque marker first in its directory, owners, ACLs and
// capabilities as the machine sees them, hard links as links, links
// never followed, sockets and other devices left out, the host's xattrs
// too.
func TestWriteLayerUpper(t *testing.T) {
	const shift = 0x50000
	up := t.TempDir()
	p := func(s string) string { return filepath.Join(up, s) }
	must(t, os.MkdirAll(p("etc/app"), 0o755))
	must(t, os.MkdirAll(p("opaque/sub"), 0o750))
	must(t, os.WriteFile(p("etc/motd"), []byte("hello\n"), 0o644))
	must(t, os.WriteFile(p("opaque/sub/keep"), []byte("k"), 0o600))
	must(t, os.Link(p("etc/motd"), p("etc/motd.link")))
	must(t, os.Symlink("/etc/shadow", p("etc/shadow-link")))
	must(t, os.WriteFile(p("etc/ping"), []byte("ELF"), 0o4755))
	must(t, unix.Mknod(p("etc/issue.net"), unix.S_IFCHR, 0))
	must(t, unix.Mknod(p("etc/zz-gone"), unix.S_IFCHR, 0))
	must(t, unix.Mknod(p("etc/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mkfifo(p("etc/fifo"), 0o600))
	l, err := net.Listen("unix", p("etc/sock"))
	must(t, err)
	defer l.Close()
	must(t, unix.Setxattr(p("opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, unix.Setxattr(p("etc/motd"), "user.note", []byte("kept"), 0))
	must(t, unix.Setxattr(p("etc/motd"), "trusted.secret", []byte("host's"), 0))
	must(t, unix.Setxattr(p("etc/motd"), "system.posix_acl_access", acl(shift+1000), 0))
	// Lchown drops setuid: the mode goes on after it.
	for _, f := range []string{"", "etc", "etc/app", "etc/motd", "etc/ping", "opaque", "opaque/sub", "opaque/sub/keep", "etc/fifo"} {
		must(t, os.Lchown(p(f), shift, shift))
	}
	must(t, os.Lchown(p("etc/app"), shift+1000, shift+1001))
	must(t, os.Lchown(p("etc/shadow-link"), 12345, 12345)) // outside the range
	// A capability drops setuid too: the mode goes on last.
	must(t, unix.Setxattr(p("etc/ping"), "security.capability", capV3(shift), 0))
	must(t, unix.Chmod(p("etc/ping"), 0o4755))

	b, st, err := writeLayer(t, up, LayerOptions{Shift: shift, Upper: true})
	if err != nil {
		t.Fatal(err)
	}
	names, m := readLayer(t, b)
	want := []string{
		"etc/", "etc/.wh.issue.net", "etc/.wh.zz-gone", "etc/app/", "etc/fifo", "etc/motd", "etc/motd.link", "etc/ping", "etc/shadow-link",
		"opaque/", "opaque/.wh..wh..opq", "opaque/sub/", "opaque/sub/keep",
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("members\n got %q\nwant %q", names, want)
	}
	if e := m["etc/.wh.issue.net"]; e.typ != tar.TypeReg || e.data != "" {
		t.Errorf("whiteout %+v", e)
	}
	if e := m["etc/app/"]; e.uid != 1000 || e.gid != 1001 || e.typ != tar.TypeDir {
		t.Errorf("etc/app/ %+v", e)
	}
	if e := m["etc/motd"]; e.uid != 0 || e.data != "hello\n" || e.pax["SCHILY.xattr.user.note"] != "kept" || e.pax["SCHILY.xattr.trusted.secret"] != "" {
		t.Errorf("etc/motd %+v", e)
	} else if a := []byte(e.pax["SCHILY.xattr.system.posix_acl_access"]); len(a) != 44 || binary.LittleEndian.Uint32(a[4+8+4:]) != 1000 {
		t.Errorf("ACL's named user not mapped: % x", a)
	}
	if e := m["etc/motd.link"]; e.typ != tar.TypeLink || e.link != "etc/motd" {
		t.Errorf("hard link %+v", e)
	}
	if e := m["etc/shadow-link"]; e.typ != tar.TypeSymlink || e.link != "/etc/shadow" || e.uid != 65534 {
		t.Errorf("symbolic link %+v", e)
	}
	if e := m["etc/ping"]; e.mode != 0o4755 {
		t.Errorf("setuid lost: %o", e.mode)
	} else if c := []byte(e.pax["SCHILY.xattr.security.capability"]); len(c) != 20 || binary.LittleEndian.Uint32(c)>>24 != 2 {
		t.Errorf("capability not made the image root's (revision 2): % x", c)
	}
	if e := m["etc/fifo"]; e.typ != tar.TypeFifo {
		t.Errorf("fifo %+v", e)
	}
	if e := m["opaque/"]; e.mode != 0o750 || e.pax["SCHILY.xattr.trusted.overlay.opaque"] != "" {
		t.Errorf("opaque/ %+v", e)
	}
	if st.Whiteouts != 2 || st.Opaque != 1 || st.Devices != 1 || st.Sockets != 1 || st.Links != 1 || st.Xattrs != 1 {
		t.Errorf("stats %+v", st)
	}

	// The same tree gives the same bytes, whatever its access times.
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p("etc/motd"), []unix.Timespec{unix.NsecToTimespec(time.Now().Add(time.Hour).UnixNano()), {Nsec: unix.UTIME_OMIT}}, 0))
	again, _, err := writeLayer(t, up, LayerOptions{Shift: shift, Upper: true})
	if err != nil || !bytes.Equal(b, again) {
		t.Errorf("a second layer differs (%v)", err)
	}
	if !m["etc/motd"].atim.IsZero() {
		t.Errorf("access time written: %v", m["etc/motd"].atim)
	}

	// A capability for another user namespace's root is dropped.
	must(t, unix.Setxattr(p("etc/ping"), "security.capability", capV3(shift+0x10000), 0))
	b, _, _ = writeLayer(t, up, LayerOptions{Shift: shift, Upper: true})
	if _, m := readLayer(t, b); m["etc/ping"].pax["SCHILY.xattr.security.capability"] != "" {
		t.Error("a capability of another range kept")
	}
}

// Outside an upper, a 0/0 device is a device: left out, no whiteout.
func TestWriteLayerTreeHasNoWhiteouts(t *testing.T) {
	dir := t.TempDir()
	must(t, unix.Mknod(filepath.Join(dir, "gone"), unix.S_IFCHR, 0))
	must(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	must(t, unix.Setxattr(filepath.Join(dir, "d"), "trusted.overlay.opaque", []byte("y"), 0))
	b, st, err := writeLayer(t, dir, LayerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if names, _ := readLayer(t, b); strings.Join(names, " ") != "d/" || st.Devices != 1 {
		t.Errorf("members %q, stats %+v", names, st)
	}
}

// What an image layer cannot say is refused, naming the file as the
// machine sees it: a directory overlayfs redirected, holes beyond the cap.
func TestWriteLayerRefuses(t *testing.T) {
	dir := t.TempDir()
	must(t, os.Mkdir(filepath.Join(dir, "moved"), 0o755))
	must(t, unix.Setxattr(filepath.Join(dir, "moved"), "trusted.overlay.redirect", []byte("/orig"), 0))
	if _, _, err := writeLayer(t, dir, LayerOptions{Upper: true, Name: "web:"}); !errors.Is(err, ErrLayer) || !strings.Contains(err.Error(), "web:/moved") {
		t.Errorf("redirect: %v", err)
	}

	dir = t.TempDir()
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(t, err)
	must(t, f.Truncate(8<<20))
	f.Close()
	if _, _, err := writeLayer(t, dir, LayerOptions{MaxHoles: 1 << 20, Name: "web:"}); !errors.Is(err, ErrLayer) || !strings.Contains(err.Error(), "web:/sparse is a sparse file") {
		t.Errorf("holes: %v", err)
	}
	// Within the cap, holes are zeros.
	b, _, err := writeLayer(t, dir, LayerOptions{MaxHoles: 16 << 20})
	if _, m := readLayer(t, b); err != nil || m["sparse"].data != string(make([]byte, 8<<20)) {
		t.Errorf("holes within the cap: %v", err)
	}
}

// A directory that is another mount is written, its contents are not
// (as tar --one-file-system); names with newlines survive.
func TestWriteLayerStaysOnItsMount(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	must(t, os.Mkdir(mnt, 0o755))
	must(t, unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"))
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	must(t, os.WriteFile(filepath.Join(mnt, "host-secret"), []byte("x"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "a\nb"), []byte("nl"), 0o644))
	b, st, err := writeLayer(t, dir, LayerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names, m := readLayer(t, b)
	if strings.Join(names, "|") != "a\nb|mnt/" || st.Mounts != 1 || m["a\nb"].data != "nl" {
		t.Errorf("members %q, stats %+v", names, st)
	}
}

// The top of the tree is not followed when it is a link.
func TestWriteLayerTopIsNoLink(t *testing.T) {
	dir := t.TempDir()
	must(t, os.Symlink("/etc", filepath.Join(dir, "link")))
	if _, _, err := writeLayer(t, filepath.Join(dir, "link"), LayerOptions{}); err == nil {
		t.Error("followed a link at the top")
	}
}
