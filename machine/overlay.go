package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

// StorageKind is how a machine's tree is kept (create --storage).
type StorageKind = storage.Kind

// StorageOverlay is the kind of a machine over its base.
const StorageOverlay = storage.Overlay

// ParseStorage checks a --storage value.
func ParseStorage(s string) (StorageKind, error) {
	k, err := storage.ParseKind(s)
	if err != nil {
		return "", fmt.Errorf("--storage: %v", err)
	}
	return k, nil
}

// storagePath is where nsbox remembers how machine name is stored.
func (m *Manager) storagePath(name string) string {
	return filepath.Join(m.StateDir, "storage", name+".json")
}

// storageOf is how machine name is stored; a machine nsbox recorded
// nothing of is a copy.
func (m *Manager) storageOf(name string) storage.Record {
	var rec storage.Record
	if b, err := os.ReadFile(m.storagePath(name)); err == nil && json.Unmarshal(b, &rec) == nil && rec.Kind != "" {
		return rec
	}
	return storage.Record{Kind: storage.Copy}
}

func (m *Manager) writeStorage(name string, rec storage.Record) error {
	if err := os.MkdirAll(filepath.Dir(m.storagePath(name)), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(rec, "", "  ")
	return host.WriteFileAtomic(m.storagePath(name), append(b, '\n'), 0o600)
}

// overlayDir holds the overlay machines' upper and work directories, in
// the store (root's alone): what a machine's root wrote is there with its
// host ids, setuid files included.
func (m *Manager) overlayDir() string { return filepath.Join(m.Store(), ".overlay") }

// layout is where overlay machine name's parts are.
func (m *Manager) layout(name string) storage.Layout {
	return storage.Layout{Target: m.Tree(name), Dir: filepath.Join(m.overlayDir(), name)}
}

// uidLock is the lock a throwaway run holds on its user id range for as
// long as it runs.
func (m *Manager) uidLock(base int) string {
	return filepath.Join(m.RunDir, "uids", strconv.Itoa(base)+".lck")
}

// pickUIDBase chooses a user id range that no overlay machine has and no
// throwaway run holds, for a new overlay machine or an ephemeral boot.
func (m *Manager) pickUIDBase() (int, error) {
	taken := map[int]bool{}
	for _, r := range m.overlayRecords() {
		taken[r.UIDBase] = true
	}
	for range 16 {
		base, err := storage.PickUIDBase(taken)
		if err != nil {
			return 0, err
		}
		if !host.Held(m.uidLock(base)) {
			return base, nil
		}
		taken[base] = true
	}
	return 0, errors.New("no free user id range")
}

// reserveUIDBase chooses a range as pickUIDBase does and holds it for a
// throwaway run until release is called: two runs at once never share
// their ids, nor does a machine made meanwhile.
func (m *Manager) reserveUIDBase() (base int, release func(), err error) {
	if err := os.MkdirAll(filepath.Join(m.RunDir, "uids"), 0o700); err != nil {
		return 0, nil, err
	}
	// The locks of runs whose nsbox was killed go (a lock taken here
	// removes its file when nobody else holds it).
	stale, _ := filepath.Glob(filepath.Join(m.RunDir, "uids", "*.lck"))
	for _, f := range stale {
		if l, err := host.LockFile(context.Background(), f, true, false); err == nil {
			l.Unlock()
		}
	}
	for range 16 {
		base, err := m.pickUIDBase()
		if err != nil {
			return 0, nil, err
		}
		l, err := host.LockFile(context.Background(), m.uidLock(base), true, false)
		if errors.Is(err, host.ErrLocked) {
			continue
		}
		if err != nil {
			return 0, nil, err
		}
		return base, l.Unlock, nil
	}
	return 0, nil, errors.New("no free user id range")
}

// overlayRecords are the overlay machines nsbox knows, by name.
func (m *Manager) overlayRecords() map[string]storage.Record {
	out := map[string]storage.Record{}
	files, _ := filepath.Glob(filepath.Join(m.StateDir, "storage", "*.json"))
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		rec := m.storageOf(name)
		if _, err := os.Lstat(rec.Tree); rec.Kind == storage.Overlay && err == nil {
			out[name] = rec
		}
	}
	return out
}

