package machine

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image/imagetest"
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

func TestExportInAHostileDirectory(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	dir := t.TempDir()
	v, v2 := imagetest.Victim(t), imagetest.Victim(t)
	h := &hostileDir{dir: dir, victim: v}
	m.Runner = h
	// The final name is a link too: it is replaced, not written through.
	final := filepath.Join(dir, "web.tar")
	os.Symlink(v2, final)
	if err := m.Export(context.Background(), "web", final); err != nil {
		t.Fatal(err)
	}
	imagetest.Untouched(t, v)
	imagetest.Untouched(t, v2)
	fi, err := os.Lstat(final)
	if b, _ := os.ReadFile(final); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || string(b) != "ARCHIVE" {
		t.Errorf("export: %v %q %v", fi.Mode(), b, err)
	}
	if l := imagetest.Leftovers(dir); len(l) != 0 {
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
	if l := imagetest.Leftovers(dir); len(l) != 0 {
		t.Errorf("interrupted export left %q", l)
	}
	imagetest.Untouched(t, v)
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
		if l := imagetest.Leftovers(dir); len(l) != 0 {
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
