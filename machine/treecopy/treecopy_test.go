package treecopy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const shift = 0x50000

// machineRoot makes a machine's tree in a temporary directory, owned by
// its range as nspawn leaves it, and returns it with its side.
func machineRoot(t *testing.T) (string, Side) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners are set")
	}
	root := filepath.Join(t.TempDir(), "machine")
	for _, d := range []string{"", "etc", "root", "tmp"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(filepath.Join(root, d), shift, shift); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return root, Side{FD: fd, InRoot: true, Shift: shift, Name: "m:"}
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	// os.FileMode keeps setuid apart from 0o4000: the raw bits.
	if err := unix.Chmod(p, uint32(mode)); err != nil {
		t.Fatal(err)
	}
}

func owner(t *testing.T, p string) (int, int) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return int(st.Uid), int(st.Gid)
}

func TestCopyInMapsOwnersAndKeepsAttributes(t *testing.T) {
	root, m := machineRoot(t)
	src := filepath.Join(t.TempDir(), "tree")
	write(t, src+"/a", "alpha", 0o640)
	write(t, src+"/sub/b", "beta", 0o4755)
	if err := os.Chown(src+"/sub/b", 1000, 1001); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(src+"/sub/b", 0o4755); err != nil { // chown cleared it
		t.Fatal(err)
	}
	if err := os.Link(src+"/a", src+"/sub/a-link"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", src+"/sub/l"); err != nil {
		t.Fatal(err)
	}
	// A sparse file: 64 MiB with 4 KiB of data at its end.
	f, err := os.Create(src + "/sparse")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 64<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_ = unix.Setxattr(src+"/a", "user.note", []byte("kept"), 0)
	old := time_(t, src+"/a")

	st, err := Copy(context.Background(), Host, src, m, "/root", Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := root + "/root/tree"
	if b, _ := os.ReadFile(got + "/sub/b"); string(b) != "beta" {
		t.Errorf("content %q", b)
	}
	if u, g := owner(t, got+"/a"); u != shift || g != shift {
		t.Errorf("host root's file is %d:%d in the machine, want its root %d", u, g, shift)
	}
	if u, g := owner(t, got+"/sub/b"); u != shift+1000 || g != shift+1001 {
		t.Errorf("uid 1000's file is %d:%d, want %d:%d", u, g, shift+1000, shift+1001)
	}
	if fi, _ := os.Stat(got + "/sub/b"); fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want setuid 0755", fi.Mode())
	}
	if fi, _ := os.Stat(got + "/a"); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", fi.Mode())
	}
	var a, l unix.Stat_t
	_ = unix.Stat(got+"/a", &a)
	_ = unix.Stat(got+"/sub/a-link", &l)
	if a.Ino != l.Ino {
		t.Error("the hard link became two files")
	}
	if target, _ := os.Readlink(got + "/sub/l"); target != "/etc/shadow" {
		t.Errorf("link to %q", target)
	}
	if u, _ := owner(t, got+"/sub/l"); u != shift {
		t.Errorf("link owned by %d", u)
	}
	var sp unix.Stat_t
	_ = unix.Stat(got+"/sparse", &sp)
	if sp.Size != 64<<20+3 || sp.Blocks*512 > 1<<20 {
		t.Errorf("sparse file: size %d, %d bytes allocated", sp.Size, sp.Blocks*512)
	}
	if v := make([]byte, 16); true {
		if n, err := unix.Getxattr(got+"/a", "user.note", v); err == nil && string(v[:n]) != "kept" {
			t.Errorf("xattr %q", v[:n])
		}
	}
	if now := time_(t, got+"/a"); now != old {
		t.Errorf("mtime %v, want %v", now, old)
	}
	if st.Files != 3 || st.Links != 1 || st.Dirs != 2 {
		t.Errorf("stats %+v", st)
	}
	leftovers(t, root)
}

func time_(t *testing.T, p string) unix.Timespec {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mtim
}

