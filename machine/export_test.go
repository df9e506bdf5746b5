package machine

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// hostileDir is tar as Export runs it, in a destination directory owned
// by a host user who, while tar runs, replaces every temporary entry
// there with a link to a file they want root to overwrite. tar writes
// where GNU tar would: --file=PATH opened by name (following links), or
// --file=- on stdout.
type hostileDir struct {
	dir, victim string
	swapped     []string
	fail        error // returned after writing half, as a cancelled tar
}

func (h *hostileDir) Run(ctx context.Context, c *host.Cmd) error {
	ents, _ := os.ReadDir(h.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") {
			p := filepath.Join(h.dir, e.Name())
			os.Remove(p)
			os.Symlink(h.victim, p)
			h.swapped = append(h.swapped, e.Name())
		}
	}
	data := []byte("ARCHIVE")
	if h.fail != nil {
		data = data[:3]
	}
	var err error
	for _, a := range c.Args {
		if f, ok := strings.CutPrefix(a, "--file="); ok && f != "-" {
			err = os.WriteFile(f, data, 0o644)
			if err == nil {
				os.Chmod(f, 0o644)
			}
			return errors.Join(err, h.fail)
		}
	}
	_, err = c.Stdout.Write(data)
	return errors.Join(err, h.fail)
}

// victim is a file of another user's that root must not change.
func victim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte("root:secret\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func untouched(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if err != nil || string(b) != "root:secret\n" || fi.Mode().Perm() != 0o640 {
		t.Errorf("%s was changed: %q, %v, %v", p, b, fi.Mode(), err)
	}
}

// leftovers lists the temporary entries in dir.
func leftovers(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestExportInAHostileDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("export checks root first")
	}
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	dir := t.TempDir()
	v, v2 := victim(t), victim(t)
	h := &hostileDir{dir: dir, victim: v}
	m.Runner = h
	// The final name is a link too: it is replaced, not written through.
	final := filepath.Join(dir, "web.tar")
	os.Symlink(v2, final)
	if err := m.Export(context.Background(), "web", final); err != nil {
		t.Fatal(err)
	}
	untouched(t, v)
	untouched(t, v2)
	fi, err := os.Lstat(final)
	if b, _ := os.ReadFile(final); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || string(b) != "ARCHIVE" {
		t.Errorf("export: %v %q %v", fi.Mode(), b, err)
	}
	if l := leftovers(dir); len(l) != 0 {
		t.Errorf("left: %q", l)
	}

	// Interrupted: nothing is published, nothing left.
	h.fail = context.Canceled
	os.Remove(final)
	if err := m.Export(context.Background(), "web", final); !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted export: %v", err)
	}
	if _, err := os.Lstat(final); !os.IsNotExist(err) {
		t.Errorf("interrupted export published: %v", err)
	}
	if l := leftovers(dir); len(l) != 0 {
		t.Errorf("interrupted export left %q", l)
	}
	untouched(t, v)
}

// Where the archive has a temporary name (no O_TMPFILE), a swap of that
// name is never written through, and is found before the export is said
// done.
func TestExportFileNamed(t *testing.T) {
	dir := t.TempDir()
	v := victim(t)
	e, err := createExport(dir, "web.tar", false)
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
	untouched(t, v)

	// Given up: the temporary name goes.
	e, err = createExport(dir, "web.tar", false)
	if err != nil {
		t.Fatal(err)
	}
	e.File.WriteString("ARC")
	e.Abort()
	if l := leftovers(dir); len(l) != 0 {
		t.Errorf("abort left %q", l)
	}

	// Unswapped, it is published whole.
	os.Remove(filepath.Join(dir, "web.tar"))
	e, _ = createExport(dir, "web.tar", false)
	e.File.WriteString("ARCHIVE")
	if err := e.Publish(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "web.tar")); string(b) != "ARCHIVE" || len(leftovers(dir)) != 0 {
		t.Errorf("published %q, left %q", b, leftovers(dir))
	}
}

func TestExportImportRoundTrip(t *testing.T) {
	m := realManager(t)
	mkMachine(t, m, "web")
	root := m.Dir("web")
	os.WriteFile(filepath.Join(root, "usr/su"), []byte("su"), 0o755)
	unix.Chmod(filepath.Join(root, "usr/su"), 0o4755)
	os.Link(filepath.Join(root, "usr/su"), filepath.Join(root, "usr/su2"))
	os.Symlink("/etc/os-release", filepath.Join(root, "usr/release"))
	unix.Mkfifo(filepath.Join(root, "usr/fifo"), 0o600)
	long := filepath.Join(root, "usr", strings.Repeat("d", 120), strings.Repeat("f", 120))
	os.MkdirAll(filepath.Dir(long), 0o755)
	os.WriteFile(long, []byte("long"), 0o644)
	os.Symlink(strings.Repeat("../", 60)+"etc/os-release", filepath.Join(root, "usr/longlink"))
	unix.Setxattr(filepath.Join(root, "usr/su"), "user.nsbox", []byte("kept"), 0)
	os.Mkdir(filepath.Join(root, "dev"), 0o755)
	if err := unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, file := range []string{"web.tar", "web.tar.gz"} {
		file = filepath.Join(dir, file)
		if err := m.Export(context.Background(), "web", file); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(file); err != nil || fi.Mode() != 0o600 {
			t.Errorf("%s: %v %v", file, fi.Mode(), err)
		}
		if l := leftovers(dir); len(l) != 0 {
			t.Errorf("left %q", l)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "web.tar"))
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for h, err := tr.Next(); err == nil; h, err = tr.Next() {
		names = append(names, h.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "./etc/os-release") {
		t.Errorf("archive holds %q", names)
	}
	if err := m.Import(context.Background(), "copy", filepath.Join(dir, "web.tar.gz"), nil); err != nil {
		t.Fatal(err)
	}
	copyRoot := m.Dir("copy")
	var a, c unix.Stat_t
	unix.Lstat(filepath.Join(copyRoot, "usr/su"), &a)
	unix.Lstat(filepath.Join(copyRoot, "usr/su2"), &c)
	if a.Ino != c.Ino || a.Mode&0o7777 != 0o4755 {
		t.Errorf("su after the round trip: %d %d %o", a.Ino, c.Ino, a.Mode)
	}
	if fi, err := os.Lstat(filepath.Join(copyRoot, "usr/fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(copyRoot, "usr/release")); l != "/etc/os-release" {
		t.Errorf("symlink: %q", l)
	}
	if b, err := os.ReadFile(strings.Replace(long, root, copyRoot, 1)); err != nil || string(b) != "long" {
		t.Errorf("long name: %q %v", b, err)
	}
	if l, _ := os.Readlink(filepath.Join(copyRoot, "usr/longlink")); l != strings.Repeat("../", 60)+"etc/os-release" {
		t.Errorf("long symlink: %q", l)
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(copyRoot, "usr/su"), "user.nsbox", buf); err == nil && string(buf[:n]) != "kept" || err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Errorf("xattr: %q %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(copyRoot, "dev/null")); !os.IsNotExist(err) {
		t.Errorf("dev/null imported: %v", err)
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
	if _, err := createExport(filepath.Join(dir, "users"), "web.tar", true); err == nil || !strings.Contains(err.Error(), "symbolic link of uid 65534") {
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
