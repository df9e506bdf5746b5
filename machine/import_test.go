package machine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/image/imagetest"
	"golang.org/x/sys/unix"
)

// realManager is a test Manager that runs real programs: GNU tar.
func realManager(t *testing.T) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("imports and exports run as root")
	}
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	m.Runner = host.ExecRunner{}
	return m
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "a.tar")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// noStaging fails when the store holds anything but machine trees and
// lock files: a staging tree left by a failed import.
func noStaging(t *testing.T, m *Manager) {
	t.Helper()
	ents, _ := os.ReadDir(m.Store())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") && !strings.HasSuffix(e.Name(), ".lck") {
			t.Errorf("left in the store: %s", e.Name())
		}
	}
}

func TestImportWithGNUTar(t *testing.T) {
	m := realManager(t)
	ctx := context.Background()
	if err := m.Import(ctx, "web", writeFile(t, imagetest.RootArchive(t, true)), nil); err != nil {
		t.Fatal(err)
	}
	root := m.Dir("web")
	for _, p := range []string{"etc/os-release", "usr/bin/su", "bin", "run/initctl", "dev"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s not imported: %v", p, err)
		}
	}
	for _, p := range []string{"dev/null", "usr/sda"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("device node %s imported: %v", p, err)
		}
	}
	var su, su2 unix.Stat_t
	unix.Lstat(filepath.Join(root, "usr/bin/su"), &su)
	unix.Lstat(filepath.Join(root, "usr/bin/su2"), &su2)
	if su.Ino != su2.Ino || su.Mode&0o7777 != 0o4755 {
		t.Errorf("su: inode %d and %d, mode %o", su.Ino, su2.Ino, su.Mode)
	}
	if l, _ := os.Readlink(filepath.Join(root, "bin")); l != "usr/bin" {
		t.Errorf("bin -> %q", l)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(root, "etc/os-release"), "user.nsbox", buf); err == nil && string(buf[:n]) != "kept" {
		t.Errorf("user.nsbox = %q", buf[:n])
	} else if err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Errorf("user.nsbox: %v", err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(root, "etc/os-release"), "trusted.overlay.redirect", buf); err == nil {
		t.Error("trusted.overlay.redirect imported")
	}

	// From stdin, and compressed with zstd.
	if err := m.Import(ctx, "piped", "-", bytes.NewReader(imagetest.RootArchive(t, false))); err != nil {
		t.Errorf("from stdin: %v", err)
	}
	if _, err := exec.LookPath("zstd"); err == nil {
		plain := writeFile(t, imagetest.RootArchive(t, false))
		if out, err := exec.Command("zstd", "-q", plain, "-o", plain+".zst").CombinedOutput(); err != nil {
			t.Fatalf("zstd: %v %s", err, out)
		}
		if err := m.Import(ctx, "zstd", plain+".zst", nil); err != nil {
			t.Errorf("zstd: %v", err)
		}
		if _, err := os.Stat(filepath.Join(m.Dir("zstd"), "usr/bin/su2")); err != nil {
			t.Errorf("zstd import: %v", err)
		}
	}
	noStaging(t, m)
}

// The archives of TestCopyArchive that GNU tar reads otherwise than Go
// really do fool this GNU tar when it reads them itself, as Import did:
// so the test below shows the re-encoding matters.
func TestSmugglingFoolsGNUTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs tar, as root")
	}
	for _, tc := range []struct {
		archive []byte
		hidden  string
	}{{imagetest.Smuggling(t), "etc/smuggled"}, {imagetest.Keyword(t), "etc/hidden"}} {
		var seen []string
		tr := tar.NewReader(bytes.NewReader(tc.archive))
		for h, err := tr.Next(); err == nil; h, err = tr.Next() {
			seen = append(seen, h.Name)
		}
		dir := t.TempDir()
		out, err := exec.Command("tar", "--extract", "--file="+writeFile(t, tc.archive), "--directory="+dir).CombinedOutput()
		if _, serr := os.Lstat(filepath.Join(dir, tc.hidden)); serr != nil {
			t.Errorf("GNU tar did not extract %s, which Go's reader does not see (Go saw %q): %v %s", tc.hidden, seen, err, out)
		}
	}
}

