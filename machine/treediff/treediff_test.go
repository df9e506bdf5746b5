package treediff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const shift = 0x50000

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, device nodes and trusted attributes are set")
	}
}

func run(t *testing.T, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

func tree(t *testing.T, dir string, sh int) Tree {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return Tree{FD: fd, Shift: sh}
}

// lines is the report as the text output words it: "A /p", "M /p (note)".
func lines(es []Entry) []string {
	var out []string
	for _, e := range es {
		l := e.Change.Letter() + " " + e.Path
		if n := e.Note(); n != "" {
			l += " (" + n + ")"
		}
		out = append(out, l)
	}
	return out
}

func check(t *testing.T, got []Entry, want ...string) {
	t.Helper()
	g := lines(got)
	if !sort.StringsAreSorted(g) && !sort.SliceIsSorted(got, func(i, j int) bool { return got[i].Path < got[j].Path }) {
		t.Errorf("not sorted by path: %q", g)
	}
	if strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(want, "\n"))
	}
}

// base makes a small base tree owned by ids 0..65535.
func base(t *testing.T, dir string) {
	run(t, "mkdir -p "+dir+` && cd `+dir+` && mkdir -p etc/sub usr/bin var/www gone/deep
		echo hostname > etc/hostname; echo same > etc/same; echo aaaa > etc/content; echo x > etc/mode
		echo x > etc/owner; chown 33:33 etc/owner; echo x > etc/retimed; echo x > etc/typed
		ln -s ../usr/bin lib; ln -s old etc/link; mkdir etc/dir2file; echo y > etc/dir2file/child
		echo bin > usr/bin/tool; echo g > gone/deep/f; echo g2 > gone/file; echo w > var/www/index
		chown -R 33:33 var/www; touch -d @1000000000 etc/content`)
}

// machineCopy copies base to dir as a machine's tree in range sh
// (nspawn's chown), keeping times as cp -a does.
func machineCopy(t *testing.T, from, dir string, sh int) {
	run(t, "cp -a "+from+" "+dir)
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		return os.Lchown(p, int(st.Uid)+sh, int(st.Gid)+sh)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDiffOfACopy(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	b, m := filepath.Join(tmp, "base"), filepath.Join(tmp, "machine")
	base(t, b)
	machineCopy(t, b, m, shift)
	run(t, fmt.Sprintf(`cd %[1]s
		echo bbbb > etc/content; touch -d @1000000001 etc/content   # same size, new bytes, new time
		touch etc/retimed                                            # new time, same bytes
		chmod 4755 etc/mode
		chown %[2]d:%[3]d etc/owner                                  # 33:33 -> 33:34 in the machine
		rm etc/typed && ln -s /etc/passwd etc/typed                  # a file becomes a link to the host's
		rm -r etc/dir2file && echo f > etc/dir2file
		rm etc/link && ln -s new etc/link
		rm -r gone
		mkdir -p new/sub && echo 12345 > new/sub/a && ln new/sub/a new/sub/b && mkfifo new/fifo
		ln -s /etc escape
		chown -R %[4]d:%[4]d new escape etc/typed etc/dir2file etc/link
		echo hi > etc/added && chown %[4]d:%[4]d etc/added
		chmod 0700 .`, m, shift+33, shift+34, shift))

	// Attributes: a user's changed; a capability and an ACL the same as
	// the machine sees them (its range in them on disk).
	xattr := func(p, name string, v []byte) {
		if err := unix.Lsetxattr(p, name, v, 0); err != nil {
			t.Fatalf("set %s on %s: %v", name, p, err)
		}
	}
	le := func(xs ...uint32) []byte {
		var out []byte
		for _, x := range xs {
			out = append(out, byte(x), byte(x>>8), byte(x>>16), byte(x>>24))
		}
		return out
	}
	acl := func(uid uint32) []byte {
		// version 2; USER_OBJ rw, USER uid r, GROUP_OBJ r, MASK r, OTHER r
		return append(le(2), append(append(append(append(
			le(0x01|6<<16, 0xFFFFFFFF), le(0x02|4<<16, uid)...), le(0x04|4<<16, 0xFFFFFFFF)...), le(0x10|4<<16, 0xFFFFFFFF)...), le(0x20|4<<16, 0xFFFFFFFF)...)...)
	}
	xattr(b+"/etc/same", "user.note", []byte("1"))
	xattr(m+"/etc/same", "user.note", []byte("2"))
	xattr(b+"/usr/bin/tool", "security.capability", le(0x02000001, 1<<13, 0, 0, 0))
	xattr(m+"/usr/bin/tool", "security.capability", le(0x03000001, 1<<13, 0, 0, 0, shift))
	xattr(b+"/var/www/index", "system.posix_acl_access", acl(1000))
	xattr(m+"/var/www/index", "system.posix_acl_access", acl(shift+1000))

	got, sum, err := Diff(context.Background(), tree(t, b, 0), tree(t, m, shift), Options{})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got,
		"M / (mode 0755 -> 0700)",
		"A /escape",
		"A /etc/added",
		"M /etc/content (content)",
		"T /etc/dir2file (directory -> file)",
		"D /etc/dir2file/child",
		"M /etc/link (target)",
		"M /etc/mode (mode 0644 -> 4755)",
		"M /etc/owner (group 33 -> 34)",
		"M /etc/same (xattrs)",
		"T /etc/typed (file -> symlink)",
		"D /gone",
		"D /gone/deep",
		"D /gone/deep/f",
		"D /gone/file",
		"A /new",
		"A /new/fifo",
		"A /new/sub",
		"A /new/sub/a",
		"A /new/sub/b",
	)
	want := Summary{Added: 7, Modified: 6, Deleted: 5, TypeChanged: 2, AddedBytes: 6 + 3 + 2, ModifiedBytes: 5 + 2 + 2 + 5, DeletedBytes: 2 + 3 + 2 + 2}
	if sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	// The link to the host's /etc is reported, never followed.
	for _, e := range got {
		if e.Path == "/escape" && (e.Type != "symlink" || e.Target == nil || *e.Target != "/etc") {
			t.Errorf("/escape: %+v", e)
		}
		if e.Path == "/etc/owner" && (*e.UID != 33 || *e.OldGID != 33 || *e.GID != 34) {
			t.Errorf("/etc/owner: ids not as the machine sees them: %+v", e)
		}
	}

	// Limited to a path: what is under it.
	got, _, err = Diff(context.Background(), tree(t, b, 0), tree(t, m, shift), Options{Path: "/new/./sub/"})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, "A /new/sub", "A /new/sub/a", "A /new/sub/b")
	got, _, err = Diff(context.Background(), tree(t, b, 0), tree(t, m, shift), Options{Path: "gone/deep"})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, "D /gone/deep", "D /gone/deep/f")
	got, _, err = Diff(context.Background(), tree(t, b, 0), tree(t, m, shift), Options{Path: "/usr"})
	if err != nil || len(got) != 0 {
		t.Errorf("an unchanged path: %v %v", got, err)
	}
	for p, msg := range map[string]string{
		"/escape/passwd":  "/escape is a symbolic link to /etc in the machine",
		"/lib/tool":       "/lib is a symbolic link to ../usr/bin in the machine",
		"/etc/same/x":     "/etc/same is not a directory in the machine",
		"/nothing":        "no /nothing in the machine or its base",
		"/etc/nothing/x":  "no /etc/nothing/x in the machine or its base",
		"/../etc/../none": "no /none in the machine or its base",
	} {
		_, _, err := Diff(context.Background(), tree(t, b, 0), tree(t, m, shift), Options{Path: p})
		if !errors.Is(err, ErrPath) || !strings.Contains(err.Error(), msg) {
			t.Errorf("path %s: %v, want %q", p, err, msg)
		}
	}
}

