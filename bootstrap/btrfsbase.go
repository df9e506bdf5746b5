package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/host"
)

// SendUUID is what a btrfs send stream calls subvolume s (the kernel's
// choice): the UUID of the subvolume it was received from, or its own.
// A subvolume received from s has it as its received UUID.
func SendUUID(s host.SubvolInfo) host.UUID {
	if !s.Received.IsZero() {
		return s.Received
	}
	return s.UUID
}

// parentName is the read-only snapshot of a version's root, beside it,
// that btrfs sends of machines over the version are incremental from.
const parentName = "root.ro"

// SendParent returns the read-only subvolume that btrfs sends of
// machines made from version of base key are incremental from, and what
// the kernel says of it: the version's root itself when it is read-only
// (a version received from another host), otherwise a read-only snapshot
// of the root kept beside it (root.ro in the version's directory), made
// the first time under the base's lock; it goes with the version
// (refresh, prune, cache remove). The version is held as a throwaway run
// holds it (HoldForRun: refresh keeps it, prune and remove leave it)
// until release is called.
func (c *BaseCache) SendParent(ctx context.Context, key, version string) (parent string, info host.SubvolInfo, release func(), err error) {
	l, err := c.lock(ctx, key)
	if err != nil {
		return "", info, nil, fmt.Errorf("base %s: %w", key, err)
	}
	defer l.Unlock()
	root, err := c.VersionRoot(key, version)
	if err != nil {
		return "", info, nil, err
	}
	rootInfo, err := host.Subvolume(root)
	if err != nil {
		return "", info, nil, fmt.Errorf("version %s of base %s: %w", version, key, err)
	}
	parent = root
	if rootInfo.ReadOnly {
		info = rootInfo
	} else {
		parent = filepath.Join(filepath.Dir(root), parentName)
		info, err = host.Subvolume(parent)
		if err == nil && (!info.ReadOnly || info.Parent != rootInfo.UUID) {
			// Not ours: made by hand, or made writable since.
			err = fmt.Errorf("%s is not a read-only snapshot of %s", parent, root)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", info, nil, err
		}
		if err != nil {
			if err := host.SnapshotReadOnly(root, parent); err != nil {
				return "", info, nil, err
			}
			if info, err = host.Subvolume(parent); err != nil {
				_ = host.DeleteSubvolume(parent)
				return "", info, nil, err
			}
		}
	}
	release, err = HoldForRun(root)
	if err != nil {
		return "", info, nil, err
	}
	return parent, info, release, nil
}

// ReceivedVersion finds the version of base key whose root was received
// from the subvolume a btrfs send stream calls uuid (its SendUUID): the
// parent an incremental stream from uuid needs here. The version is held
// as SendParent holds it until release is called.
func (c *BaseCache) ReceivedVersion(ctx context.Context, key string, uuid host.UUID) (v BaseInfo, release func(), ok bool, err error) {
	if uuid.IsZero() {
		return v, nil, false, nil
	}
	l, err := c.lock(ctx, key)
	if err != nil {
		return v, nil, false, fmt.Errorf("base %s: %w", key, err)
	}
	defer l.Unlock()
	for _, b := range c.all(key) {
		info, err := host.Subvolume(b.Root)
		if err != nil || !info.ReadOnly || info.Received != uuid {
			continue
		}
		release, err := HoldForRun(b.Root)
		if err != nil {
			return v, nil, false, err
		}
		return b, release, true, nil
	}
	return v, nil, false, nil
}
