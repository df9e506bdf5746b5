package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

// Snapshots of a machine live in the store, root's alone as the trees
// are: ROOT/.nsbox/.snapshots/NAME/SNAP holds snapshot.json and tree, a
// copy of what the machine is made of: its tree (a copy, or a read-only
// btrfs snapshot of a subvolume), or an overlay machine's upper directory
// (whiteouts, opaque directories and their trusted.overlay.* attributes
// with it). Work in progress is a ".#..." directory beside the snapshots,
// removed by the next snapshot command on the machine; every such command
// holds ROOT/.nsbox/.snapshots/.NAME.lck.

// SnapshotInfo is one snapshot of a machine, as snapshot list reports it.
// The JSON shape is part of nsbox's interface (docs/json.md).
type SnapshotInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size_bytes"`
	// Kind is what the snapshot holds: "copy" or "btrfs" (the tree),
	// "overlay" (the upper directory).
	Kind string `json:"kind"`
}

// snapshotMeta is a snapshot's snapshot.json.
type snapshotMeta struct {
	Created time.Time    `json:"created"`
	Kind    storage.Kind `json:"kind"`
	// UIDBase is the host uid of an overlay machine's root in its upper
	// when it was copied (0 for an upper under the machine's own ids):
	// what the copy's owners are relative to.
	UIDBase int `json:"uid_base,omitempty"`
}

// snapshotsDir holds every machine's snapshots.
func (p Paths) snapshotsDir() string { return filepath.Join(p.Store(), ".snapshots") }

// snapshotDir holds machine name's snapshots.
func (p Paths) snapshotDir(name string) string { return filepath.Join(p.snapshotsDir(), name) }

// SnapshotNames lists machine name's snapshots by name, [] when none. It
// reads one directory: completion and list use it.
func (p Paths) SnapshotNames(name string) []string {
	out := []string{}
	if ValidateName(name) != nil {
		return out
	}
	ents, _ := os.ReadDir(p.snapshotDir(name))
	for _, e := range ents {
		if e.IsDir() && ValidateName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// snapshotError is a mistake about a snapshot: its own words, and a
// sentinel (ErrNotFound, ErrExists) for errors.Is.
type snapshotError struct {
	msg string
	is  error
}

func (e *snapshotError) Error() string { return e.msg }
func (e *snapshotError) Unwrap() error { return e.is }

func noSnapshot(name, snap string) error {
	return &snapshotError{fmt.Sprintf("no snapshot %s of %s (see: nsbox snapshot list %s)", snap, name, name), ErrNotFound}
}

// validateSnapshotName applies the rules of machine names to a snapshot
// name: it is a directory name, and never one of nsbox's dot files.
func validateSnapshotName(snap string) error {
	if err := ValidateName(snap); err != nil {
		return fmt.Errorf("%w: snapshot name%s", ErrInvalidOption, strings.TrimPrefix(err.Error(), ErrInvalidName.Error()))
	}
	return nil
}

// snapshotName is the name of a snapshot taken at t without one.
func snapshotName(t time.Time) string { return t.Format("20060102-150405") }

// lockSnapshots takes the lock every snapshot command on machine name
// holds, without waiting.
func (m *Manager) lockSnapshots(ctx context.Context, name string) (*host.FileLock, error) {
	if err := m.ensureStore(); err != nil {
		return nil, err
	}
	if err := host.PrivateDir(m.snapshotsDir()); err != nil {
		return nil, err
	}
	l, err := host.LockFile(ctx, filepath.Join(m.snapshotsDir(), "."+name+".lck"), true, false)
	if errors.Is(err, host.ErrLocked) {
		return nil, fmt.Errorf("%w: another nsbox is taking, restoring or removing a snapshot of %s", ErrBusy, name)
	}
	return l, err
}

// lockSnapshotOf checks machine name and snapshot snap's names and takes
// the snapshot lock, for a command on one snapshot.
func (m *Manager) lockSnapshotOf(ctx context.Context, name, snap string) (*host.FileLock, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, err
	}
	if err := validateSnapshotName(snap); err != nil {
		return nil, err
	}
	return m.lockSnapshots(ctx, name)
}

// sweepSnapshots removes what snapshot commands on name that were cut
// short left. The caller holds the snapshot lock.
func (m *Manager) sweepSnapshots(name string) {
	ents, _ := os.ReadDir(m.snapshotDir(name))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") {
			dir := filepath.Join(m.snapshotDir(name), e.Name())
			logrus.Infof("removing %s, left by an interrupted snapshot command", dir)
			if err := m.removeSnapshotDir(context.Background(), dir); err != nil {
				logrus.Warnf("could not remove %s: %v", dir, err)
			}
		}
	}
}