func TestImportExtractsWhatWasChecked(t *testing.T) {
	m := realManager(t)
	ctx := context.Background()
	if err := m.Import(ctx, "smuggled", writeFile(t, imagetest.Smuggling(t)), nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"etc/smuggled", "usr/disk"} {
		if _, err := os.Lstat(filepath.Join(m.Dir("smuggled"), p)); !os.IsNotExist(err) {
			t.Errorf("smuggled %s extracted: %v", p, err)
		}
	}
	// Go reads the carrier's size as the three blocks that GNU tar took
	// for headers.
	if fi, err := os.Stat(filepath.Join(m.Dir("smuggled"), "carrier")); err != nil || fi.Size() != 3*512 {
		t.Errorf("carrier as Go read it: %v %v", fi, err)
	}
	if err := m.Import(ctx, "imagetest.Keyword", writeFile(t, imagetest.Keyword(t)), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(m.Dir("imagetest.Keyword"), "etc/hidden")); !os.IsNotExist(err) {
		t.Errorf("etc/hidden extracted: %v", err)
	}
}

func TestImportRefusesHostileArchives(t *testing.T) {
	m := realManager(t)
	ctx := context.Background()
	outside := t.TempDir()

	var throughLink imagetest.RawTar
	throughLink.Header("etc/", tar.TypeDir, "", false)
	throughLink.Header("etc/os-release", tar.TypeReg, "ID=debian\n", false)
	b := throughLink.Header("x", tar.TypeSymlink, "", false)
	copy(b[157:], outside)
	imagetest.Checksum(b)
	throughLink.Header("x/evil", tar.TypeReg, "evil", false)

	var sparse imagetest.RawTar
	sparse.Header("etc/", tar.TypeDir, "", false)
	sparse.Header("etc/os-release", tar.TypeReg, "ID=debian\n", false)
	sparse.Pax("GNU.sparse.name", "etc/passwd")
	sparse.Header("harmless", tar.TypeReg, "x", false)

	for _, tc := range []struct {
		what    string
		archive []byte
	}{
		{"a write through its own symlink", throughLink.End()},
		{"a GNU sparse name", sparse.End()},
	} {
		err := m.Import(ctx, "evil", writeFile(t, tc.archive), nil)
		if !errors.Is(err, image.ErrUnsafeArchive) {
			t.Errorf("%s: %v", tc.what, err)
		}
		if _, err := os.Lstat(m.Dir("evil")); !os.IsNotExist(err) {
			t.Errorf("%s: machine made: %v", tc.what, err)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Errorf("%s: written outside: %v", tc.what, ents)
		}
		noStaging(t, m)
	}
	if err := m.Import(ctx, "evil", t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("a directory: %v", err)
	}
}

// An import on a small file system stops at what it may take, says what
// the archive needs, and leaves nothing.
func TestImportCapsWhatItWrites(t *testing.T) {
	m := realManager(t)
	if err := unix.Mount("tmpfs", m.RootDir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(m.RootDir, unix.MNT_DETACH) })
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	w := tar.NewWriter(z)
	w.WriteHeader(&tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Size: 10, Mode: 0o644})
	w.Write([]byte("ID=debian\n"))
	for _, name := range []string{"a", "b", "c"} {
		w.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: 8 << 20, Mode: 0o644})
		w.Write(make([]byte, 8<<20))
	}
	w.Close()
	z.Close()
	err := m.Import(context.Background(), "big", writeFile(t, buf.Bytes()), nil)
	if !errors.Is(err, image.ErrNoSpace) || !strings.Contains(err.Error(), "archive needs 25.2 MB, only ") || !strings.Contains(err.Error(), " free on "+m.RootDir) {
		t.Fatalf("%v", err)
	}
	noStaging(t, m)
	var st unix.Statfs_t
	unix.Statfs(m.RootDir, &st)
	if used := (st.Blocks - st.Bfree) * uint64(st.Bsize); used > 1<<20 {
		t.Errorf("%d bytes left on the file system", used)
	}
}

