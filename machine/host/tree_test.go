package host

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountsUnder(t *testing.T) {
	info := `22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:5 / /srv/.#web.123/proc rw - proc proc rw
31 22 0:6 / /srv/.#web.123/sys rw - sysfs sys rw
32 30 0:7 / /srv/.#web.123/proc/sys/fs/binfmt_misc rw - binfmt_misc x rw
33 22 0:8 / /srv/.#web.1234/proc rw - proc proc rw
34 22 0:9 / /srv/with\040space rw - tmpfs t rw
`
	got := mountsUnder(bufio.NewScanner(strings.NewReader(info)), "/srv/.#web.123")
	want := []string{"/srv/.#web.123/proc/sys/fs/binfmt_misc", "/srv/.#web.123/proc", "/srv/.#web.123/sys"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if got := mountsUnder(bufio.NewScanner(strings.NewReader(info)), "/srv/with space"); len(got) != 1 {
		t.Errorf("escaped mount point: %q", got)
	}
}

func TestRemoveTreeDoesNotFollowLinks(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o644)
	root := filepath.Join(dir, "machine")
	os.MkdirAll(filepath.Join(root, "etc", "deep"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "deep", "f"), []byte("x"), 0o644)
	os.Symlink(outside, filepath.Join(root, "link"))
	os.Symlink(outside+"/keep", filepath.Join(root, "etc", "filelink"))
	os.Link(filepath.Join(outside, "keep"), filepath.Join(root, "hardlink"))
	if err := RemoveTree(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(root); !os.IsNotExist(err) {
		t.Errorf("root still there: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "x" {
		t.Errorf("file outside changed: %q %v", b, err)
	}
	if err := RemoveTree(root); err != nil {
		t.Errorf("removing a missing tree: %v", err)
	}
}

func TestMountRoot(t *testing.T) {
	mountRoot := func(dir string) bool {
		t.Helper()
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		root, known := fdMountRoot(fd)
		if !known {
			t.Skip("this kernel does not report mount roots")
		}
		return root
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	if mountRoot(plain) {
		t.Error("a plain directory taken for a mount")
	}
	if !mountRoot("/proc") {
		t.Error("/proc not seen as a mount")
	}
}

// A mount made on a directory between its stat and its removal is not
// entered: removeAt checks what it opened (root only: it mounts).
func TestRemoveAtRefusesAMountMadeMeanwhile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(sub, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("nsbox-test", sub, "tmpfs", 0, ""); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(sub, unix.MNT_DETACH)
	keep := filepath.Join(sub, "keep")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	parent, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(parent)
	if err := removeAt(parent, "sub", &st, st.Dev); !errors.Is(err, ErrMounted) {
		t.Errorf("removeAt into a fresh mount: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file on the mount was removed: %v", err)
	}
}