// removeSnapshotDir removes a snapshot's directory (or a staging one): a
// read-only btrfs snapshot in it goes with btrfs, which can delete it.
func (m *Manager) removeSnapshotDir(ctx context.Context, dir string) error {
	tree := filepath.Join(dir, "tree")
	if bootstrap.IsSubvolume(tree) {
		if err := m.Runner.Run(ctx, &host.Cmd{Path: "btrfs", Args: []string{"subvolume", "delete", tree}}); err != nil {
			// A writable one with subvolumes inside: removed below.
			logrus.Debugf("btrfs subvolume delete %s: %v", tree, err)
		}
	}
	return host.RemoveTree(dir)
}

// snapshotKind is what a snapshot of machine name is made of.
func (m *Manager) snapshotKind(name string) storage.Kind {
	if m.storageOf(name).Kind == storage.Overlay {
		return storage.Overlay
	}
	if bootstrap.IsSubvolume(m.Dir(name)) {
		return storage.Btrfs
	}
	return storage.Copy
}

// snapshotSource is what a snapshot of machine name copies.
func (m *Manager) snapshotSource(name string, kind storage.Kind) string {
	if kind == storage.Overlay {
		return m.layout(name).Upper()
	}
	return m.Dir(name)
}

// Snapshot takes snapshot snap of machine name (named after the time when
// snap is empty) and returns its name. A running machine is refused
// unless live: then its cgroup is frozen for the moment of the copy.
func (m *Manager) Snapshot(ctx context.Context, name, snap string, live bool) (string, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return "", err
	}
	if snap != "" {
		if err := validateSnapshotName(snap); err != nil {
			return "", err
		}
	}
	r, err := m.Backend.Get(ctx, name)
	running := err == nil
	if err != nil && !errors.Is(err, ErrNotRunning) {
		return "", err
	}
	if running && !live {
		return "", fmt.Errorf("%w: %s (stop it first: nsbox stop %s, or take a live snapshot: nsbox snapshot %s --live)", ErrRunning, name, name, name)
	}
	sl, err := m.lockSnapshots(ctx, name)
	if err != nil {
		return "", err
	}
	defer sl.Unlock()
	if !running {
		lock, err := m.lockStopped(ctx, name)
		if err != nil {
			return "", err
		}
		defer lock.Unlock()
	} else if r.Leader <= 0 {
		return "", fmt.Errorf("%w: %s is between boots; try again", ErrBusy, name)
	}
	m.sweepSnapshots(name)
	if snap == "" {
		snap = snapshotName(time.Now())
		for i := 2; m.snapshotExists(name, snap); i++ {
			snap = fmt.Sprintf("%s-%d", snapshotName(time.Now()), i)
		}
	}
	if m.snapshotExists(name, snap) {
		return "", &snapshotError{fmt.Sprintf("snapshot %s of %s exists (remove it first: nsbox snapshot remove %s %s)", snap, name, name, snap), ErrExists}
	}
	if err := os.MkdirAll(m.snapshotDir(name), 0o700); err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp(m.snapshotDir(name), ".#"+snap+".")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			if err := m.removeSnapshotDir(context.WithoutCancel(ctx), stage); err != nil {
				logrus.Warnf("could not remove %s: %v", stage, err)
			}
		}
	}()
	kind := m.snapshotKind(name)
	meta := snapshotMeta{Created: time.Now().Truncate(time.Second), Kind: kind}
	if kind == storage.Overlay {
		meta.UIDBase = m.storageOf(name).UpperBase()
	}
	take := func() error {
		if running {
			frozen, err := host.FreezeMachine(ctx, r.Leader, 30*time.Second)
			if err != nil {
				return fmt.Errorf("freeze %s: %w", name, err)
			}
			start := time.Now()
			defer func() {
				if err := frozen.Thaw(); err != nil {
					logrus.Errorf("%s stays frozen: %v", name, err)
					return
				}
				logrus.Infof("%s was frozen (%s) for %s", name, frozen.Dir, time.Since(start).Round(time.Millisecond))
			}()
			// The leader frozen is the machine's still, not a PID reused.
			if now, err := m.Backend.Get(ctx, name); err != nil || now.Leader != r.Leader {
				return fmt.Errorf("%w: %s stopped or rebooted as its snapshot began", ErrBusy, name)
			}
		}
		src := m.snapshotSource(name, kind)
		// What the machine wrote is on disk before it is read.
		syncFS(m.Dir(name))
		syncFS(src)
		return m.copySnapshot(ctx, kind, src, filepath.Join(stage, "tree"))
	}
	if err := take(); err != nil {
		return "", err
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, "snapshot.json"), append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	if err := renameNoReplace(stage, filepath.Join(m.snapshotDir(name), snap)); err != nil {
		return "", fmt.Errorf("snapshot %s of %s: %w", snap, name, err)
	}
	ok = true
	return snap, nil
}

