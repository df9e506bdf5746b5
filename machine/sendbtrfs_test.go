package machine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/oci/ocitest"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/remote"
)

// btrfsManager is imageManager with its root and cache directories on a
// loop btrfs file system of its own (skipped where one cannot be made:
// not root, no btrfs-progs, no loop devices).
func btrfsManager(t *testing.T) *Manager {
	t.Helper()
	m := imageManager(t)
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs (btrfs-progs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	for _, c := range [][]string{{"truncate", "-s", "300M", img}, {"mkfs.btrfs", "-q", img}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount a loop btrfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	m.RootDir, m.CacheDir = filepath.Join(mnt, "srv"), filepath.Join(mnt, "cache")
	os.MkdirAll(m.RootDir, 0o700)
	os.MkdirAll(m.CacheDir, 0o700)
	return m
}

// A btrfs machine goes as btrfs send streams: the first with its base's
// read-only snapshot whole, the second machine on that base as its own
// changes alone; both arrive as writable snapshots of the received base,
// personalised, with nothing read-only or staged left on either side.
func TestSendBtrfsCarriesTheBaseOnce(t *testing.T) {
	a, b := btrfsManager(t), btrfsManager(t)
	ctx := context.Background()
	reg := ocitest.NewRegistry(t)
	// Bytes zstd cannot shrink, so that the base's weight shows.
	noise := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(noise)
	big := ocitest.File("usr/lib/big", string(noise))
	ref := reg.Push(t, "app:1", ocitest.Image(t, hostPlatform, v1.Config{}, baseLayer(t), ocitest.Layer(t, ocitest.Dir("usr/lib/"), big)))
	for _, n := range []string{"b1", "b2"} {
		if _, err := a.Create(ctx, n, CreateOptions{From: ref, Storage: storage.Btrfs}); err != nil {
			t.Fatal(err)
		}
		if rec := a.storageOf(n); rec.Kind != storage.Btrfs || rec.Base == "" {
			t.Fatalf("%s: %+v", n, rec)
		}
		if err := os.WriteFile(filepath.Join(a.Tree(n), "etc/motd"), []byte("own of "+n+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s1, r1, serr, rerr := sendTo(t, a, b, "b1", "c1")
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	if s1.Mode != remote.ModeBtrfsBase || r1.Mode != s1.Mode || s1.BaseBytes < 1<<20 || s1.BaseBytes != r1.BaseBytes || s1.Bytes != r1.Bytes {
		t.Fatalf("first send: sent %+v, received %+v", s1, r1)
	}
	s2, r2, serr, rerr := sendTo(t, a, b, "b2", "c2")
	if serr != nil || rerr != nil {
		t.Fatalf("second send: %v; receive: %v", serr, rerr)
	}
	if s2.Mode != remote.ModeBtrfs || r2.Mode != s2.Mode || s2.BaseBytes != 0 || s2.Bytes > s1.BaseBytes/20 {
		t.Errorf("second send on the same base: %+v (the first: %+v)", s2, s1)
	}
	ra := a.storageOf("b1")
	for _, n := range []string{"c1", "c2"} {
		rb := b.storageOf(n)
		if rb.Kind != storage.Btrfs || rb.Base != ra.Base || rb.Version != ra.Version {
			t.Errorf("%s: %+v (sent %+v)", n, rb, ra)
		}
		info, err := host.Subvolume(b.Tree(n))
		if err != nil || info.ReadOnly {
			t.Errorf("%s's tree: %+v %v", n, info, err)
		}
		for p, want := range map[string]string{"etc/hostname": n + "\n", "etc/motd": "own of b" + n[1:] + "\n", "etc/os-release": "ID=debian\n"} {
			if got, err := os.ReadFile(filepath.Join(b.Tree(n), p)); err != nil || string(got) != want {
				t.Errorf("%s: %s: %q %v", n, p, got, err)
			}
		}
	}
	// The received base is the version both are snapshots of: its root
	// the received read-only subvolume.
	v, err := b.Bases().VersionInfo(ra.Base, ra.Version)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := host.Subvolume(v.Root); err != nil || !info.ReadOnly || info.Received.IsZero() {
		t.Errorf("the received base: %+v %v", info, err)
	}
	noBtrfsStaging(t, a)
	noBtrfsStaging(t, b)

	// An interrupted send of a third leaves nothing on either side.
	if _, err := a.Create(ctx, "b3", CreateOptions{From: ref, Storage: storage.Btrfs}); err != nil {
		t.Fatal(err)
	}
	toW, fromR, done := receiving(b, "c3", func(r io.Reader) io.Reader { return &cutReader{r: r, left: 2000} })
	_, serr = a.Send(ctx, "b3", toW, fromR, SendOptions{})
	toW.Close()
	if rerr := (<-done).err; rerr == nil || serr == nil {
		t.Fatalf("a cut send: send %v, receive %v", serr, rerr)
	}
	if _, err := os.Lstat(b.Tree("c3")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("c3 is there: %v", err)
	}
	noBtrfsStaging(t, a)
	noBtrfsStaging(t, b)
	if _, err := os.Lstat(a.Tree("b3")); err != nil {
		t.Errorf("the sent machine: %v", err)
	}
}

// cutReader ends after left bytes, as a dropped connection does.
type cutReader struct {
	r    io.Reader
	left int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	return n, err
}

// noBtrfsStaging fails when the store or the base cache has a staging tree
// (.#*) or a read-only snapshot of a machine left.
func noBtrfsStaging(t *testing.T, m *Manager) {
	t.Helper()
	for _, dir := range []string{m.Store(), m.Bases().Dir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".#") && !strings.HasSuffix(e.Name(), ".lck") {
				t.Errorf("left in %s: %s", dir, e.Name())
			}
		}
	}
}

// A sender that offers one parent and sends another subvolume as the
// base, or a machine stream that is not incremental from the agreed
// parent, is refused, and the receiver keeps nothing: no version, no
// staging tree, no subvolume.
func TestReceiveBtrfsRefusesAnotherBase(t *testing.T) {
	a, b := btrfsManager(t), btrfsManager(t)
	ctx := context.Background()
	// Any subvolume of a's, read-only, as a stream.
	src := filepath.Join(a.RootDir, "src")
	if out, err := exec.Command("btrfs", "subvolume", "create", src).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/os-release"), []byte("ID=debian\n"), 0o644)
	ro := filepath.Join(a.RootDir, "src.ro")
	if err := host.SnapshotReadOnly(src, ro); err != nil {
		t.Fatal(err)
	}
	info, err := host.Subvolume(ro)
	if err != nil {
		t.Fatal(err)
	}
	offered := host.UUID{0xde, 0xad}
	for _, tc := range []struct {
		name, parent, want string
	}{
		{"another base than offered", offered.String(), "not the " + offered.String() + " it offered"},
		{"a full stream as its base, where its machine is due", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := tc.parent
			if parent == "" {
				parent = info.UUID.String()
			}
			raw, _ := json.Marshal(map[string]any{"key": "k1", "created": "2026-11-30T10:00:00Z"})
			offer := remote.Offer{Name: "src", Storage: &remote.StorageOffer{Kind: string(storage.Btrfs), Parent: parent,
				Base: &remote.BaseOffer{Key: "k1", Version: "20261130T100000Z", ID: strings.Repeat("ab", 16), Info: raw}}}
			toW, fromR, done := receiving(b, "c", nil)
			line, _ := json.Marshal(offer)
			toW.Write(append(line, '\n'))
			replies := bufio.NewReader(fromR)
			var r remote.Reply
			if err := readReply(replies, &r); err != nil || r.Mode != remote.ModeBtrfsBase {
				t.Fatalf("reply %+v %v", r, err)
			}
			body := func(w io.Writer) error { return bootstrap.SendSubvolume(ctx, a.Runner, ro, "", w) }
			// The base; then, for the second case, the same full stream
			// where the machine's incremental one is due.
			for range 2 {
				if _, _, err := writeStream(toW, nil, body); err != nil {
					break
				}
			}
			toW.Close()
			go io.Copy(io.Discard, fromR)
			err := (<-done).err
			if err == nil || tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("receive: %v", err)
			}
			if tc.want == "" && !errors.Is(err, bootstrap.ErrSendStream) {
				t.Errorf("receive: %v is not a refused stream", err)
			}
			if _, err := os.Lstat(b.Tree("c")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("c is there: %v", err)
			}
			if vs, _ := b.Bases().List(); len(vs) > 0 {
				t.Errorf("bases left: %+v", vs)
			}
			noBtrfsStaging(t, b)
			if out, _ := exec.Command("btrfs", "subvolume", "list", b.RootDir).CombinedOutput(); len(out) > 0 {
				t.Errorf("subvolumes left:\n%s", out)
			}
		})
	}
}