// leftovers fails on temporary entries a copy left.
func leftovers(t *testing.T, root string) {
	t.Helper()
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error {
		if strings.HasPrefix(filepath.Base(p), ".#nsbox-cp.") {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func TestCopyOutUnmapsAndDropsPrivilege(t *testing.T) {
	root, m := machineRoot(t)
	write(t, root+"/root/tool", "x", 0o755)
	if err := os.Chown(root+"/root/tool", shift, shift); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(root+"/root/tool", 0o6755); err != nil {
		t.Fatal(err)
	}
	write(t, root+"/root/alien", "y", 0o644) // host root's: outside the range
	if err := unix.Mknod(root+"/root/disk", unix.S_IFBLK|0o666, int(unix.Mkdev(8, 0))); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	st, err := Copy(context.Background(), m, "/root/tool", Host, dst, Options{FromMachine: true})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dst + "/tool"); fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("setuid kept out of the machine: %v", fi.Mode())
	}
	if u, _ := owner(t, dst+"/tool"); u != 0 || st.Stripped != 1 {
		t.Errorf("machine root's file is %d on the host (stripped %d)", u, st.Stripped)
	}
	if _, err := Copy(context.Background(), m, "/root/alien", Host, dst, Options{FromMachine: true}); err != nil {
		t.Fatal(err)
	}
	if u, _ := owner(t, dst+"/alien"); u != overflowID {
		t.Errorf("a file outside the machine's range came out as %d, want nobody", u)
	}
	_, err = Copy(context.Background(), m, "/root/disk", Host, dst, Options{FromMachine: true})
	if !errors.Is(err, ErrDevice) {
		t.Errorf("a device node out of a machine: %v", err)
	}
	if _, err := os.Lstat(dst + "/disk"); err == nil {
		t.Error("the device node was made")
	}
	leftovers(t, dst)
}

// TestLinksAMachinePlantedStayInside: paths in a machine resolve in its
// root, whatever links it planted; a copy never reads or writes the
// host's files through them.
func TestLinksAMachinePlantedStayInside(t *testing.T) {
	root, m := machineRoot(t)
	hostDir := t.TempDir()
	write(t, hostDir+"/secret", "host secret", 0o600)
	if err := os.Symlink(hostDir, root+"/root/up"); err != nil { // absolute: the host's path
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../"+hostDir, root+"/root/dots"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostDir+"/secret", root+"/root/x"); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for _, p := range []string{"/root/up/secret", "/root/dots/secret", "/../../../../" + hostDir + "/secret"} {
		if _, err := Copy(context.Background(), m, p, Host, out+"/got", Options{FromMachine: true}); !IsNotExist(err) {
			t.Errorf("copy of %s: %v (want no such file: inside the machine there is none)", p, err)
		}
	}
	// The link itself is copied, never what it points at.
	if _, err := Copy(context.Background(), m, "/root/x", Host, out+"/x", Options{FromMachine: true}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(out + "/x"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was followed: %v %v", fi, err)
	}
	// Writes through links land inside the machine.
	write(t, out+"/payload", "p", 0o644)
	for _, dst := range []string{"/root/up/", "/root/dots/", "/root/up/secret"} {
		_, _ = Copy(context.Background(), Host, out+"/payload", m, dst, Options{})
	}
	if b, _ := os.ReadFile(hostDir + "/secret"); string(b) != "host secret" {
		t.Errorf("the host's file was written through a machine's link: %q", b)
	}
	if ents, _ := os.ReadDir(hostDir); len(ents) != 1 {
		t.Errorf("the host's directory got %v", ents)
	}
	// A copy onto a link replaces the link in the machine, it does not
	// write where it points.
	if _, err := Copy(context.Background(), Host, out+"/payload", m, "/root/x", Options{}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(root + "/root/x"); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("the link is still there")
	}
	if b, _ := os.ReadFile(hostDir + "/secret"); string(b) != "host secret" {
		t.Errorf("the host's file was written: %q", b)
	}
}

func TestCopyErrorsAsCp(t *testing.T) {
	root, m := machineRoot(t)
	src := t.TempDir()
	write(t, src+"/d/f", "f", 0o644)
	write(t, root+"/etc/file", "x", 0o644)
	if err := os.Mkdir(root+"/etc/dir", 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, src+"/dir", "a file named like the machine's directory", 0o644)
	cases := []struct {
		src, dst string
		want     error
	}{
		{src + "/nope", "/root", unix.ENOENT},
		{src + "/d", "/etc/file", ErrDirOntoFile},
		{src + "/dir", "/etc", ErrFileOntoDir},
		{src + "/d/f", "/nope/x", unix.ENOENT},
		{src + "/d/f", "/etc/file/x", unix.ENOTDIR},
	}
	for _, c := range cases {
		_, err := Copy(context.Background(), Host, c.src, m, c.dst, Options{})
		if !errors.Is(err, c.want) {
			t.Errorf("%s -> %s: %v, want %v", c.src, c.dst, err, c.want)
		}
	}
	if b, _ := os.ReadFile(root + "/etc/file"); string(b) != "x" {
		t.Errorf("a failed copy changed the file: %q", b)
	}
	// Into itself, on one side.
	if _, err := Copy(context.Background(), m, "/etc", m, "/etc/dir", Options{}); !errors.Is(err, ErrIntoItself) {
		t.Errorf("a directory into itself: %v", err)
	}
	// The message names the path as cp does.
	_, err := Copy(context.Background(), Host, src+"/nope", m, "/root", Options{})
	if err == nil || !strings.Contains(err.Error(), "No such file or directory") || !strings.Contains(err.Error(), src+"/nope") {
		t.Errorf("message: %v", err)
	}
	leftovers(t, root)
}

func TestCopyOwnerAndMerge(t *testing.T) {
	root, m := machineRoot(t)
	src := t.TempDir()
	write(t, src+"/etc/new", "n", 0o644)
	write(t, root+"/etc/old", "o", 0o644)
	if _, err := Copy(context.Background(), Host, src+"/etc", m, "/", Options{Owner: &Owner{UID: 1000, GID: 100}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(root + "/etc/old"); string(b) != "o" {
		t.Error("merge lost a file")
	}
	if u, g := owner(t, root+"/etc/new"); u != shift+1000 || g != shift+100 {
		t.Errorf("--owner: %d:%d", u, g)
	}
}

func TestTarRoundTrip(t *testing.T) {
	root, m := machineRoot(t)
	write(t, root+"/root/t/a", "alpha", 0o600)
	if err := os.Chown(root+"/root/t/a", shift+33, shift+33); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(root+"/root/t/a", root+"/root/t/b"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", root+"/root/t/l"); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := WriteTar(context.Background(), m, "/root/t", &buf); err != nil {
		t.Fatal(err)
	}
	root2, m2 := machineRoot(t)
	m2.Shift = shift * 2
	if err := os.Chown(root2+"/tmp", shift*2, shift*2); err != nil {
		t.Fatal(err)
	}
	if _, err := ExtractTar(context.Background(), &buf, m2, "/tmp", Options{}); err != nil {
		t.Fatal(err)
	}
	if u, _ := owner(t, root2+"/tmp/t/a"); u != shift*2+33 {
		t.Errorf("www-data's file is %d in the second machine", u)
	}
	var a, b unix.Stat_t
	_ = unix.Stat(root2+"/tmp/t/a", &a)
	_ = unix.Stat(root2+"/tmp/t/b", &b)
	if a.Ino != b.Ino {
		t.Error("hard link lost")
	}
	if target, _ := os.Readlink(root2 + "/tmp/t/l"); target != "/etc/passwd" {
		t.Errorf("link %q", target)
	}
	leftovers(t, root2)
}

// TestTarStaysInside: members that climb out, or pass through a link the
// machine planted, are refused; nothing is written outside.
func TestTarStaysInside(t *testing.T) {
	root, m := machineRoot(t)
	hostDir := t.TempDir()
	if err := os.Symlink(hostDir, root+"/tmp/out"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"../escape", "out/escape", "a/../../escape"} {
		var buf bytes.Buffer
		tw := newTestTar(&buf, name)
		_ = tw
		_, err := ExtractTar(context.Background(), &buf, m, "/tmp", Options{})
		if err == nil {
			t.Errorf("member %q extracted", name)
		}
	}
	if ents, _ := os.ReadDir(hostDir); len(ents) != 0 {
		t.Errorf("written outside the machine: %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(root, "escape")); err == nil {
		t.Error("written above the destination")
	}
}

// newTestTar writes a stream with one regular file member named name.
func newTestTar(buf *bytes.Buffer, name string) *tar.Writer {
	tw := tar.NewWriter(buf)
	_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("x"))
	_ = tw.Close()
	return tw
}

func TestMapACLAndCapability(t *testing.T) {
	c := &copier{from: Host, to: Side{Shift: shift, InRoot: true}}
	acl := make([]byte, 4+3*8)
	le.PutUint32(acl, aclVersion)
	le.PutUint16(acl[4:], 0x01) // owner
	le.PutUint32(acl[8:], 0xFFFFFFFF)
	le.PutUint16(acl[12:], aclTagUser)
	le.PutUint32(acl[16:], 1000)
	le.PutUint16(acl[20:], aclTagGroup)
	le.PutUint32(acl[24:], 100)
	got := c.mapACL(acl)
	if le.Uint32(got[8:]) != 0xFFFFFFFF || le.Uint32(got[16:]) != shift+1000 || le.Uint32(got[24:]) != shift+100 {
		t.Errorf("mapped ACL %x", got)
	}
	v2 := make([]byte, capV2Size)
	le.PutUint32(v2, capRev2|1)
	v3 := c.mapCapability(v2)
	if len(v3) != capV3Size || le.Uint32(v3)&capRevMsk != capRev3 || le.Uint32(v3)&1 != 1 || le.Uint32(v3[capV2Size:]) != shift {
		t.Errorf("a host capability in the machine: %x", v3)
	}
	back := (&copier{from: Side{Shift: shift, InRoot: true}, to: Side{Shift: 2 * shift, InRoot: true}}).mapCapability(v3)
	if le.Uint32(back[capV2Size:]) != 2*shift {
		t.Errorf("a capability between machines: %x", back)
	}
}

// TestKernelFileSystemsAreRefused: a machine's root can bind kernel file
// systems into its tree; nsbox, as host root, reads and writes neither.
func TestKernelFileSystemsAreRefused(t *testing.T) {
	root, m := machineRoot(t)
	for _, d := range []string{"/root/k", "/root/cg"} {
		if err := os.Mkdir(root+d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for src, dst := range map[string]string{"/sys/kernel": root + "/root/k", "/sys/fs/cgroup/pids": root + "/root/cg"} {
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			t.Skipf("bind %s: %v", src, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(dst, unix.MNT_DETACH) })
	}
	out := t.TempDir()
	if _, err := Copy(context.Background(), m, "/root/k", Host, out+"/k", Options{FromMachine: true}); !errors.Is(err, ErrKernelFS) {
		t.Errorf("a copy out of sysfs: %v", err)
	}
	if _, err := Copy(context.Background(), m, "/root", Host, out+"/r", Options{FromMachine: true}); !errors.Is(err, ErrKernelFS) {
		t.Errorf("a copy of a tree with sysfs in it: %v", err)
	}
	write(t, out+"/x", "x", 0o644)
	if _, err := Copy(context.Background(), Host, out+"/x", m, "/root/cg/", Options{}); !errors.Is(err, ErrKernelFS) {
		t.Errorf("a copy into cgroupfs: %v", err)
	}
	if err := os.MkdirAll(out+"/cg/e2e-treecopy", 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), Host, out+"/cg", m, "/root", Options{}); !errors.Is(err, ErrKernelFS) {
		t.Errorf("a merge into cgroupfs: %v", err)
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/e2e-treecopy"); err == nil {
		_ = os.Remove("/sys/fs/cgroup/pids/e2e-treecopy")
		t.Error("a cgroup made in the host's cgroupfs")
	}
}

// TestNodesAreSetByDescriptor: a FIFO is made with its owner and mode
// (setuid too, into a machine) through its own descriptor.
func TestNodesAreSetByDescriptor(t *testing.T) {
	root, m := machineRoot(t)
	src := t.TempDir()
	if err := unix.Mkfifo(src+"/p", 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(src+"/p", 0o4640); err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), Host, src+"/p", m, "/root/p", Options{}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(root+"/root/p", &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o7777 != 0o4640 || st.Uid != shift {
		t.Errorf("the FIFO: mode %o, owner %d", st.Mode, st.Uid)
	}
}

// A host tree streamed for a machine keeps what a copy into a machine
// keeps: setuid bits and device nodes; the same tree streamed as one out
// of a machine drops the bit and refuses the device.
func TestWriteHostTarKeepsWhatGoesIn(t *testing.T) {
	dir := t.TempDir()
	write(t, dir+"/t/suid", "x", 0o4755)
	var buf bytes.Buffer
	if _, err := WriteHostTar(context.Background(), dir+"/t", &buf); err != nil {
		t.Fatal(err)
	}
	modes := map[string]int64{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		modes[h.Name] = h.Mode
	}
	if modes["t/suid"]&0o4000 == 0 {
		t.Errorf("the setuid bit was dropped for a machine: %o", modes["t/suid"])
	}
	buf.Reset()
	WriteTar(context.Background(), Host, dir+"/t", &buf)
	tr = tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == "t/suid" && h.Mode&0o4000 != 0 {
			t.Error("a stream out of a machine kept a setuid bit")
		}
	}
	if os.Geteuid() != 0 {
		return
	}
	if err := unix.Mknod(dir+"/t/null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("mknod: %v", err)
	}
	buf.Reset()
	if _, err := WriteHostTar(context.Background(), dir+"/t", &buf); err != nil {
		t.Fatalf("a device node for a machine: %v", err)
	}
	found := false
	tr = tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		found = found || h.Name == "t/null" && h.Typeflag == tar.TypeChar && h.Devmajor == 1 && h.Devminor == 3
	}
	if !found {
		t.Error("the device node is not in the stream")
	}
	if _, err := WriteTar(context.Background(), Host, dir+"/t", &bytes.Buffer{}); !errors.Is(err, ErrDevice) {
		t.Errorf("a device out of a machine: %v", err)
	}
}
