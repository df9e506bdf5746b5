package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// whiteoutPrefix marks a layer member that removes what the layers below
// have at that name (OCI image spec, "Whiteouts").
const whiteoutPrefix = ".wh."

// opaqueMarker in a directory hides everything the layers below have in it.
const opaqueMarker = ".wh..wh..opq"

// ErrDigest is returned for a layer whose bytes do not have its digest.
var ErrDigest = errors.New("layer does not match its digest")

// Layers applies the layers of an OCI or Docker image, one after the
// other, into one tree. Each member passes Checker, whose state (the
// symbolic links, directories and files the layers made, the bytes
// written) runs across the layers, so a later layer is held to what an
// earlier one made: no write through an earlier layer's symbolic link, a
// hard link only to a member of the tree, and one cap on the bytes of
// them all.
//
// A layer is read twice from its blob, a file in the cache whose digest is
// checked first. The first pass takes its whiteouts (".wh.NAME": remove
// NAME of the layers below; ".wh..wh..opq": empty the directory of what
// the layers below put there) and the names it replaces: nsbox removes
// those itself, through descriptors that follow no link, before GNU tar
// runs, so GNU tar never finds an earlier layer's symbolic link or
// directory where it writes a member (where it would follow the link or
// merge into the directory). The second pass is Extract: members checked,
// written anew and given to GNU tar.
type Layers struct {
	Runner host.Runner
	// Dir is the tree, made empty by the caller.
	Dir string
	// Checker checks every member; its Space and Cap cap the whole image.
	Checker ArchiveChecker
	// Whiteouts counts the whiteouts applied.
	Whiteouts int
}

// layerScan is what the first pass found in a layer.
type layerScan struct {
	whiteouts []string // what to remove of the layers below
	opaque    []string // directories to empty of the layers below
	members   []scanned
}

type scanned struct {
	name string
	dir  bool
}

// Apply verifies that blob (a layer as stored: plain tar, gzip or zstd)
// has digest ("sha256:HEX") and applies it over the layers applied so far.
// label names the layer in errors.
func (l *Layers) Apply(ctx context.Context, blob *os.File, digest string) error {
	c := &l.Checker
	c.layer = true
	if c.tree == nil {
		c.links, c.dropped, c.tree = map[string]bool{}, map[string]bool{}, map[string]byte{".": 'd'}
	}
	if err := VerifyDigest(blob, digest); err != nil {
		return err
	}
	if _, err := blob.Seek(0, io.SeekStart); err != nil {
		return err
	}
	scan, err := l.scan(ctx, blob)
	if err != nil {
		return err
	}
	if err := l.remove(scan); err != nil {
		return err
	}
	if len(scan.members) == 0 {
		return nil
	}
	if _, err := blob.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return Extract(ctx, l.Runner, blob, l.Dir, c)
}

// VerifyDigest reads f to its end and checks that its SHA-256 is digest
// ("sha256:HEX").
func VerifyDigest(f io.Reader, digest string) error {
	want, ok := strings.CutPrefix(digest, "sha256:")
	if !ok {
		return fmt.Errorf("%w: digest %q is not sha256", ErrDigest, digest)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read layer %s: %w", digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: %s has sha256:%s", ErrDigest, digest, got)
	}
	return nil
}

