package machine

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/nsbox/nsbox/machine/image"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Import makes a new machine from a tarball of a root file system (file,
// or "-" for stdin), plain or compressed with gzip, zstd or xz.
//
// The archive is read once, as one stream, from one descriptor: nothing
// opens it by name a second time, so a host user who controls the path
// or owns the file cannot change it between check and extraction, and
// stdin needs no spooling. Go's tar reader reads it and ArchiveChecker
// checks each member (no absolute paths, "..", writes through the
// archive's own symbolic links, headers GNU tar reads otherwise than Go,
// sparse files, odd types); the members that pass are written anew by
// Go's tar writer into GNU tar, which extracts them into a staging tree.
// GNU tar thus never sees the archive's own bytes, only the members as
// checked. Device nodes are dropped (systemd-nspawn provides /dev), and
// said once on stderr.
//
// What the new tree may take is capped: the free space and inodes of the
// root dir's file system, less a reserve of 5% of the file system or
// 1 GiB, whichever is smaller (5% or 65536 inodes), so an import cannot
// fill the disk nsbox and the machines share. The need is counted from
// the headers as GNU tar writes them (file sizes in whole blocks, a block
// per directory): sparse files are refused, so that count is not a guess.
// Imports running at once each see the whole free space.
//
// A refusal stops the extraction at the refused member; the staging tree
// is removed, so nothing of a refused archive is left.
func (m *Manager) Import(ctx context.Context, name, file string, stdin io.Reader) error {
	if err := m.checkName(name, false); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	label := file
	src := stdin
	if file == "-" {
		if f, ok := stdin.(*os.File); ok {
			if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
				return fmt.Errorf("stdin is a terminal, not an archive (pipe one in: docker export %s | nsbox import %s -)", name, name)
			}
		}
		label = "stdin"
	} else {
		f, err := image.OpenArchive(file)
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	if err := m.ensureStore(); err != nil {
		return err
	}
	space, err := image.FreeSpace(m.Store(), m.RootDir)
	if err != nil {
		return err
	}
	c := &image.ArchiveChecker{Space: &space}
	return m.extractTree(ctx, "import", name, src, label, c)
}

// extractTree makes machine name of the root file system tarball in src
// (known to the user as label), each member checked by c: the import of
// a tarball, and the last step of a create from a URL.
func (m *Manager) extractTree(ctx context.Context, verb, name string, src io.Reader, label string, c *image.ArchiveChecker) error {
	err := m.newTree(ctx, name, func(tmp string) error {
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
		if err := image.NoCasefold(tmp); err != nil {
			return err
		}
		if err := image.Extract(ctx, m.Runner, src, tmp, c); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		if _, ok := readOSRelease(tmp); !ok {
			return fmt.Errorf("%s has no os-release: not a root file system", label)
		}
		// The tree's root is root's, whatever the archive said: with
		// --private-users=pick nspawn takes a machine's user range from
		// the owner of its root, and an archive must not pick another
		// machine's.
		return os.Lchown(tmp, 0, 0)
	})
	if err != nil {
		return err
	}
	if c.Devices > 0 {
		logrus.Warnf("%s %s: left out %d device nodes of %s (systemd-nspawn gives a machine its own /dev)", verb, name, c.Devices, label)
	}
	if c.Xattrs > 0 {
		logrus.Warnf("%s %s: left out %d trusted.* extended attributes of %s (a machine cannot use them)", verb, name, c.Xattrs, label)
	}
	return nil
}
