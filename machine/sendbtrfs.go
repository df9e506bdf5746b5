package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/remote"
)

// offerBtrfs offers a btrfs machine (a subvolume snapshot of its base
// version) as btrfs send streams: incremental from a read-only snapshot of
// its base version (bootstrap.SendParent, made once and kept with the
// version), for a receiver on btrfs that has received that snapshot or
// takes it first. The version is held until Close. A machine whose base
// cannot be named leaves the offer as it is: the whole tree is sent.
func (g *Outgoing) offerBtrfs(ctx context.Context) {
	rec := g.m.storageOf(g.name)
	if rec.Kind != storage.Btrfs || rec.Base == "" || rec.Version == "" || !bootstrap.IsSubvolume(g.m.Dir(g.name)) {
		return
	}
	bc := g.m.basesOf(rec)
	info, err := bc.Identify(ctx, rec.Base, rec.Version)
	if err != nil {
		logrus.Debugf("send %s: the whole tree, not btrfs streams: %v", g.name, err)
		return
	}
	parent, pinfo, release, err := bc.SendParent(ctx, rec.Base, rec.Version)
	if err != nil {
		logrus.Debugf("send %s: the whole tree, not btrfs streams: %v", g.name, err)
		return
	}
	desc := info
	desc.Root, desc.Machines, desc.Current, desc.Runs = "", nil, false, false
	raw, _ := json.Marshal(desc)
	g.rec, g.base, g.parent, g.releaseParent = rec, info, parent, release
	g.offer.Storage = &remote.StorageOffer{Kind: string(storage.Btrfs), Parent: bootstrap.SendUUID(pinfo).String(),
		Base: &remote.BaseOffer{Key: info.Key, Version: info.Version, ID: info.ID, Info: raw}}
}

// streamBtrfs writes what the receiver asked for of a btrfs machine: its
// base's read-only snapshot whole first (ModeBtrfsBase), then a read-only
// snapshot of the machine incremental from it. The machine's snapshot is
// made in a staging directory of its name (.#NAME.*, swept as any) and
// deleted whatever happens.
func (g *Outgoing) streamBtrfs(ctx context.Context, to io.Writer, res *SendResult, tell func(int64), sent *int64) error {
	if g.parent == "" {
		return fmt.Errorf("%w: it asked for %q, which was not offered", remote.ErrStream, res.Mode)
	}
	m := g.m
	return m.withStaging(g.name, func(dir string) error {
		snap := filepath.Join(dir, "tree")
		if err := host.SnapshotReadOnly(m.Dir(g.name), snap); err != nil {
			return err
		}
		var err error
		if res.Mode == remote.ModeBtrfsBase {
			res.BaseBytes, res.BaseSHA256, err = writeStream(to, tell, func(w io.Writer) error {
				return bootstrap.SendSubvolume(ctx, m.Runner, g.parent, "", w)
			})
			if err != nil {
				return err
			}
			*sent = res.BaseBytes
		}
		res.Bytes, res.SHA256, err = writeStream(to, tell, func(w io.Writer) error {
			return bootstrap.SendSubvolume(ctx, m.Runner, snap, g.parent, w)
		})
		return err
	})
}

// withStaging runs fn with a staging directory of machine name's (.#NAME.*,
// held, swept as any when a kill leaves it), removed after fn whatever
// happens.
func (m *Manager) withStaging(name string, fn func(dir string) error) error {
	dir, held, err := m.stage(name)
	if err != nil {
		return err
	}
	defer func() {
		if err := host.RemoveTree(dir); err != nil {
			logrus.Warnf("could not remove %s: %v", dir, err)
		}
		held.Close()
	}()
	return fn(dir)
}