// baseUsers are the overlay machines made over version of cached base
// key: it is their lower layer, and stays as it is while they exist. Of an
// image base, every machine made from it (see machineBaseUsers).
func (m *Manager) baseUsers(bases, key, version string) []string {
	if bootstrap.IsImageKey(key) {
		return m.machineBaseUsers(bases, key, version)
	}
	var names []string
	for name, rec := range m.overlayRecords() {
		if rec.Base == key && rec.Version == version && (rec.Bases == "" || filepath.Clean(rec.Bases) == filepath.Clean(bases)) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// lowerOf is the tree overlay machine rec is over: the version of its base
// it was made from, wherever the cache keeps it now.
func (m *Manager) lowerOf(rec storage.Record) (string, error) {
	if rec.Version == "" {
		return rec.Lower, nil
	}
	return m.basesOf(rec).VersionRoot(rec.Base, rec.Version)
}

// basesOf is the base cache machine rec's base is in.
func (m *Manager) basesOf(rec storage.Record) *bootstrap.BaseCache {
	if rec.Bases != "" {
		return m.basesIn(rec.Bases)
	}
	return m.Bases()
}

// createOverlay makes machine name an overlay over the cached base for
// bo: no file of the base is copied.
func (m *Manager) createOverlay(ctx context.Context, name string, bo bootstrap.Options, o CreateOptions) error {
	if o.NoCache {
		return fmt.Errorf("%w: --storage overlay needs a cached base (leave out --no-cache)", ErrInvalidOption)
	}
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	return m.newOverlay(ctx, name, func() (storage.Record, error) {
		root, info, un, err := m.Bases().Get(ctx, bo, o.Progress)
		if err != nil {
			return storage.Record{}, err
		}
		unlock = un
		return storage.Record{Base: info.Key, Version: info.Version, Lower: root, Bases: m.Bases().Dir}, nil
	}, nil)
}

// cloneOverlay makes dst an overlay over the base version of stopped
// overlay machine src, with a copy of src's upper: what src changed, and
// nothing of the base, is copied.
func (m *Manager) cloneOverlay(ctx context.Context, src, dst string) error {
	from := m.storageOf(src)
	return m.newOverlay(ctx, dst, func() (storage.Record, error) {
		lower, err := m.lowerOf(from)
		return storage.Record{Base: from.Base, Version: from.Version, Bases: from.Bases, Lower: lower}, err
	}, func(upper string, uid int) error {
		if err := bootstrap.CopyTree(ctx, m.Runner, m.layout(src).Upper(), upper); err != nil {
			return err
		}
		// The copy is the new machine's root's, in its own range.
		return storage.Shift(upper, from.UpperBase(), uid)
	})
}

// newOverlay makes machine name an overlay over the base base returns
// (Base, Version, Lower), with an empty upper or the one fillUpper makes
// (given the path, which does not exist yet, and the new machine's
// range). Its hostname is written through the overlay and given to the
// machine's root.
func (m *Manager) newOverlay(ctx context.Context, name string, base func() (storage.Record, error), fillUpper func(upper string, uid int) error) error {
	return m.newOverlayWith(ctx, name, base, fillUpper, nil)
}

// newOverlayWith is newOverlay whose personalisation is personal's (given
// the mounted tree, it returns the paths it wrote as host root) instead of
// bootstrap.Personalise's; nil: Personalise's.
func (m *Manager) newOverlayWith(ctx context.Context, name string, base func() (storage.Record, error), fillUpper func(upper string, uid int) error, personal func(tree string) ([]string, error)) error {
	if personal == nil {
		personal = func(tree string) ([]string, error) { return personalised, bootstrap.Personalise(tree, name) }
	}
	var rec storage.Record
	lay := m.layout(name)
	// Set once this create holds the name (newTree's lock) and has
	// begun the upper: only then is lay.Dir its own to take away.
	made := false
	fill := func(tmp string) error {
		made = true
		var err error
		if rec, err = base(); err != nil {
			return err
		}
		uid, err := m.pickUIDBase()
		if err != nil {
			return err
		}
		rec.Kind, rec.UIDBase, rec.Tree = storage.Overlay, uid, m.Tree(name)
		// Left by a create that was killed: no machine of this name
		// exists (newTree checked, and holds its lock).
		if err := host.RemoveTree(lay.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(m.overlayDir(), 0o700); err != nil {
			return err
		}
		if err := lay.Prepare(rec.Lower, uid); err != nil {
			return err
		}
		// Recorded before the machine exists (a machine is never there
		// without it), and before the upper is filled (a clone's copy, a
		// receive's stream): prune finds the upper of a create killed
		// meanwhile by this record, with its staging tree.
		if err := m.writeStorage(name, rec); err != nil {
			return err
		}
		if fillUpper != nil {
			if err := os.Remove(lay.Upper()); err != nil {
				return err
			}
			if err := fillUpper(lay.Upper(), uid); err != nil {
				return err
			}
		}
		return nil
	}
	personalise := func(tmp string) error {
		at := storage.Layout{Target: tmp, Dir: lay.Dir}
		// A base version held without the base's lock (a receive's, a
		// clone's) may have moved since base() (a refresh made it an
		// earlier version): found again, and once more when a refresh
		// moved it between the lookup and the mount, as MountStorage.
		for try := 0; ; try++ {
			lower, err := m.lowerOf(rec)
			if err == nil {
				err = at.Mount(ctx, m.Runner, lower, rec.UIDBase)
			}
			if err == nil {
				break
			}
			if try > 0 {
				return err
			}
		}
		paths, err := personal(tmp)
		if uerr := at.Unmount(); err == nil {
			err = uerr
		}
		if err == nil {
			// What host root wrote belongs to the machine's root.
			err = storage.ShiftPaths(lay.Upper(), paths, rec.UIDBase)
		}
		return err
	}
	err := m.newTreeWith(ctx, name, fill, personalise)
	if err != nil && made {
		// A create that lost the name to another never gets here: what
		// is there is the winner's.
		_ = os.Remove(m.storagePath(name))
		_ = host.RemoveTree(lay.Dir)
		_ = os.Remove(m.overlayDir()) // when it was the only one
	}
	return err
}

// mountLock serialises the mounts and unmounts of one overlay machine.
func (m *Manager) mountLock(ctx context.Context, name string) (*host.FileLock, error) {
	if err := os.MkdirAll(m.overlayDir(), 0o700); err != nil {
		return nil, err
	}
	return host.LockFile(ctx, filepath.Join(m.overlayDir(), "."+name+".lck"), true, true)
}

// MountStorage mounts overlay machine name's tree, if it is not mounted
// yet (nsbox __storage mount NAME, before a start). Other kinds need
// nothing.
func (m *Manager) MountStorage(ctx context.Context, name string) error {
	rec := m.storageOf(name)
	if rec.Kind != storage.Overlay {
		return nil
	}
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if storage.Mounted(m.Tree(name)) {
		return nil
	}
	// A refresh of the base may move this version between the lookup
	// and the mount: looked up again once.
	for try := 0; ; try++ {
		lower, err := m.lowerOf(rec)
		if err != nil {
			return fmt.Errorf("%s cannot be mounted: %w", name, err)
		}
		err = m.layout(name).Mount(ctx, m.Runner, lower, rec.UpperBase())
		if err == nil || try > 0 || !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
}

// UnmountStorage unmounts overlay machine name's tree after its nspawn
// ended (nsbox __storage unmount NAME, the hook after a stop). A hook
// that comes late, after another boot of the machine began (a boot cut
// short can end after its caller gave up on it), leaves that boot's tree:
// under the mount lock, which a boot's mount also takes, a boot in
// progress holds the boot lock, and a machine up again has a live leader.
func (m *Manager) UnmountStorage(ctx context.Context, name string) error {
	return m.unmountUnless(ctx, name, func() bool { return m.bootingOrUp(ctx, name) })
}

// bootingOrUp reports whether a boot of machine name is in progress (its
// boot lock is held) or the machine is up (a live leader): what a hook
// after an earlier stop must leave alone. The caller holds the mount lock.
func (m *Manager) bootingOrUp(ctx context.Context, name string) bool {
	l, err := m.bootLock(name)
	if err != nil {
		return true
	}
	l.Unlock()
	r, err := m.Backend.Get(ctx, name)
	return err == nil && r.Leader > 0 && syscall.Kill(r.Leader, 0) == nil
}

// unmountNow unmounts overlay machine name's tree: what a boot that
// failed (and holds the boot lock) mounted.
func (m *Manager) unmountNow(ctx context.Context, name string) error {
	return m.unmountUnless(ctx, name, func() bool { return false })
}

// unmountUnless unmounts overlay machine name's tree unless busy says,
// under the mount lock, that something needs it.
func (m *Manager) unmountUnless(ctx context.Context, name string, busy func() bool) error {
	if m.storageOf(name).Kind != storage.Overlay {
		return nil
	}
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if busy() {
		return nil
	}
	return m.layout(name).Unmount()
}

// withTree runs fn while machine name's tree is there to read and write:
// an overlay machine that is not mounted is mounted for fn and unmounted
// after, unless it started meanwhile.
func (m *Manager) withTree(ctx context.Context, name string, fn func() error) error {
	if m.storageOf(name).Kind != storage.Overlay || storage.Mounted(m.Tree(name)) {
		return fn()
	}
	if err := m.MountStorage(ctx, name); err != nil {
		return err
	}
	defer func() {
		// Unless the machine started meanwhile.
		running := func() bool {
			_, err := m.Backend.Get(ctx, name)
			return err == nil
		}
		if err := m.unmountUnless(context.WithoutCancel(ctx), name, running); err != nil {
			logrus.Warnf("%v", err)
		}
	}()
	return fn()
}

// removeStorage removes what overlay machine name has besides its tree:
// its upper and work directories and its record. The base stays.
func (m *Manager) removeStorage(name string) error {
	if m.storageOf(name).Kind == storage.Overlay {
		if err := m.layout(name).Unmount(); err != nil {
			return err
		}
		// What an export or a mount killed half way left mounted.
		for _, p := range []string{"view", "upper-view", "lower"} {
			host.UnmountUnder(filepath.Join(m.layout(name).Dir, p))
		}
		if err := host.RemoveTree(m.layout(name).Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		_ = os.Remove(filepath.Join(m.overlayDir(), "."+name+".lck"))
		_ = os.Remove(m.overlayDir()) // when it was the last
	}
	if err := os.Remove(m.storagePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// storageHooks are the commands a backend runs around an overlay
// machine's systemd-nspawn: mount before, unmount after.
func (m *Manager) storageHooks(name string) (pre, post []string, err error) {
	_, ephemeral := m.ephemeral(name)
	if m.storageOf(name).Kind != storage.Overlay && !ephemeral {
		return nil, nil, nil
	}
	if m.Self == nil {
		return nil, nil, fmt.Errorf("no nsbox binary to mount %s's overlay", name)
	}
	self, err := m.Self()
	if err != nil {
		return nil, nil, err
	}
	base := []string{self, "--root-dir", m.RootDir, "--cache-dir", m.CacheDir, StorageCommand}
	if ephemeral {
		return append(append([]string{}, base...), "mount-ephemeral", name), append(append([]string{}, base...), "unmount-ephemeral", name), nil
	}
	return append(append([]string{}, base...), "mount", name), append(append([]string{}, base...), "unmount", name), nil
}

// StorageCommand is the hidden command units run to mount and unmount an
// overlay machine's tree: nsbox __storage mount|unmount NAME.
const StorageCommand = "__storage"

// alignUpper stores stopped overlay machine name's upper as the next run
// needs it: under its range for a run with a user namespace, under the
// ids the machine sees for one without (--private-users=false), where
// host root is the machine's root. The upper is re-owned when the mode
// changed since the last run (it holds only what the machine changed).
func (m *Manager) alignUpper(ctx context.Context, name string, privateUsers bool) (storage.Record, error) {
	rec := m.storageOf(name)
	if rec.Kind != storage.Overlay || rec.Unshifted == !privateUsers {
		return rec, nil
	}
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return rec, err
	}
	defer l.Unlock()
	if storage.Mounted(m.Tree(name)) {
		return rec, fmt.Errorf("%w: %s is mounted by another command; try again", ErrBusy, name)
	}
	from, to := rec.UpperBase(), rec.UIDBase
	if !privateUsers {
		to = 0
	}
	if err := storage.Shift(m.layout(name).Upper(), from, to); err != nil {
		return rec, err
	}
	rec.Unshifted = !privateUsers
	return rec, m.writeStorage(name, rec)
}

// readOSReleaseOf reads the os-release of a machine whose tree is root:
// of a stopped overlay machine (nothing mounted), the one in its upper
// when it changed it, else its base's.
func (m *Manager) readOSReleaseOf(name, root string, rec storage.Record) (OSRelease, bool) {
	if rec.Kind != storage.Overlay || storage.Mounted(rec.Tree) {
		return readOSRelease(root)
	}
	if osr, ok := readOSRelease(m.layout(name).Upper()); ok {
		return osr, true
	}
	lower, err := m.lowerOf(rec)
	if err != nil {
		return OSRelease{}, false
	}
	return readOSRelease(lower)
}

// withView runs fn on a read-only view of stopped overlay machine name's
// tree as the machine sees it (owners unshifted), mounted for fn alone.
func (m *Manager) withView(ctx context.Context, name string, fn func(root string) error) error {
	rec := m.storageOf(name)
	lower, err := m.lowerOf(rec)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	lay := m.layout(name)
	view := filepath.Join(lay.Dir, "view")
	// One left by a killed nsbox goes first.
	_ = storage.Layout{Target: view}.Unmount()
	if err := lay.MountView(ctx, m.Runner, lower, rec.UpperBase(), view); err != nil {
		return err
	}
	defer func() {
		if err := (storage.Layout{Target: view}).Unmount(); err != nil {
			logrus.Warn(err)
		}
		_ = os.Remove(view)
		_ = os.Remove(filepath.Join(lay.Dir, "upper-view"))
	}()
	return fn(view)
}

// personalised are the files bootstrap.Personalise writes.
var personalised = []string{"etc/hostname", "etc/machine-id", bootstrap.DBusMachineID}

// bootWritten are the files a boot writes into a tree before the start:
// its machine id (unshareMachineID), network (prepareNetwork) and journal
// directory (ensurePersistentJournal).
var bootWritten = append([]string{machineNetworkFile,
	"etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
	"etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
	"var/log/journal"}, personalised...)

// writeTree runs fn, which writes the files of Personalise into stopped
// machine name's tree as host root, while the tree is there (withTree);
// they become the machine root's in an overlay machine's upper.
func (m *Manager) writeTree(ctx context.Context, name string, fn func() error) error {
	rec := m.storageOf(name)
	return m.withTree(ctx, name, func() error {
		if err := fn(); err != nil {
			return err
		}
		if rec.Kind == storage.Overlay && !rec.Unshifted {
			return storage.ShiftPaths(m.layout(name).Upper(), personalised, rec.UIDBase)
		}
		return nil
	})
}

// renameStorage moves what overlay machine old has besides its tree to
// new: its upper and work directories and its record.
func (m *Manager) renameStorage(old, new string) error {
	rec := m.storageOf(old)
	if err := renameNoReplace(m.layout(old).Dir, m.layout(new).Dir); err != nil {
		return err
	}
	rec.Tree = m.Tree(new)
	if err := m.writeStorage(new, rec); err != nil {
		_ = os.Rename(m.layout(new).Dir, m.layout(old).Dir)
		return err
	}
	_ = os.Remove(m.storagePath(old))
	_ = os.Remove(filepath.Join(m.overlayDir(), "."+old+".lck"))
	return nil
}

// recordBase remembers the base version a machine that is a copy or a
// btrfs snapshot was made from (rec's Base, Version and Bases), which
// diff compares it with. A record that cannot be written leaves the
// machine whole: diff then says it has no base.
func (m *Manager) recordBase(name string, rec storage.Record) {
	if (rec.Base == "" || rec.Version == "") && rec.Source == "" {
		return
	}
	rec.Kind, rec.Tree = storage.Copy, m.Tree(name)
	if bootstrap.IsSubvolume(rec.Tree) {
		rec.Kind = storage.Btrfs
	}
	if err := m.writeStorage(name, rec); err != nil {
		logrus.Warnf("%s: remember its base (for diff): %v", name, err)
	}
}

// probePrefix starts the names of probeOverlay's tries in the overlay
// directory.
const probePrefix = ".#probe-"

// probeOverlay tries what an overlay machine here needs: a lower in the
// base cache, mapped to a machine's range (an idmapped mount), under an
// upper in the store. It leaves nothing. A receive asks it before it asks
// for an overlay machine's upper alone, which it could not mount
// otherwise.
func (m *Manager) probeOverlay(ctx context.Context) error {
	bases := m.Bases().Dir
	if err := host.PrivateDir(bases); err != nil {
		return err
	}
	lower, err := os.MkdirTemp(bases, ".#probe.")
	if err != nil {
		return err
	}
	defer os.Remove(lower)
	if err := os.MkdirAll(m.overlayDir(), 0o700); err != nil {
		return err
	}
	defer os.Remove(m.overlayDir()) // when nothing else is there
	// Locked before its directory is made: prune takes the directory of
	// a probe that was killed (pruneProbes), never of one at work.
	lf, err := os.CreateTemp(m.overlayDir(), probePrefix+"*.lck")
	if err != nil {
		return err
	}
	lf.Close()
	l, err := host.LockFile(ctx, lf.Name(), true, false)
	if err != nil {
		_ = os.Remove(lf.Name())
		return err
	}
	defer l.Unlock()
	dir := strings.TrimSuffix(lf.Name(), ".lck")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	lay := storage.Layout{Target: filepath.Join(dir, "tree"), Dir: dir}
	defer func() {
		_ = lay.Unmount()
		host.UnmountUnder(dir)
		_ = host.RemoveTree(dir)
	}()
	if err := os.Mkdir(lay.Target, 0o700); err != nil {
		return err
	}
	uid, err := m.pickUIDBase()
	if err != nil {
		return err
	}
	if err := lay.Prepare(lower, uid); err != nil {
		return err
	}
	return lay.Mount(ctx, m.Runner, lower, uid)
}