// scan is the first pass over a layer: headers only.
func (l *Layers) scan(ctx context.Context, blob io.Reader) (*layerScan, error) {
	stream, stop, err := archiveStream(ctx, l.Runner, blob)
	if err != nil {
		return nil, err
	}
	defer stop()
	c := &l.Checker
	s := &layerScan{}
	tr := tar.NewReader(stream)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return s, nil
		}
		if err != nil {
			return nil, readError(err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := memberPath(h.Name)
		if err != nil {
			return nil, err
		}
		if err := checkWhiteoutUse(h.Name, name); err != nil {
			return nil, err
		}
		base := path.Base(name)
		switch {
		case base == opaqueMarker:
			dir := path.Dir(name)
			if err := c.throughLink(h.Name, name); err != nil {
				return nil, err
			}
			s.opaque = append(s.opaque, dir)
		case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
			// aufs's own records (.wh..wh.plnk, .wh..wh.aufs): nothing
			// of the image's.
		case strings.HasPrefix(base, whiteoutPrefix):
			target := strings.TrimPrefix(base, whiteoutPrefix)
			if target == "" || target == "." || target == ".." {
				return nil, fmt.Errorf("%w: whiteout %q names no file of the tree", ErrUnsafeArchive, h.Name)
			}
			target = path.Join(path.Dir(name), target)
			if err := c.throughLink(h.Name, target); err != nil {
				return nil, err
			}
			s.whiteouts = append(s.whiteouts, target)
		default:
			s.members = append(s.members, scanned{name: name, dir: h.Typeflag == tar.TypeDir})
		}
	}
}

// checkWhiteoutUse refuses a member inside a directory named as a
// whiteout: a whiteout is a marker, never a directory.
func checkWhiteoutUse(orig, name string) error {
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if strings.HasPrefix(path.Base(dir), whiteoutPrefix) {
			return fmt.Errorf("%w: %q is inside the whiteout %q", ErrUnsafeArchive, orig, dir)
		}
	}
	return nil
}

// remove takes away what the layer's whiteouts and opaque directories
// hide of the layers below, and what its members replace: anything but a
// directory where the member is a directory too.
func (l *Layers) remove(s *layerScan) error {
	c := &l.Checker
	var gone []string
	for _, w := range s.whiteouts {
		if _, ok := c.tree[w]; ok {
			gone = append(gone, w)
		}
		l.Whiteouts++
	}
	for _, d := range s.opaque {
		if kind, ok := c.tree[d]; ok && kind != 'd' {
			return fmt.Errorf("%w: opaque marker in %q, which is not a directory", ErrUnsafeArchive, d)
		}
		for p := range c.tree {
			if p != "." && path.Dir(p) == d {
				gone = append(gone, p)
			}
		}
		l.Whiteouts++
	}
	for _, m := range s.members {
		if kind, ok := c.tree[m.name]; ok && m.name != "." && (kind != 'd' || !m.dir) {
			gone = append(gone, m.name)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	root, err := unix.Open(l.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	for _, p := range gone {
		if _, ok := c.tree[p]; !ok {
			continue // under something removed already
		}
		if err := removeInTree(root, p); err != nil {
			return fmt.Errorf("apply whiteout %s: %w", p, err)
		}
		c.forget(p)
	}
	return nil
}

// removeInTree removes rel (and what is below it) inside the tree open as
// root: its parent is resolved in the tree without following any link or
// crossing a mount, and nothing below is followed either.
func removeInTree(root int, rel string) error {
	parent, err := unix.Openat2(root, path.Dir(rel), &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	base := path.Base(rel)
	var st unix.Stat_t
	if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(parent, base, 0)
	}
	// RemoveTree opens the parent by this name, the descriptor's own.
	return host.RemoveTree(fmt.Sprintf("/proc/self/fd/%d/%s", parent, base))
}

// made remembers what a kept member made at name, and that its parents
// are directories (GNU tar makes those that are missing).
func (c *ArchiveChecker) made(name string, typeflag byte) {
	kind := byte('f')
	switch typeflag {
	case tar.TypeDir:
		kind = 'd'
	case tar.TypeSymlink:
		kind = 'l'
	}
	c.tree[name] = kind
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if _, ok := c.tree[dir]; ok {
			break
		}
		c.tree[dir] = 'd'
	}
}

// forget drops what the checker knows of p and everything below it, once
// removed from the tree.
func (c *ArchiveChecker) forget(p string) {
	prefix := p + "/"
	for _, m := range []map[string]bool{c.links, c.dropped} {
		for k := range m {
			if k == p || strings.HasPrefix(k, prefix) {
				delete(m, k)
			}
		}
	}
	for k := range c.tree {
		if k == p || strings.HasPrefix(k, prefix) {
			delete(c.tree, k)
		}
	}
}
