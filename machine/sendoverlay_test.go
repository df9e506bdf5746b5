package machine

import (
	"archive/tar"
	"syscall"

	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/klauspost/compress/zstd"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/remote"
)

// overlayPair is two hosts' managers and an image both can make machines
// from; a has overlay machine "o1" over the image's base, with changes of
// every kind an upper holds.
func overlayPair(t *testing.T) (a, b *Manager, ref string) {
	t.Helper()
	a, b = imageManager(t), imageManager(t)
	reg := ocitest.NewRegistry(t)
	ref = reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t)))
	ctx := context.Background()
	if _, err := a.Create(ctx, "o1", CreateOptions{From: ref}); err != nil {
		t.Fatal(err)
	}
	if rec := a.storageOf("o1"); rec.Kind != storage.Overlay {
		t.Skipf("no overlay here: %+v", rec)
	}
	err := a.withTree(ctx, "o1", func() error {
		tree := a.Tree("o1")
		// A new file, a deleted one (a whiteout), a directory made
		// anew (opaque), and a file capability of the machine's root.
		if err := os.WriteFile(filepath.Join(tree, "etc/motd"), []byte("changed on a\n"), 0o644); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(tree, "usr/bin/gone")); err != nil {
			return err
		}
		if err := os.RemoveAll(filepath.Join(tree, "var/cache")); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(tree, "var/cache"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tree, "var/cache/new"), []byte("new"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := a.storageOf("o1")
	// What host root wrote is the machine root's, as writeTree makes it.
	for _, p := range []string{"etc/motd", "var/cache", "var/cache/new"} {
		os.Lchown(filepath.Join(a.layout("o1").Upper(), p), rec.UIDBase, rec.UIDBase)
	}
	capFile := filepath.Join(a.layout("o1").Upper(), "usr/bin/ping")
	if err := os.WriteFile(capFile, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(capFile, rec.UIDBase, rec.UIDBase)
	if err := unix.Lsetxattr(capFile, "security.capability", capV3(rec.UIDBase), 0); err != nil {
		t.Fatal(err)
	}
	return a, b, ref
}

// capV3 is a file capability (cap_net_raw, permitted and effective) of the
// root at host id root.
func capV3(root int) []byte {
	v := make([]byte, 24)
	binary.LittleEndian.PutUint32(v, 0x03000000|1) // revision 3, effective
	binary.LittleEndian.PutUint32(v[4:], 1<<13)    // permitted: cap_net_raw
	binary.LittleEndian.PutUint32(v[20:], uint32(root))
	return v
}

// An overlay machine goes as its base version, once, and its upper: the
// second machine on that base sends its upper alone, and both arrive as
// overlay machines over the one received base, with what their uppers
// held (whiteouts, opaque directories, capabilities of their roots).
func TestSendOverlayCarriesTheBaseOnce(t *testing.T) {
	a, b, ref := overlayPair(t)
	ctx := context.Background()
	s1, r1, serr, rerr := sendTo(t, a, b, "o1", "c1")
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if s1.Mode != remote.ModeBase || r1.Mode != remote.ModeBase || s1.BaseBytes == 0 || s1.BaseBytes != r1.BaseBytes || s1.Bytes != r1.Bytes {
		t.Fatalf("first send: sent %+v, received %+v", s1, r1)
	}
	ra, rb := a.storageOf("o1"), b.storageOf("c1")
	if rb.Kind != storage.Overlay || rb.Base != ra.Base || rb.Version != ra.Version || rb.UIDBase == 0 {
		t.Fatalf("the received machine's storage: %+v (sent %+v)", rb, ra)
	}
	ia, _ := a.Bases().VersionInfo(ra.Base, ra.Version)
	ib, _ := b.Bases().VersionInfo(rb.Base, rb.Version)
	if ia.ID == "" || ia.ID != ib.ID {
		t.Errorf("base IDs: here %q, there %q", ia.ID, ib.ID)
	}
	checkReceivedOverlay(t, b, "c1")

	if _, err := a.Create(ctx, "o2", CreateOptions{From: ref}); err != nil {
		t.Fatal(err)
	}
	s2, _, serr, rerr := sendTo(t, a, b, "o2", "c2")
	if serr != nil || rerr != nil {
		t.Fatalf("second send: %v; receive: %v", serr, rerr)
	}
	if s2.Mode != remote.ModeUpper || s2.BaseBytes != 0 || s2.Bytes >= s1.BaseBytes {
		t.Errorf("second send on the same base: %+v (the first: %+v)", s2, s1)
	}
	if r := b.storageOf("c2"); r.Base != rb.Base || r.Version != rb.Version {
		t.Errorf("c2 over %+v, c1 over %+v", r, rb)
	}
	if got := b.Bases().Versions(rb.Base); len(got) != 1 {
		t.Errorf("the base was stored again: %+v", got)
	}
	if cur, _ := b.Bases().List(); len(cur) != 0 {
		t.Errorf("a received version is the base of its key there: %+v", cur)
	}
	noStaging(t, b)
	if left := stagedBases(b); len(left) != 0 {
		t.Errorf("left in b's base cache: %v", left)
	}
}

// checkReceivedOverlay checks what overlayPair changed in o1, in machine
// name of m.
func checkReceivedOverlay(t *testing.T, m *Manager, name string) {
	t.Helper()
	ctx := context.Background()
	rec := m.storageOf(name)
	err := m.withTree(ctx, name, func() error {
		tree := m.Tree(name)
		for p, want := range map[string]string{"etc/motd": "changed on a\n", "var/cache/new": "new", "etc/hostname": name + "\n"} {
			if b, err := os.ReadFile(filepath.Join(tree, p)); err != nil || string(b) != want {
				t.Errorf("%s: %s: %q %v", name, p, b, err)
			}
		}
		for _, p := range []string{"usr/bin/gone", "var/cache/old"} {
			if _, err := os.Lstat(filepath.Join(tree, p)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s is there again: %v", name, p, err)
			}
		}
		if _, err := os.Stat(filepath.Join(tree, "usr/bin/app")); err != nil {
			t.Errorf("%s: the base's files: %v", name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	upper := m.layout(name).Upper()
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "usr/bin/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("%s: usr/bin/gone is not a whiteout in the upper: %+v %v", name, st, err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(upper, "var/cache"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("%s: var/cache is not opaque: %q %v", name, buf[:max(n, 0)], err)
	}
	fi, err := os.Lstat(filepath.Join(upper, "etc/motd"))
	if err != nil || fileOwner(fi) != [2]int{rec.UIDBase, rec.UIDBase} {
		t.Errorf("%s: etc/motd is not its root's (%d): %v", name, rec.UIDBase, err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(upper, "usr/bin/ping"), "security.capability", buf); err != nil || n != 24 || string(buf[:n]) != string(capV3(rec.UIDBase)) {
		t.Errorf("%s: usr/bin/ping's capability is not its root's: %x %v", name, buf[:max(n, 0)], err)
	}
}

// A send of an overlay machine cut short after its base leaves nothing
// there: no machine, no base version, no staging tree.
func TestSendOverlayCutShortLeavesNoBase(t *testing.T) {
	a, _, _ := overlayPair(t)
	ctx := context.Background()
	// streamTo sends o1 to a new host through w (which wraps the pipe),
	// and returns what the receiver said and its manager.
	streamTo := func(wrap func(io.WriteCloser) io.Writer) (*Manager, error) {
		b := imageManager(t)
		out, err := a.PrepareSend(ctx, "o1", SendOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		toW, fromR, done := receiving(b, "c1", nil)
		_, _ = out.Stream(ctx, wrap(toW), fromR, nil)
		toW.Close()
		return b, (<-done).err
	}
	var whole countWriter
	if _, err := streamTo(func(w io.WriteCloser) io.Writer { whole.w = w; return &whole }); err != nil {
		t.Fatalf("a whole send: %v", err)
	}
	// Cut just before the end: the base went whole, the upper did not.
	b, err := streamTo(func(w io.WriteCloser) io.Writer { return &cutWriter{w: w, left: whole.n - 40} })
	if err == nil {
		t.Fatal("a receive cut short succeeded")
	}
	if b.exists("c1") {
		t.Error("a machine of a cut send")
	}
	if infos, _ := b.Bases().List(); len(infos) != 0 || len(b.Bases().KeptOnly()) != 0 {
		t.Errorf("a base of a cut send is kept: %+v %+v", infos, b.Bases().KeptOnly())
	}
	noStaging(t, b)
	if left := stagedBases(b); len(left) != 0 {
		t.Errorf("left in the base cache: %v", left)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// cutWriter passes left bytes, then closes its pipe as a broken connection.
type cutWriter struct {
	w    io.WriteCloser
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		n, _ := c.w.Write(p[:c.left])
		c.left = 0
		c.w.Close()
		return n, io.ErrClosedPipe
	}
	n, err := c.w.Write(p)
	c.left -= int64(n)
	return n, err
}

// Two hosts that flattened the same image have the same base: a send
// between them is the upper alone from the first.
func TestSendOverlayOverAnImageBothPulled(t *testing.T) {
	a, b, ref := overlayPair(t)
	if _, err := b.Create(context.Background(), "local", CreateOptions{From: ref}); err != nil {
		t.Fatal(err)
	}
	s, _, serr, rerr := sendTo(t, a, b, "o1", "c1")
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if s.Mode != remote.ModeUpper || s.BaseBytes != 0 {
		t.Errorf("a send to a host that pulled the image too: %+v", s)
	}
	checkReceivedOverlay(t, b, "c1")
}

// pauseWriter passes the offer line, then stops at the first frame of the
// streams until resume is closed, after saying so on paused.
type pauseWriter struct {
	w       io.Writer
	writes  int
	paused  chan struct{}
	resume  chan struct{}
	stopped bool
}

func (p *pauseWriter) Write(b []byte) (int, error) {
	p.writes++
	if p.writes == 2 && !p.stopped {
		p.stopped = true
		close(p.paused)
		<-p.resume
	}
	return p.w.Write(b)
}

// While a receive reads a machine over a base version (a slow or stalled
// sender), the base's lock is free: a create of that base, a refresh, a
// prune or a cache remove on the receiving host does not wait for the
// network. The version is held all the same: prune keeps it, though no
// machine is over it yet.
func TestReceiveDoesNotHoldTheBaseLockWhileItReads(t *testing.T) {
	a, b, _ := overlayPair(t)
	ctx := context.Background()
	if _, _, serr, rerr := sendTo(t, a, b, "o1", "c1"); serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	rb := b.storageOf("c1")
	if err := b.Remove(ctx, "c1", false); err != nil {
		t.Fatal(err)
	}
	// A base of more than a frame's worth, that zstd cannot shrink.
	lower, err := a.lowerOf(a.storageOf("o1"))
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8<<20)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(lower, "usr/bin/big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{remote.ModeUpper, remote.ModeBase} {
		if mode == remote.ModeBase {
			// A receiver that has the version no more: it comes again.
			if err := b.Remove(ctx, "c-"+remote.ModeUpper, false); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Bases().Prune(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
		out, err := a.PrepareSend(ctx, "o1", SendOptions{})
		if err != nil {
			t.Fatal(err)
		}
		toW, fromR, done := receiving(b, "c-"+mode, nil)
		pw := &pauseWriter{w: toW, paused: make(chan struct{}), resume: make(chan struct{})}
		sent := make(chan error, 1)
		go func() {
			_, err := out.Stream(ctx, pw, fromR, nil)
			toW.Close()
			sent <- err
		}()
		<-pw.paused
		// The stream has not begun: the receiver waits for it.
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		unlock, err := b.Bases().Hold(tctx, rb.Base)
		cancel()
		if err != nil {
			t.Errorf("%s: the base's lock is held while the receive waits for the sender: %v", mode, err)
		} else {
			unlock()
		}
		if mode == remote.ModeBase {
			// Nor does the sender hold its base's lock while it sends the
			// base (which is larger than a frame: tar is at work).
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			unlock, err := a.Bases().Hold(tctx, rb.Base)
			cancel()
			if err != nil {
				t.Errorf("%s: the sender holds its base's lock while the receiver reads: %v", mode, err)
			} else {
				unlock()
			}
		}
		tctx, cancel = context.WithTimeout(ctx, 3*time.Second)
		gone, err := b.Bases().Prune(tctx, false)
		cancel()
		if err != nil || len(gone) != 0 {
			t.Errorf("%s: prune while a receive is over the version: %+v %v", mode, gone, err)
		}
		b.Bases().Leftovers(ctx, func(kind, path string, _ int64, _ func() error) {
			t.Errorf("%s: a leftover while a receive runs: %s %s", mode, kind, path)
		})
		close(pw.resume)
		if err := <-sent; err != nil {
			t.Errorf("%s: send: %v", mode, err)
		}
		out.Close()
		if r := <-done; r.err != nil || r.res.Mode != mode {
			t.Fatalf("%s: receive: %v (mode %s)", mode, r.err, r.res.Mode)
		}
		checkReceivedOverlay(t, b, "c-"+mode)
	}
}

// A machine may hold files whose names an image layer takes for
// whiteouts (".wh.NAME", ".wh..wh..opq"): any user of it can make one in
// a directory it can write. Sent as an upper, they would hide NAME, or the
// whole directory's base, on the receiving host: such a machine goes as
// its whole tree, and arrives as it is.
func TestSendOverlayWithWhiteoutNamesGoesWhole(t *testing.T) {
	a, b, _ := overlayPair(t)
	rec := a.storageOf("o1")
	upper := a.layout("o1").Upper()
	for _, p := range []string{"usr/bin/.wh.app", "usr/bin/.wh..wh..opq"} {
		if err := os.WriteFile(filepath.Join(upper, p), []byte("a user's file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Lchown(filepath.Join(upper, p), rec.UIDBase+1000, rec.UIDBase+1000)
	}
	s, _, serr, rerr := sendTo(t, a, b, "o1", "c1")
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if s.Mode != remote.ModeTree {
		t.Errorf("sent as %s", s.Mode)
	}
	err := b.withTree(context.Background(), "c1", func() error {
		for _, p := range []string{"usr/bin/app", "usr/bin/.wh.app", "usr/bin/.wh..wh..opq"} {
			if _, err := os.Lstat(filepath.Join(b.Tree("c1"), p)); err != nil {
				t.Errorf("c1: %s: %v", p, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A receive killed (SIGKILL) while it tried an overlay mount leaves the
// try's directory, maybe with the mount: prune unmounts and removes it,
// and leaves a try that is at work (its lock held).
func TestPruneTakesAKilledOverlayProbe(t *testing.T) {
	m := imageManager(t)
	ctx := context.Background()
	if err := m.probeOverlay(ctx); err != nil {
		t.Skipf("no overlay here: %v", err)
	}
	killed := filepath.Join(m.overlayDir(), ".#probe-1234")
	live := filepath.Join(m.overlayDir(), ".#probe-5678")
	for _, d := range []string{killed, live} {
		if err := os.MkdirAll(filepath.Join(d, "tree"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", filepath.Join(killed, "tree"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(killed, "tree"), unix.MNT_DETACH)
	l, err := host.LockFile(ctx, live+".lck", true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := m.Prune(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(killed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed probe is left: %v (mounts %v)", err, host.MountsUnder(killed))
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("a probe at work was taken: %v", err)
	}
}

// aclOf is an access ACL (xattr form) naming user uid and group gid.
func aclOf(uid, gid int) []byte {
	le := binary.LittleEndian
	v := make([]byte, 4)
	le.PutUint32(v, 2)
	for _, e := range [][3]uint32{{0x01, 6, 0xFFFFFFFF}, {0x02, 7, uint32(uid)}, {0x04, 4, 0xFFFFFFFF}, {0x08, 5, uint32(gid)}, {0x10, 7, 0xFFFFFFFF}, {0x20, 4, 0xFFFFFFFF}} {
		b := make([]byte, 8)
		le.PutUint16(b, uint16(e[0]))
		le.PutUint16(b[2:], uint16(e[1]))
		le.PutUint32(b[4:], e[2])
		v = append(v, b...)
	}
	return v
}

// ACLs go with an overlay machine, by their numeric ids as the machine
// sees them: of a file in its upper, and of a file of its base version
// (the base's stream), whatever names the hosts' own user databases give
// those ids.
func TestSendOverlayCarriesACLs(t *testing.T) {
	a, b, _ := overlayPair(t)
	ra := a.storageOf("o1")
	inUpper := filepath.Join(a.layout("o1").Upper(), "etc/motd")
	if err := unix.Lsetxattr(inUpper, "system.posix_acl_access", aclOf(ra.UIDBase+1000, ra.UIDBase+1001), 0); err != nil {
		t.Skipf("no ACLs here: %v", err)
	}
	lower, err := a.lowerOf(ra)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(lower, "usr/bin/app"), "system.posix_acl_access", aclOf(1000, 1001), 0); err != nil {
		t.Fatal(err)
	}
	if _, _, serr, rerr := sendTo(t, a, b, "o1", "c1"); serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	rb := b.storageOf("c1")
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(filepath.Join(b.layout("c1").Upper(), "etc/motd"), "system.posix_acl_access", buf)
	if want := aclOf(rb.UIDBase+1000, rb.UIDBase+1001); err != nil || !bytes.Equal(buf[:n], want) {
		t.Errorf("the upper's ACL: %x %v, want %x", buf[:max(n, 0)], err, want)
	}
	lb, err := b.lowerOf(rb)
	if err != nil {
		t.Fatal(err)
	}
	n, err = unix.Lgetxattr(filepath.Join(lb, "usr/bin/app"), "system.posix_acl_access", buf)
	if want := aclOf(1000, 1001); err != nil || !bytes.Equal(buf[:n], want) {
		t.Errorf("the base's ACL: %x %v, want %x", buf[:max(n, 0)], err, want)
	}
}

// A hostile sender's upper may name host ids outside the machine's range:
// owners, a file capability's root, ACL entries (another machine's range
// here, a host user's). The received upper holds the machine's own ids
// alone: those become its nobody (65534), a setuid bit goes with such an
// owner, and a capability of another root goes.
func TestReceivedUpperHoldsItsOwnIDsAlone(t *testing.T) {
	a, b, _ := overlayPair(t)
	if _, _, serr, rerr := sendTo(t, a, b, "o1", "c1"); serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	rec := b.storageOf("c1")
	info, err := b.Bases().VersionInfo(rec.Base, rec.Version)
	if err != nil {
		t.Fatal(err)
	}
	const foreign = 0x900000
	var raw bytes.Buffer
	z, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(z)
	hdrs := []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/suid", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: foreign, Gid: foreign, Size: 3},
		{Name: "./usr/bin/capped", Typeflag: tar.TypeReg, Mode: 0o755, Size: 3,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": string(capV3(foreign))}},
		{Name: "./usr/bin/acl", Typeflag: tar.TypeReg, Mode: 0o674, Size: 3, Uid: 1000,
			PAXRecords: map[string]string{"SCHILY.xattr.system.posix_acl_access": string(aclOf(foreign, 1001))}},
		{Name: "./usr/bin/mine", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1000, Gid: 1000, Size: 3},
	}
	for _, h := range hdrs {
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("x\n\n"))
		}
	}
	tw.Close()
	z.Close()
	offer := fmt.Sprintf(`{"storage":{"kind":"overlay","base":{"key":%q,"version":%q,"id":%q}}}`, info.Key, info.Version, info.ID)
	var out bytes.Buffer
	res, err := b.Receive(context.Background(), "hostile", stream(t, offer, raw.Bytes(), false, false), &out)
	if err != nil || res.Mode != remote.ModeUpper {
		t.Fatalf("receive: %+v %v", res, err)
	}
	hr := b.storageOf("hostile")
	upper := b.layout("hostile").Upper()
	buf := make([]byte, 256)
	filepath.Walk(upper, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		for _, id := range []uint32{st.Uid, st.Gid} {
			if int(id) < hr.UIDBase || int(id) >= hr.UIDBase+storage.RangeSize {
				t.Errorf("%s: owner %d:%d, outside the machine's range %d", p, st.Uid, st.Gid, hr.UIDBase)
				break
			}
		}
		if n, err := unix.Lgetxattr(p, "security.capability", buf); err == nil {
			t.Errorf("%s: a capability %x", p, buf[:n])
		}
		return nil
	})
	nobody := hr.UIDBase + 65534
	if fi, err := os.Lstat(filepath.Join(upper, "usr/bin/suid")); err != nil || fi.Mode()&os.ModeSetuid != 0 || fileOwner(fi) != [2]int{nobody, nobody} {
		t.Errorf("suid: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Lstat(filepath.Join(upper, "usr/bin/mine")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("a setuid file of the machine's own lost its bit: %v %v", fi.Mode(), err)
	}
	n, err := unix.Lgetxattr(filepath.Join(upper, "usr/bin/acl"), "system.posix_acl_access", buf)
	if want := aclOf(nobody, hr.UIDBase+1001); err != nil || !bytes.Equal(buf[:n], want) {
		t.Errorf("acl: %x %v, want %x", buf[:max(n, 0)], err, want)
	}
}

// A refresh on the receiving host while the upper comes (possible now
// that the receive does not hold the base's lock) makes the version it
// is over an earlier one: the machine is made over it all the same.
func TestReceiveWhileARefreshMovesTheVersion(t *testing.T) {
	a, b, ref := overlayPair(t)
	ctx := context.Background()
	// b flattened the same image: its current base has the version's ID.
	if _, err := b.Create(ctx, "local", CreateOptions{From: ref}); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, "local", false); err != nil {
		t.Fatal(err)
	}
	out, err := a.PrepareSend(ctx, "o1", SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	toW, fromR, done := receiving(b, "c1", nil)
	pw := &pauseWriter{w: toW, paused: make(chan struct{}), resume: make(chan struct{})}
	sent := make(chan error, 1)
	go func() {
		_, err := out.Stream(ctx, pw, fromR, nil)
		toW.Close()
		sent <- err
	}()
	<-pw.paused
	// What a refresh does (install): the current version moves to the
	// versions kept (it is held), and a new one takes its place.
	bc := b.Bases()
	cur, err := bc.List()
	if err != nil || len(cur) != 1 {
		t.Fatalf("b's bases: %+v %v", cur, err)
	}
	key, dir := cur[0].Key, filepath.Dir(cur[0].Root)
	unlock, err := bc.Hold(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(bc.Dir, ".#old-"+key)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Rename(dir, old))
	// The new version's root is not there yet: the old path leads
	// nowhere (a mount of it would fail, or mount the new version).
	must(os.MkdirAll(filepath.Join(dir, "versions"), 0o700))
	must(os.Rename(old, filepath.Join(dir, "versions", cur[0].Version)))
	unlock()
	close(pw.resume)
	if err := <-sent; err != nil {
		t.Errorf("send: %v", err)
	}
	if r := <-done; r.err != nil || r.res.Mode != remote.ModeUpper {
		t.Fatalf("receive: %v (mode %s)", r.err, r.res.Mode)
	}
	if r := b.storageOf("c1"); r.Version != cur[0].Version {
		t.Errorf("c1 over %s, want %s", r.Version, cur[0].Version)
	}
	checkReceivedOverlay(t, b, "c1")
}

// While a receive reads a machine's upper (for as long as the network
// takes), the upper's directory is named by the machine's storage record,
// so that prune, which takes the staging tree of a receive killed there,
// takes its upper with it: without the record, the upper (all that came)
// was left for good.
func TestReceiveRecordsItsUpperBeforeItComes(t *testing.T) {
	a, b, _ := overlayPair(t)
	ctx := context.Background()
	if _, _, serr, rerr := sendTo(t, a, b, "o1", "c1"); serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	out, err := a.PrepareSend(ctx, "o1", SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	toW, fromR, done := receiving(b, "c2", nil)
	pw := &pauseWriter{w: toW, paused: make(chan struct{}), resume: make(chan struct{})}
	go func() {
		out.Stream(ctx, pw, fromR, nil)
		toW.Close()
	}()
	<-pw.paused
	// The receiver is in the upper's stream once its upper is there.
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Lstat(b.layout("c2").Upper()); err != nil && time.Now().Before(deadline); _, err = os.Lstat(b.layout("c2").Upper()) {
		time.Sleep(20 * time.Millisecond)
	}
	if rec := b.storageOf("c2"); rec.Tree != b.Tree("c2") || rec.Kind != storage.Overlay {
		t.Errorf("c2's upper is being filled, but its record is %+v", rec)
	}
	close(pw.resume)
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
}
