package image

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/image/imagetest"
	"golang.org/x/sys/unix"
)

// Where the archive has a temporary name (no O_TMPFILE), a swap of that
// name is never written through, and is found before the export is said
// done.
func TestExportFileNamed(t *testing.T) {
	dir := t.TempDir()
	v := imagetest.Victim(t)
	e, err := CreateExport(dir, "web.tar", false)
	if err != nil {
		t.Fatal(err)
	}
	if e.tmp == "" || !strings.HasPrefix(e.tmp, ".#web.tar.") {
		t.Fatalf("temporary name %q", e.tmp)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, e.tmp)); fi.Mode().Perm() != 0o600 {
		t.Errorf("half-written export has mode %v", fi.Mode())
	}
	os.Remove(filepath.Join(dir, e.tmp))
	os.Symlink(v, filepath.Join(dir, e.tmp))
	e.File.WriteString("ARCHIVE")
	if err := e.Publish(); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("publish after a swap: %v", err)
	}
	e.Abort()
	imagetest.Untouched(t, v)

	// Given up: the temporary name goes.
	e, err = CreateExport(dir, "web.tar", false)
	if err != nil {
		t.Fatal(err)
	}
	e.File.WriteString("ARC")
	e.Abort()
	if l := imagetest.Leftovers(dir); len(l) != 0 {
		t.Errorf("abort left %q", l)
	}

	// Unswapped, it is published whole.
	os.Remove(filepath.Join(dir, "web.tar"))
	e, _ = CreateExport(dir, "web.tar", false)
	e.File.WriteString("ARCHIVE")
	if err := e.Publish(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "web.tar")); string(b) != "ARCHIVE" || len(imagetest.Leftovers(dir)) != 0 {
		t.Errorf("published %q, left %q", b, imagetest.Leftovers(dir))
	}
}

// A symbolic link of a host user's on the way to the destination is not
// followed (root would write where the user chose); root's are, and so are
// procfs's.
func TestOpenFollowingRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to own and chown links")
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o755)
	os.WriteFile(filepath.Join(real, "a.tar"), []byte("x"), 0o644)
	os.Symlink("real", filepath.Join(dir, "roots"))
	os.Symlink(real, filepath.Join(dir, "users"))
	os.Lchown(filepath.Join(dir, "users"), 65534, 65534)
	os.Symlink("../users", filepath.Join(real, "loop"))
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{filepath.Join(dir, "real"), true},
		{filepath.Join(dir, "roots"), true},
		{filepath.Join(dir, "roots", "..", "real", "a.tar"), true},
		{filepath.Join(dir, "users"), false},
		{filepath.Join(dir, "users", "a.tar"), false},
		{filepath.Join(dir, "roots", "loop", "a.tar"), false},
		{filepath.Join(dir, "missing", "a.tar"), false},
	} {
		f, err := openFollowingRoot(tc.path, unix.O_RDONLY)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.path, err)
		}
		if err == nil {
			f.Close()
		}
	}
	if _, err := CreateExport(filepath.Join(dir, "users"), "web.tar", true); err == nil || !strings.Contains(err.Error(), "symbolic link of uid 65534") {
		t.Errorf("export through a user's link: %v", err)
	}
	if l, _ := os.ReadDir(real); len(l) != 2 {
		t.Errorf("written through a user's link: %v", l)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	f, err := openFollowingRoot("/dev/fd/"+strconv.Itoa(int(r.Fd())), unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		t.Fatalf("/dev/fd: %v", err)
	}
	f.Close()
}