// overlay mounts an overlay of upper over lower at merged, runs script
// there, and unmounts it.
func overlay(t *testing.T, lower, upper, work, merged, script string) {
	t.Helper()
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,metacopy=off,redirect_dir=off", lower, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("no overlayfs here: %v", err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	run(t, "cd "+merged+" && "+script)
}

func TestDiffOfAnOverlayUpper(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	lower, upper := filepath.Join(tmp, "lower"), filepath.Join(tmp, "upper")
	base(t, lower)
	overlay(t, lower, upper, filepath.Join(tmp, "work"), filepath.Join(tmp, "merged"), `
		echo bbbb > etc/content; touch -d @1000000001 etc/content
		touch etc/retimed                       # copied up, same bytes
		chmod 4755 etc/mode                     # copied up for its mode
		chown 33:34 etc/owner
		touch etc/sub/new && rm etc/sub/new     # etc/sub copied up, unchanged
		rm etc/same                             # a whiteout
		rm -r gone && mkdir gone && echo g2 > gone/file && touch -r `+lower+`/gone/file gone/file && echo n > gone/new  # opaque
		rm etc/typed && mkdir etc/typed
		ln usr/bin/tool usr/bin/tool2           # a hard link to a lower file
		echo hi > etc/added`)

	got, sum, err := Diff(context.Background(), tree(t, lower, 0), tree(t, upper, 0), Options{Overlay: true})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got,
		"A /etc/added",
		"M /etc/content (content)",
		"M /etc/mode (mode 0644 -> 4755)",
		"M /etc/owner (group 33 -> 34)",
		"D /etc/same",
		"T /etc/typed (file -> directory)",
		"D /gone/deep",
		"D /gone/deep/f",
		"A /gone/new",
		"A /usr/bin/tool2",
	)
	if sum.Deleted != 3 || sum.Added != 3 || sum.TypeChanged != 1 || sum.Modified != 3 {
		t.Errorf("summary %+v", sum)
	}
	got, _, err = Diff(context.Background(), tree(t, lower, 0), tree(t, upper, 0), Options{Overlay: true, Path: "/gone"})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, "D /gone/deep", "D /gone/deep/f", "A /gone/new")
	// A path the upper has nothing of is the lower's: checked there.
	got, _, err = Diff(context.Background(), tree(t, lower, 0), tree(t, upper, 0), Options{Overlay: true, Path: "/var/www/index"})
	if err != nil || len(got) != 0 {
		t.Errorf("an unchanged path: %v %v", got, err)
	}
	for p, msg := range map[string]string{
		"/var/www/nothing": "no /var/www/nothing in the machine or its base",
		"/lib/x":           "/lib is a symbolic link to ../usr/bin in the machine",
		"/etc/same/x":      "/etc/same is not a directory in the base",
	} {
		if _, _, err := Diff(context.Background(), tree(t, lower, 0), tree(t, upper, 0), Options{Overlay: true, Path: p}); !errors.Is(err, ErrPath) || !strings.Contains(err.Error(), msg) {
			t.Errorf("path %s: %v, want %q", p, err, msg)
		}
	}
}