// An archive on a pipe named by /dev/fd (bash's <(zcat ...)) is read as
// it comes; one behind a host user's link is refused.
func TestImportFromPipeAndLinks(t *testing.T) {
	m := realManager(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.Write(imagetest.RootArchive(t, true))
		w.Close()
	}()
	if err := m.Import(context.Background(), "piped", "/dev/fd/"+strconv.Itoa(int(r.Fd())), nil); err != nil {
		t.Errorf("from a pipe: %v", err)
	}
	link := filepath.Join(t.TempDir(), "web.tar")
	os.Symlink(writeFile(t, imagetest.RootArchive(t, false)), link)
	os.Lchown(link, 65534, 65534)
	if err := m.Import(context.Background(), "linked", link, nil); err == nil || !strings.Contains(err.Error(), "symbolic link of uid 65534") {
		t.Errorf("through a user's link: %v", err)
	}
	tty, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err == nil {
		defer tty.Close()
		if err := m.Import(context.Background(), "tty", "-", tty); err == nil || !strings.Contains(err.Error(), "terminal") {
			t.Errorf("from a terminal: %v", err)
		}
	}
}

// A staging tree in a case-folding directory compares names byte for byte
// once NoCasefold has run: "X" is not "x", as the checker assumes.
func TestNoCasefold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,casefold"); err != nil {
		t.Skipf("tmpfs without casefold: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	parent := filepath.Join(dir, "store")
	os.Mkdir(parent, 0o700)
	f, _ := os.Open(parent)
	flags, _ := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|image.FSCasefold))
	f.Close()
	if err != nil {
		t.Skipf("chattr +F: %v", err)
	}
	tree := filepath.Join(parent, "tree")
	os.Mkdir(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "x"), nil, 0o644)
	if _, err := os.Stat(filepath.Join(tree, "X")); err != nil {
		t.Skip("the new directory does not fold case")
	}
	os.Remove(filepath.Join(tree, "x"))
	if err := image.NoCasefold(tree); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "x"), nil, 0o644)
	if _, err := os.Stat(filepath.Join(tree, "X")); !os.IsNotExist(err) {
		t.Errorf("X is still x: %v", err)
	}
}

// Ctrl-C while the archive comes slowly on a pipe, plain or through zstd:
// the import stops at once, and nothing of it is left.
func TestImportInterrupted(t *testing.T) {
	m := realManager(t)
	var a bytes.Buffer
	tw := tar.NewWriter(&a)
	tw.WriteHeader(&tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Size: 10, Mode: 0o644})
	tw.Write([]byte("ID=debian\n"))
	big := make([]byte, 1<<20)
	rand.Read(big)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: int64(len(big)), Mode: 0o644})
	tw.Write(big)
	streams := map[string][]byte{"plain": a.Bytes()}
	if _, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command("zstd", "-q", "-c")
		cmd.Stdin = bytes.NewReader(a.Bytes())
		z, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		streams["zstd"] = z
	}
	for what, stream := range streams {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		// GNU tar reads records of 10 KiB, zstd blocks of 128 KiB: more than
		// that comes, then nothing.
		go w.Write(stream[:len(stream)*6/10])
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Import(ctx, "slow", "-", r) }()
		poll(t, what+": extraction started", func() bool {
			dirs, _ := filepath.Glob(filepath.Join(m.Store(), ".#slow.*", "etc", "os-release"))
			return len(dirs) > 0
		})
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s: interrupted import: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: import did not stop", what)
		}
		noStaging(t, m)
		if _, err := os.Lstat(m.Dir("slow")); !os.IsNotExist(err) {
			t.Errorf("%s: machine made: %v", what, err)
		}
		r.Close()
		w.Close()
	}
}

// poll waits up to 10 seconds for ok.
func poll(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}
