package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nsbox/nsbox/machine/host"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// btrfsMagic is BTRFS_SUPER_MAGIC.
const btrfsMagic = 0x9123683e

// OnBtrfs reports whether path is on a btrfs file system.
func OnBtrfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == btrfsMagic
}

// IsSubvolume reports whether dir is the top of a btrfs subvolume (its
// inode is always 256).
func IsSubvolume(dir string) bool {
	var st unix.Stat_t
	return OnBtrfs(dir) && unix.Lstat(dir, &st) == nil && st.Ino == 256
}

// MakeTreeDir creates the directory a tree is bootstrapped into: a btrfs
// subvolume where the file system is btrfs (so copies of it can be
// snapshots), a plain directory elsewhere.
func MakeTreeDir(ctx context.Context, r host.Runner, dir string) error {
	if OnBtrfs(filepath.Dir(dir)) {
		if err := r.Run(ctx, &host.Cmd{Path: "btrfs", Args: []string{"subvolume", "create", dir}}); err == nil {
			return nil
		}
		// btrfs-progs missing: a directory still works, copies cost more.
	}
	return os.Mkdir(dir, 0o755)
}

// snapshot makes dst a writable snapshot of subvolume src.
func snapshot(ctx context.Context, r host.Runner, src, dst string) error {
	if err := r.Run(ctx, &host.Cmd{Path: "btrfs", Args: []string{"subvolume", "snapshot", src, dst}}); err != nil {
		return fmt.Errorf("snapshot %s: %w", src, err)
	}
	return nil
}

// SendSubvolume writes a btrfs send stream (version 1) of the read-only
// subvolume subvol to w: whole, or, with parent (a read-only subvolume
// the receiving side has received), only what differs from parent.
func SendSubvolume(ctx context.Context, r host.Runner, subvol, parent string, w io.Writer) error {
	args := []string{"send", "-q"}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	args = append(args, "--", subvol)
	if err := r.Run(ctx, &host.Cmd{Path: "btrfs", Args: args, Stdout: w}); err != nil {
		return fmt.Errorf("btrfs send %s: %w", subvol, err)
	}
	return nil
}

// errReceiveEnded ends the copy into a btrfs receive that has exited.
var errReceiveEnded = errors.New("btrfs receive ended")

// ReceiveSubvolume receives the btrfs send stream src into dir, an empty
// directory on btrfs that nothing else writes, through c's checks: the
// received subvolume is dir/c.Name, read-only, its received UUID the
// stream's (c.Self). btrfs receive runs confined to dir (--chroot),
// stops at the stream's end command (-e) and at its first error (-E 1),
// and is stopped when the file system's free space falls below
// c.Reserve. On failure nothing is left in dir. A read-only subvolume
// cannot be moved to another directory (EROFS), only renamed in its own:
// dir is where it is to stay, or a directory to be renamed into place. On failure the copy from
// src may still be blocked in a read: the caller ends src (its
// connection) as it gives up.
func ReceiveSubvolume(ctx context.Context, r host.Runner, src io.Reader, dir string, c *SendStreamCheck) (string, host.SubvolInfo, error) {
	fail := func(err error) (string, host.SubvolInfo, error) {
		if ents, _ := os.ReadDir(dir); len(ents) > 0 {
			for _, e := range ents {
				if rerr := host.RemoveTree(filepath.Join(dir, e.Name())); rerr != nil {
					logrus.Warnf("could not remove %s: %v", filepath.Join(dir, e.Name()), rerr)
				}
			}
		}
		return "", host.SubvolInfo{}, err
	}
	if !OnBtrfs(dir) {
		return fail(fmt.Errorf("%s is not on btrfs", dir))
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		return "", host.SubvolInfo{}, fmt.Errorf("receive into %s: not an empty directory", dir)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := c.Copy(pw, src)
		pw.CloseWithError(err)
		checked <- err
		if err != nil {
			cancel()
		}
	}()
	overReserve := func() bool {
		var st unix.Statfs_t
		return c.Reserve > 0 && unix.Statfs(dir, &st) == nil && int64(st.Bavail)*int64(st.Bsize) < c.Reserve
	}
	noSpace := fmt.Errorf("%w: the file system of %s has less than %d bytes free", ErrStreamTooLarge, dir, c.Reserve)
	if overReserve() {
		return fail(noSpace)
	}
	var full atomic.Bool
	watchDone := make(chan struct{})
	defer close(watchDone)
	if c.Reserve > 0 {
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-watchDone:
					return
				case <-t.C:
				}
				if overReserve() {
					full.Store(true)
					cancel()
					return
				}
			}
		}()
	}
	err := r.Run(ctx, &host.Cmd{Path: "btrfs", Args: []string{"receive", "--chroot", "-e", "-E", "1", "-q", dir}, Stdin: pr})
	pr.CloseWithError(errReceiveEnded)
	if err != nil {
		// The checker's refusal, or the stream's own end, is the cause of
		// what btrfs receive saw; a checker blocked in a read of src is
		// not waited for long.
		select {
		case cerr := <-checked:
			if cerr != nil && !errors.Is(cerr, errReceiveEnded) {
				err = cerr
			}
		case <-time.After(time.Second):
		}
		if full.Load() {
			err = noSpace
		}
		return fail(fmt.Errorf("btrfs receive: %w", err))
	}
	if cerr := <-checked; cerr != nil {
		return fail(cerr)
	}
	if overReserve() {
		return fail(noSpace)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != c.Name {
		return fail(fmt.Errorf("%w: btrfs receive left other than %s in %s", ErrSendStream, c.Name, dir))
	}
	sub := filepath.Join(dir, c.Name)
	info, err := host.Subvolume(sub)
	if err != nil {
		return fail(err)
	}
	if !info.ReadOnly || info.Received != c.Self {
		return fail(fmt.Errorf("%w: %s was not received whole (read-only %v, received UUID %s, the stream's %s)", ErrSendStream, sub, info.ReadOnly, info.Received, c.Self))
	}
	return sub, info, nil
}