// copySnapshot copies src, a machine's tree or upper, to dst: a
// read-only subvolume snapshot of a btrfs tree, a copy otherwise (links
// copied as links, owners, modes, attributes, devices and holes kept).
func (m *Manager) copySnapshot(ctx context.Context, kind storage.Kind, src, dst string) error {
	if kind == storage.Btrfs {
		if err := m.Runner.Run(ctx, &host.Cmd{Path: "btrfs", Args: []string{"subvolume", "snapshot", "-r", src, dst}}); err != nil {
			return fmt.Errorf("snapshot %s: %w", src, err)
		}
		return nil
	}
	return bootstrap.CopyTree(ctx, m.Runner, src, dst)
}

// syncFS writes what is cached of the file system dir is on (a machine
// still running wrote it moments ago). A failure only costs safety on a
// crash, and is logged.
func syncFS(dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Syncfs(fd)
		unix.Close(fd)
	}
	if err != nil {
		logrus.Debugf("syncfs %s: %v", dir, err)
	}
}

func (m *Manager) snapshotExists(name, snap string) bool {
	_, err := os.Lstat(filepath.Join(m.snapshotDir(name), snap))
	return err == nil
}

// readSnapshot reads snapshot snap of name, which must be whole.
func (m *Manager) readSnapshot(name, snap string) (snapshotMeta, error) {
	var meta snapshotMeta
	dir := filepath.Join(m.snapshotDir(name), snap)
	b, err := os.ReadFile(filepath.Join(dir, "snapshot.json"))
	if errors.Is(err, os.ErrNotExist) {
		return meta, noSnapshot(name, snap)
	}
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return meta, fmt.Errorf("%s: %w", filepath.Join(dir, "snapshot.json"), err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "tree")); err != nil || !fi.IsDir() {
		return meta, fmt.Errorf("snapshot %s of %s has no tree (%s)", snap, name, dir)
	}
	return meta, nil
}

// Snapshots lists machine name's snapshots, oldest first.
func (m *Manager) Snapshots(ctx context.Context, name string) ([]SnapshotInfo, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, err
	}
	out := []SnapshotInfo{}
	for _, snap := range m.SnapshotNames(name) {
		meta, err := m.readSnapshot(name, snap)
		if err != nil {
			// A snapshot being removed, or not nsbox's.
			logrus.Debugf("%v", err)
			continue
		}
		// From the tree itself: a btrfs snapshot is a file system of its own.
		size, _ := host.DiskUsage(filepath.Join(m.snapshotDir(name), snap, "tree"))
		out = append(out, SnapshotInfo{Name: snap, Created: meta.Created, Size: size, Kind: string(meta.Kind)})
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Created.Before(out[b].Created) })
	return out, nil
}

// RestoreSnapshot puts stopped machine name back as snapshot snap has it;
// the snapshot stays. The restored tree (or upper) is made beside the
// machine and exchanged with its own in one rename, so a restore cut
// short leaves the machine as it was.
func (m *Manager) RestoreSnapshot(ctx context.Context, name, snap string) error {
	sl, err := m.lockSnapshotOf(ctx, name, snap)
	if err != nil {
		return err
	}
	defer sl.Unlock()
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	meta, err := m.readSnapshot(name, snap)
	if err != nil {
		return err
	}
	if m.ReadOnly(name) {
		return fmt.Errorf("%w: %s is read-only (make it writable first: nsbox read-only %s false)", ErrInvalidOption, name, name)
	}
	kind := m.snapshotKind(name)
	if (meta.Kind == storage.Overlay) != (kind == storage.Overlay) {
		return fmt.Errorf("%w: snapshot %s is of a %s machine and %s is a %s one", ErrInvalidOption, snap, meta.Kind, name, kind)
	}
	m.sweepSnapshots(name)
	stage, err := os.MkdirTemp(m.snapshotDir(name), ".#restore.")
	if err != nil {
		return err
	}
	// Whatever happens, the stage goes: the restored tree, or after the
	// exchange the machine's tree as it was.
	defer func() {
		if err := m.removeSnapshotDir(context.WithoutCancel(ctx), stage); err != nil {
			logrus.Warnf("could not remove %s: %v", stage, err)
		}
	}()
	restored := filepath.Join(stage, "tree")
	// A btrfs snapshot comes back as a writable snapshot of it.
	if err := bootstrap.CopyTree(ctx, m.Runner, filepath.Join(m.snapshotDir(name), snap, "tree"), restored); err != nil {
		return err
	}
	target := m.snapshotSource(name, kind)
	if kind == storage.Overlay {
		rec := m.storageOf(name)
		if meta.UIDBase != rec.UpperBase() {
			// Taken when the machine had other host ids (or ran without
			// a user namespace, its upper under its own ids).
			if err := storage.Shift(restored, meta.UIDBase, rec.UpperBase()); err != nil {
				return err
			}
		}
		// The upper is exchanged while no overlay uses it.
		ml, err := m.mountLock(ctx, name)
		if err != nil {
			return err
		}
		defer ml.Unlock()
		if err := m.layout(name).Unmount(); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, restored, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE); err != nil {
		return fmt.Errorf("put %s in place of %s: %w", restored, target, err)
	}
	return nil
}

