package bootstrap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"

	"golang.org/x/sys/unix"
)

// loopBtrfs mounts a new btrfs file system of 256 MiB for the test and
// returns its mount point. It skips the test where that cannot be made:
// not root, no mkfs.btrfs, no loop devices.
func loopBtrfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a loop btrfs needs root")
	}
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs (btrfs-progs)")
	}
	if _, err := exec.LookPath("btrfs"); err != nil {
		t.Skip("no btrfs (btrfs-progs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("truncate", "-s", "256M", img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v: %s", err, out)
	}
	if out, err := exec.Command("mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount a loop btrfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// baseInCache makes base key in cache as a bootstrap leaves it: a
// subvolume root with a file, and its base.json.
func baseInCache(t *testing.T, c *BaseCache, key string) string {
	t.Helper()
	dir := filepath.Join(c.Dir, key)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "btrfs", "subvolume", "create", filepath.Join(dir, "root"))
	writeFile(t, filepath.Join(dir, "root/etc/os-release"), "ID=debian\n")
	writeFile(t, filepath.Join(dir, "root/usr/big"), strings.Repeat("base bytes ", 200000))
	writeFile(t, filepath.Join(dir, "base.json"), `{"key":"`+key+`","created":"2026-11-30T10:00:00Z"}`)
	return filepath.Join(dir, "root")
}

// TestBtrfsSendReceive sends a base's read-only parent whole and a
// machine over it incrementally between two btrfs file systems, through
// the checks a receiver runs, and removes what it made as prune would.
func TestBtrfsSendReceive(t *testing.T) {
	a, b := loopBtrfs(t), loopBtrfs(t)
	ctx := context.Background()
	r := host.ExecRunner{}
	ca := &BaseCache{Dir: filepath.Join(a, "bases"), Runner: r}
	cb := &BaseCache{Dir: filepath.Join(b, "bases"), Runner: r}
	root := baseInCache(t, ca, "k")

	// The sender's parent: made once, read-only, a snapshot of the root.
	parent, pinfo, release, err := ca.SendParent(ctx, "k", "20261130T100000Z")
	if err != nil {
		t.Fatal(err)
	}
	release()
	rootInfo, err := host.Subvolume(root)
	if err != nil {
		t.Fatal(err)
	}
	if parent != filepath.Join(a, "bases/k/root.ro") || !pinfo.ReadOnly || pinfo.Parent != rootInfo.UUID || pinfo.UUID == rootInfo.UUID {
		t.Fatalf("parent %s: %+v (root %+v)", parent, pinfo, rootInfo)
	}
	again, info2, release, err := ca.SendParent(ctx, "k", "20261130T100000Z")
	if err != nil {
		t.Fatal(err)
	}
	release()
	if again != parent || info2.UUID != pinfo.UUID {
		t.Fatalf("a second SendParent made another: %s %+v", again, info2)
	}

	// The base goes whole into the receiver's staging directory, which
	// becomes the base's directory: a read-only subvolume cannot move
	// to another directory (EROFS), only be renamed in its own.
	if err := os.MkdirAll(cb.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(cb.Dir, ".#k.1")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := SendSubvolume(ctx, r, parent, "", &stream); err != nil {
		t.Fatal(err)
	}
	fullBytes := stream.Len()
	chk := &SendStreamCheck{Name: "root.ro", Max: 1 << 30}
	got, ginfo, err := ReceiveSubvolume(ctx, r, &stream, stage, chk)
	if err != nil {
		t.Fatal(err)
	}
	if ginfo.Received != SendUUID(pinfo) || !ginfo.ReadOnly || chk.Self != pinfo.UUID {
		t.Fatalf("received %s: %+v, stream's UUID %s, sent %+v", got, ginfo, chk.Self, pinfo)
	}
	// Kept as the receiver's version of the base, as the overlay send
	// stores one: the received subvolume is its root.
	if err := os.Rename(got, filepath.Join(stage, "root")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(stage, filepath.Join(cb.Dir, "k")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cb.Dir, "k/base.json"), `{"key":"k","created":"2026-11-30T10:00:00Z"}`)
	v, releaseV, ok, err := cb.ReceivedVersion(ctx, "k", SendUUID(pinfo))
	if err != nil || !ok || v.Version != "20261130T100000Z" {
		t.Fatalf("ReceivedVersion: %+v %v %v", v, ok, err)
	}
	releaseV()
	if _, _, ok, _ := cb.ReceivedVersion(ctx, "k", rootInfo.UUID); ok {
		t.Fatal("ReceivedVersion found the root's UUID, which was never sent")
	}
	// The receiver's version is itself a parent, for a send onwards.
	if p, _, release, err := cb.SendParent(ctx, "k", "20261130T100000Z"); err != nil || p != filepath.Join(cb.Dir, "k/root") {
		t.Fatalf("SendParent of a received version: %s %v", p, err)
	} else {
		release()
	}

	stage = filepath.Join(b, "stage")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	// A machine: a writable snapshot of the base with its own bytes.
	m := filepath.Join(a, "m")
	run(t, "btrfs", "subvolume", "snapshot", root, m)
	writeFile(t, filepath.Join(m, "etc/hostname"), "m\n")
	writeFile(t, filepath.Join(m, "home/own"), strings.Repeat("own ", 1000))
	ro := filepath.Join(a, ".m.ro")
	if err := host.SnapshotReadOnly(m, ro); err != nil {
		t.Fatal(err)
	}
	stream.Reset()
	if err := SendSubvolume(ctx, r, ro, parent, &stream); err != nil {
		t.Fatal(err)
	}
	if stream.Len() > fullBytes/10 {
		t.Errorf("the incremental stream is %d bytes, the base's %d", stream.Len(), fullBytes)
	}
	chk = &SendStreamCheck{Name: ".m.ro", Parent: SendUUID(pinfo), ParentRoot: filepath.Join(cb.Dir, "k/root"), Max: 1 << 30}
	got, ginfo, err = ReceiveSubvolume(ctx, r, bytes.NewReader(stream.Bytes()), stage, chk)
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"etc/hostname": "m\n", "home/own": strings.Repeat("own ", 1000), "etc/os-release": "ID=debian\n"} {
		if b, err := os.ReadFile(filepath.Join(got, f)); err != nil || string(b) != want {
			t.Errorf("%s: %.40q %v", f, b, err)
		}
	}
	if !ginfo.ReadOnly {
		t.Error("the received machine is writable")
	}
	// The machine's tree here: a writable snapshot of what came.
	if err := CopyTree(ctx, r, got, filepath.Join(b, "m")); err != nil {
		t.Fatal(err)
	}
	if mi, err := host.Subvolume(filepath.Join(b, "m")); err != nil || mi.ReadOnly || !mi.Received.IsZero() {
		t.Errorf("the machine's tree: %+v %v", mi, err)
	}
	writeFile(t, filepath.Join(b, "m/etc/hostname"), "n\n")

	// A read-only subvolume goes with RemoveTree (where unlink fails).
	if err := host.RemoveTree(stage); err != nil {
		t.Fatal(err)
	}
	if err := host.DeleteSubvolume(ro); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ro); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is still there: %v", ro, err)
	}
	// Prune takes the kept version with its parent.
	if err := ca.dropBase("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(ca.Dir, "k")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("base k is still there: %v", err)
	}
	if ents, _ := os.ReadDir(ca.Dir); len(ents) > 1 {
		t.Errorf("left in the cache: %v", ents)
	}
}

