package machine

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/storage"
)

// Export writes stopped machine name as a tarball of its root to file.
//
// The directory of file may be a host user's, who can rename, replace and
// plant links in it at any time. So it is opened once (following only
// root's symbolic links on the way, see openFollowingRoot), and everything
// after goes through that descriptor: the archive is a new file made in
// it without a name (O_TMPFILE; where the file system cannot, under a
// fresh ".#" name made with O_EXCL|O_NOFOLLOW), mode 0600 from the start
// so no host user reads a half-written export; tar (and its compressor)
// write to that file's descriptor as their stdout, it is fsynced, and it
// gets its name last, by renameat relative to the directory. No name a
// user controls is opened, chmodded or followed: a link at file is
// replaced, never written through. On a failure or an interruption the
// file goes (an unnamed one with its descriptor, even on SIGKILL).
//
// Export replaces a file already at file; ExportTo without replace
// refuses one.
func (m *Manager) Export(ctx context.Context, name, file string) error {
	return m.ExportTo(ctx, name, file, true)
}

// ExportTo is Export; without replace, a file (or anything else) already
// at file is refused before anything is written, and the archive gets its
// name only where none exists then either (linkat, or renameat2 with
// RENAME_NOREPLACE), so a file made meanwhile is kept too.
func (m *Manager) ExportTo(ctx context.Context, name, file string, replace bool) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	comp, err := image.Compression(file)
	if err != nil {
		return err
	}
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	file = filepath.Clean(file)
	out, err := image.CreateExport(filepath.Dir(file), filepath.Base(file), true)
	if err != nil {
		return err
	}
	defer out.Abort()
	out.NoReplace = !replace
	if !replace && out.Exists() {
		return fmt.Errorf("%s already exists (remove it, or pass --force to replace it)", file)
	}
	var extra []string
	if comp != "" {
		extra = append(extra, comp)
	}
	if err := m.writeTar(ctx, name, out.File, extra...); err != nil {
		return err
	}
	return out.Publish()
}

// writeTar writes to w GNU tar's archive of stopped machine name's tree
// as the machine sees it (an overlay machine's merged tree, with the
// owners the machine sees), with nsbox's tar options (image.TarArgs) and
// extra (a compressor): what export and send write.
func (m *Manager) writeTar(ctx context.Context, name string, w io.Writer, extra ...string) error {
	tar := func(root string) error {
		args := append(append([]string{"--create", "--file=-", "--directory=" + root}, image.TarArgs...), extra...)
		// The runner's error names tar, its status and its stderr; the
		// caller names the command and the machine.
		return m.Runner.Run(ctx, &host.Cmd{Path: "tar", Args: append(args, "."), Stdout: w})
	}
	if m.storageOf(name).Kind == storage.Overlay {
		return m.withView(ctx, name, tar)
	}
	return tar(m.Dir(name))
}