// chooseBtrfs decides what to ask for of a btrfs machine: where the root
// directory and the base cache are one btrfs file system (a snapshot of a
// base can be a machine), the machine's stream alone when a version here
// was received from the offered parent (held until release), or the
// parent first when the base version can be added here; otherwise the
// whole tree.
func (in *incoming) chooseBtrfs(ctx context.Context) string {
	st := in.offer.Storage
	why := func(err error) string {
		logrus.Debugf("receive %s: the whole tree: %v", in.name, err)
		return remote.ModeTree
	}
	if st.Base == nil {
		return why(errors.New("no base offered"))
	}
	b := st.Base
	if err := bootstrap.CheckBaseRef(b.Key, b.Version, b.ID); err != nil {
		return why(err)
	}
	parent, err := host.ParseUUID(st.Parent)
	if err != nil || parent.IsZero() {
		return why(fmt.Errorf("its parent: %v", err))
	}
	bc := in.m.Bases()
	if err := host.PrivateDir(bc.Dir); err != nil {
		return why(err)
	}
	fs1, err1 := host.BtrfsFilesystem(in.m.Store())
	fs2, err2 := host.BtrfsFilesystem(bc.Dir)
	if err := errors.Join(err1, err2); err != nil || fs1 != fs2 {
		return why(fmt.Errorf("the root directory and the base cache are not one btrfs file system: %v", err))
	}
	v, release, ok, err := bc.ReceivedVersion(ctx, b.Key, parent)
	if err != nil {
		return why(err)
	}
	if ok {
		in.base, in.unhold = v, release
		return remote.ModeBtrfs
	}
	if _, ok := bc.FindID(b.Key, b.ID); ok || bc.HasVersion(b.Key, b.Version) {
		return why(fmt.Errorf("base %s has version %s here, not received from %s", b.Key, b.Version, parent))
	}
	return remote.ModeBtrfsBase
}

// btrfsCheck is what a btrfs stream received into dir may do: within the
// free space of dir's file system less a reserve.
func btrfsCheck(dir string, parent host.UUID, parentRoot string) (*bootstrap.SendStreamCheck, error) {
	space, err := image.FreeSpace(dir, dir)
	if err != nil {
		return nil, err
	}
	return &bootstrap.SendStreamCheck{Parent: parent, ParentRoot: parentRoot, Max: space.Bytes, Reserve: space.Reserve}, nil
}

// btrfs receives a btrfs machine: its base's read-only snapshot first
// (ModeBtrfsBase), stored as a version of the base whose root is the
// received subvolume, then the machine's stream incremental from it,
// received into a staging directory and made the machine's tree as a
// writable snapshot; the read-only one goes with the staging directory.
func (in *incoming) btrfs(ctx context.Context) error {
	m, st := in.m, in.offer.Storage
	b := st.Base
	bc := m.Bases()
	parent, err := host.ParseUUID(st.Parent)
	if err != nil {
		return err
	}
	if in.mode == remote.ModeBtrfsBase {
		var info bootstrap.BaseInfo
		if err := json.Unmarshal(b.Info, &info); err != nil {
			return fmt.Errorf("%w: its base: %v", remote.ErrStream, err)
		}
		info.Key, info.Version, info.ID = b.Key, b.Version, b.ID
		filled := false
		in.base, in.hold, err = bc.AddReceived(ctx, info, func(root string) error {
			filled = true
			// The received subvolume takes the place of the empty one
			// made for the tree: a read-only subvolume cannot move into
			// another directory.
			if err := os.Remove(root); err != nil {
				return err
			}
			dir := filepath.Dir(root)
			chk, err := btrfsCheck(dir, host.UUID{}, "")
			if err != nil {
				return err
			}
			var got string
			if in.baseBytes, in.baseSum, err = readStream(in.br, func(r io.Reader) error {
				var sub host.SubvolInfo
				if got, sub, err = bootstrap.ReceiveSubvolume(ctx, m.Runner, r, dir, chk); err != nil {
					return err
				}
				if sub.Received != parent {
					return fmt.Errorf("%w: its base came as %s, not the %s it offered", bootstrap.ErrSendStream, sub.Received, parent)
				}
				return nil
			}); err != nil {
				return err
			}
			if err := os.Rename(got, root); err != nil {
				return err
			}
			return isRootFS(root)
		})
		if err == nil && !filled {
			err = fmt.Errorf("base %s version %s arrived meanwhile by another receive: send again", b.Key, b.Version)
		}
		if err != nil {
			return err
		}
	}
	fill := func(tmp string) error {
		return m.withStaging(in.name, func(dir string) error {
			chk, err := btrfsCheck(dir, parent, in.base.Root)
			if err != nil {
				return err
			}
			var got string
			if in.bytes, in.sum, err = readStream(in.br, func(r io.Reader) error {
				got, _, err = bootstrap.ReceiveSubvolume(ctx, m.Runner, r, dir, chk)
				return err
			}); err != nil {
				return err
			}
			if err := bootstrap.CopyTree(ctx, m.Runner, got, tmp); err != nil {
				return err
			}
			return isRootFS(tmp)
		})
	}
	personalise := func(tmp string) error {
		_, err := in.personalise(tmp)
		return err
	}
	if err := m.newTreeWith(ctx, in.name, fill, personalise); err != nil {
		return err
	}
	m.recordBase(in.name, storage.Record{Base: in.base.Key, Version: in.base.Version, Bases: bc.Dir})
	return nil
}