// RemoveSnapshot removes snapshot snap of machine name.
func (m *Manager) RemoveSnapshot(ctx context.Context, name, snap string) error {
	sl, err := m.lockSnapshotOf(ctx, name, snap)
	if err != nil {
		return err
	}
	defer sl.Unlock()
	if !m.snapshotExists(name, snap) {
		return noSnapshot(name, snap)
	}
	m.sweepSnapshots(name)
	// Renamed out of the list first: a removal cut short leaves no half
	// snapshot under its name, and the next command sweeps the rest.
	dir := filepath.Join(m.snapshotDir(name), snap)
	gone := filepath.Join(m.snapshotDir(name), ".#"+snap+".removed")
	if err := os.Rename(dir, gone); err != nil {
		return err
	}
	if err := m.removeSnapshotDir(context.WithoutCancel(ctx), gone); err != nil {
		return err
	}
	_ = os.Remove(m.snapshotDir(name)) // when it was the last
	return nil
}

// removeSnapshots removes every snapshot of machine name, as the machine
// is removed.
func (m *Manager) removeSnapshots(ctx context.Context, name string) error {
	if _, err := os.Lstat(m.snapshotDir(name)); errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(m.snapshotsDir()) // when its last snapshot went before
		return nil
	}
	sl, err := m.lockSnapshots(ctx, name)
	if err != nil {
		return err
	}
	ents, _ := os.ReadDir(m.snapshotDir(name))
	for _, e := range ents {
		if err := m.removeSnapshotDir(ctx, filepath.Join(m.snapshotDir(name), e.Name())); err != nil {
			sl.Unlock()
			return fmt.Errorf("remove the snapshots of %s: %w", name, err)
		}
	}
	err = os.Remove(m.snapshotDir(name))
	sl.Unlock() // its file goes with it
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(m.snapshotsDir()) // when it was the last
	return nil
}

// snapshotMove moves a machine's snapshots as it is renamed.
type snapshotMove struct {
	m        *Manager
	old, new string
	lock     *host.FileLock
}

// moveSnapshots prepares the move of old's snapshots to new: it takes
// old's snapshot lock, and refuses when snapshots of new are there
// already. Move moves them; Unlock ends.
func (m *Manager) moveSnapshots(ctx context.Context, old, new string) (*snapshotMove, error) {
	if _, err := os.Lstat(m.snapshotDir(new)); err == nil {
		return nil, fmt.Errorf("%w: snapshots of %s are in %s (remove them first)", ErrExists, new, m.snapshotDir(new))
	}
	mv := &snapshotMove{m: m, old: old, new: new}
	if _, err := os.Lstat(m.snapshotDir(old)); err == nil {
		l, err := m.lockSnapshots(ctx, old)
		if err != nil {
			return nil, err
		}
		mv.lock = l
	}
	return mv, nil
}

// Move moves the snapshots, if there are any; a failure is said, and
// leaves them under the old name.
func (mv *snapshotMove) Move() {
	if mv.lock == nil {
		return
	}
	if err := renameNoReplace(mv.m.snapshotDir(mv.old), mv.m.snapshotDir(mv.new)); err != nil {
		logrus.Warnf("the snapshots of %s stay in %s: %v", mv.old, mv.m.snapshotDir(mv.old), err)
	}
}

// Unlock releases the old name's snapshot lock.
func (mv *snapshotMove) Unlock() { mv.lock.Unlock() }