// TestBtrfsReceiveLeavesNothing cuts streams short, feeds a refused one
// and one that would fill the file system: each leaves the staging
// directory empty.
func TestBtrfsReceiveLeavesNothing(t *testing.T) {
	a := loopBtrfs(t)
	ctx := context.Background()
	r := host.ExecRunner{}
	src := filepath.Join(a, "src")
	run(t, "btrfs", "subvolume", "create", src)
	writeFile(t, filepath.Join(src, "etc/os-release"), "ID=debian\n")
	writeFile(t, filepath.Join(src, "big"), strings.Repeat("x", 8<<20))
	ro := filepath.Join(a, "src.ro")
	if err := host.SnapshotReadOnly(src, ro); err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := SendSubvolume(ctx, r, ro, "", &stream); err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(a, "stage")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	var st unixStatfs
	free := st.free(t, a)
	cases := []struct {
		name string
		in   io.Reader
		chk  SendStreamCheck
		want error
	}{
		{"cut short", bytes.NewReader(stream.Bytes()[:stream.Len()/2]), SendStreamCheck{Name: "src.ro"}, io.ErrUnexpectedEOF},
		{"cut after a command", bytes.NewReader(stream.Bytes()[:lastCommand(stream.Bytes())]), SendStreamCheck{Name: "src.ro"}, ErrSendStream},
		{"another name", bytes.NewReader(stream.Bytes()), SendStreamCheck{Name: "x"}, ErrSendStream},
		{"over its cap", bytes.NewReader(stream.Bytes()), SendStreamCheck{Name: "src.ro", Max: 1 << 20}, ErrStreamTooLarge},
		{"into the reserve", bytes.NewReader(stream.Bytes()), SendStreamCheck{Name: "src.ro", Reserve: free + 1<<30}, ErrStreamTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			chk := tc.chk
			_, _, err := ReceiveSubvolume(ctx, r, tc.in, stage, &chk)
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if ents, _ := os.ReadDir(stage); len(ents) > 0 {
				t.Errorf("left %v", ents)
			}
		})
	}
}

type unixStatfs struct{}

type syscallStatfs = unix.Statfs_t

var statfs = unix.Statfs

func (unixStatfs) free(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscallStatfs
	if err := statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// lastCommand is the offset of the last command of a send stream (its
// end command).
func lastCommand(b []byte) int {
	off, last := streamHeaderLen, 0
	for off+cmdHeaderLen <= len(b) {
		last = off
		off += cmdHeaderLen + int(binary.LittleEndian.Uint32(b[off:]))
	}
	return last
}
