package bootstrap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/host"

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