// An upper as an idmapped overlay machine stores it: owned by the
// machine's range, whiteouts and opaque directories made by hand, and
// the attribute forms of both.
func TestDiffOfAShiftedUpper(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	lower, upper := filepath.Join(tmp, "lower"), filepath.Join(tmp, "upper")
	base(t, lower)
	run(t, fmt.Sprintf(`mkdir -p %[1]s/etc %[1]s/var/www %[1]s/gone && cd %[1]s
		cp -a %[2]s/etc/owner etc/owner && chown %[3]d:%[3]d etc/owner   # 33:33 as the machine sees it: unchanged
		cp -a %[2]s/etc/mode etc/mode && chown %[4]d:%[4]d etc/mode      # host root's: the machine sees nobody
		mknod etc/same c 0 0
		: > etc/hostname
		cp -a %[2]s/var/www/index var/www/index && chown %[3]d:%[3]d var/www/index
		chown -R %[5]d:%[5]d . && chown %[3]d:%[3]d etc/owner var/www var/www/index && chown 0:0 etc/mode`,
		upper, lower, shift+33, 0, shift))
	for _, x := range [][3]string{{"gone", "trusted.overlay.opaque", "y"}, {"etc/hostname", "trusted.overlay.whiteout", ""}} {
		if err := unix.Lsetxattr(filepath.Join(upper, x[0]), x[1], []byte(x[2]), 0); err != nil {
			t.Skipf("no trusted attributes here: %v", err)
		}
	}
	got, _, err := Diff(context.Background(), tree(t, lower, 0), tree(t, upper, shift), Options{Overlay: true})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got,
		"D /etc/hostname",
		"M /etc/mode (owner 0 -> 65534, group 0 -> 65534)",
		"D /etc/same",
		"D /gone/deep",
		"D /gone/deep/f",
		"D /gone/file",
	)
}

// Same size, another time: the bytes decide; large files are compared
// whole.
func TestContentComparedWhenTimesDiffer(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	b, m := filepath.Join(tmp, "base"), filepath.Join(tmp, "machine")
	run(t, "mkdir -p "+b+" && head -c 3000000 /dev/urandom > "+b+"/big && cp -a "+b+" "+m+
		" && cp "+b+"/big "+m+"/big && printf x | dd of="+m+"/big bs=1 seek=2999999 conv=notrunc status=none")
	got, _, err := Diff(context.Background(), tree(t, b, 0), tree(t, m, 0), Options{})
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, "M /big (content)")
	run(t, "cp "+b+"/big "+m+"/big")
	time.Sleep(10 * time.Millisecond)
	if got, _, err = Diff(context.Background(), tree(t, b, 0), tree(t, m, 0), Options{}); err != nil || len(got) != 0 {
		t.Errorf("same bytes, another time: %v %v", lines(got), err)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{"/": "/", "etc": "/etc", "/etc/../..": "/", "a//b/./": "/a/b"} {
		if got, err := CleanPath(in); err != nil || got != want {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a\x00b", "/" + strings.Repeat("x", 256), strings.Repeat("/x", 3000)} {
		if _, err := CleanPath(in); err == nil {
			t.Errorf("CleanPath(%.20q...) took it", in)
		}
	}
}

// A machine swaps a file it changed for a FIFO or a device node between
// the stat and the read: neither is opened (a FIFO would hang the read, a
// device would be the host's), the diff fails with one error.
func TestSwappedFileIsNotOpened(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(tmp, "f"), "abc")
	dir, err := unix.Open(tmp, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dir)
	for _, swap := range []func(p string) error{
		func(p string) error { return unix.Mkfifo(p, 0o644) },
		func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))) },
		func(p string) error { return os.Symlink("/etc/passwd", p) },
	} {
		p := filepath.Join(tmp, "f")
		os.Remove(p)
		write(p, "abc")
		var st unix.Stat_t
		if err := unix.Fstatat(dir, "f", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if err := swap(p); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			f, err := openFile(dir, "f", &st)
			if f != nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("a swapped entry was opened")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("openFile hung on a FIFO")
		}
	}
}
