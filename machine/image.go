package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// lockStopped takes name's image lock exclusively, refusing a machine that
// runs (under nsbox, or a systemd-nspawn started by hand).
func (m *Manager) lockStopped(ctx context.Context, name string) (*Lock, error) {
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: %s (stop it first: nsbox stop %s)", ErrRunning, name, name)
	}
	l, err := m.lockImage(m.Dir(name), true)
	if errors.Is(err, ErrBusy) {
		// The lock does not say whether a systemd-nspawn the backend does
		// not know runs it or another nsbox exports, clones or boots it.
		return nil, fmt.Errorf("%w: %s is in use by a systemd-nspawn or another nsbox", ErrBusy, name)
	}
	return l, err
}

// newTree runs fill on a staging tree ".#dst.XXXX" in the store and
// renames it into place as machine dst, personalised; on any failure
// nothing is left. fill gets a path that does not exist yet.
func (m *Manager) newTree(ctx context.Context, dst string, fill func(tmp string) error) error {
	return m.newTreeWith(ctx, dst, fill, func(tmp string) error { return bootstrap.Personalise(tmp, dst) })
}

// newTreeWith is newTree with the step that gives the new tree its name
// and machine id: an overlay's is written through the overlay.
func (m *Manager) newTreeWith(ctx context.Context, dst string, fill, personalise func(tmp string) error) error {
	if err := m.checkName(dst, false); err != nil {
		return err
	}
	if err := m.ensureStore(); err != nil {
		return err
	}
	if err := m.taken(dst); err != nil {
		return err
	}
	target := m.Tree(dst)
	lock, err := m.lockNewTree(dst)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := m.taken(dst); err != nil {
		return err
	}
	m.sweepStaging(dst)
	tmp, held, err := m.stage(dst)
	if err != nil {
		return err
	}
	defer held.Close()
	ok := false
	defer func() {
		if !ok {
			host.UnmountUnder(tmp)
			if err := host.RemoveTree(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
				logrus.Warnf("could not remove %s: %v", tmp, err)
			}
		}
	}()
	if err := os.Remove(tmp); err != nil {
		return err
	}
	if err := fill(tmp); err != nil {
		return err
	}
	if err := personalise(tmp); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, target); errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: %s", ErrExists, m.Path(dst))
	} else if err != nil {
		return err
	}
	ok = true
	m.published(dst)
	return nil
}

// Clone copies stopped machine src to a new machine dst, with its boot
// options. The copy gets its own hostname and machine id.
func (m *Manager) Clone(ctx context.Context, src, dst string) error {
	if err := m.checkRootAndName(src, true); err != nil {
		return err
	}
	if err := m.checkName(dst, false); err != nil {
		return err
	}
	lock, err := m.lockStopped(ctx, src)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	from := m.storageOf(src)
	if from.Kind == storage.Overlay {
		err = m.cloneOverlay(ctx, src, dst)
	} else {
		err = m.newTree(ctx, dst, func(tmp string) error {
			return bootstrap.CopyTree(ctx, m.Runner, m.Dir(src), tmp)
		})
	}
	if err != nil {
		return err
	}
	if from.Kind != storage.Overlay {
		// A copy of a copy: the base src was made from is its base too.
		m.recordBase(dst, from)
	}
	if b, err := os.ReadFile(m.settingsPath(src)); err == nil {
		if err := host.WriteFileAtomic(m.settingsPath(dst), b, 0o644); err != nil {
			return err
		}
	}
	if img := m.ImageOf(src); img != nil {
		if err := m.writeImageRecord(dst, img); err != nil {
			logrus.Warnf("%s: remember its image: %v", dst, err)
		}
	}
	return nil
}

// Rename gives stopped machine old the name new: its tree, settings and
// ImagesDir link move; a hostname that was the old name follows.
func (m *Manager) Rename(ctx context.Context, old, new string) error {
	if err := m.checkRootAndName(old, true); err != nil {
		return err
	}
	if err := m.checkName(new, false); err != nil {
		return err
	}
	if socks := m.Sockets(old); len(socks) > 0 {
		// Their units run nsbox for the machine by its name.
		return fmt.Errorf("%w: %s has sockets (%s) that boot it by its name: remove them first (nsbox disable %s), and enable them again for %s", ErrInvalidOption, old, strings.Join(socks, ", "), old, new)
	}
	lock, err := m.lockStopped(ctx, old)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := m.ensureStore(); err != nil {
		return err
	}
	if err := m.taken(new); err != nil {
		return err
	}
	snaps, err := m.moveSnapshots(ctx, old, new)
	if err != nil {
		return err
	}
	defer snaps.Unlock()
	nl, err := m.lockNewTree(new)
	if err != nil {
		return err
	}
	defer nl.Unlock()
	oldTree := m.Dir(old)
	overlay := m.storageOf(old).Kind == storage.Overlay
	if overlay {
		// Its tree is only a mount point while nothing has it mounted.
		if err := m.layout(old).Unmount(); err != nil {
			return err
		}
	}
	if err := renameNoReplace(oldTree, m.Tree(new)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: %s", ErrExists, m.Path(new))
		}
		return err
	}
	if overlay {
		if err := m.renameStorage(old, new); err != nil {
			_ = os.Rename(m.Tree(new), oldTree)
			return err
		}
	} else if rec := m.storageOf(old); rec.Base != "" || rec.Source != "" {
		m.recordBase(new, rec)
		_ = os.Remove(m.storagePath(old))
	}
	snaps.Move()
	if b, err := os.ReadFile(m.settingsPath(old)); err == nil {
		if err := host.WriteFileAtomic(m.settingsPath(new), b, 0o644); err == nil {
			_ = os.Remove(m.settingsPath(old))
		}
	}
	for _, p := range [][2]string{{m.linkPath(old), m.linkPath(new)}, {m.limitsPath(old), m.limitsPath(new)}, {m.imagePath(old), m.imagePath(new)}} {
		if err := os.Rename(p[0], p[1]); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if a, ok := m.Backend.(backend.Autostart); ok && a.UnitFileState(ctx, old) == "enabled" {
		// The unit names the old tree: it goes, and enable makes the new one.
		a.Forget(ctx, old)
		logrus.Warnf("%s was enabled as %s; enable it again: nsbox enable %s", old, old, new)
	}
	if oldTree == m.Path(old) {
		_ = os.Remove(lockPath(oldTree)) // a tree of an earlier nsbox, now in the store
	}
	if cur, err := os.Readlink(filepath.Join(m.ImagesDir, old)); err == nil && cur == oldTree {
		_ = os.Remove(filepath.Join(m.ImagesDir, old))
	}
	m.startHooks(old, true)
	m.unpublish(old)
	m.release(old)
	m.published(new)
	return m.writeTree(ctx, new, func() error {
		if r, err := os.OpenRoot(m.Dir(new)); err == nil {
			if b, err := readSmall(r, "etc/hostname"); err == nil && strings.TrimSpace(string(b)) == old {
				_ = bootstrap.Personalise(m.Dir(new), new)
			}
			r.Close()
		}
		return nil
	})
}

// fsImmutable is FS_IMMUTABLE_FL: the flag machinectl read-only sets on
// a directory image.
const fsImmutable = 0x00000010

// SetReadOnly marks a stopped machine's tree read-only (or writable) the
// way machinectl does: the immutable flag on its top directory. A
// read-only machine boots with nspawn's --read-only.
func (m *Manager) SetReadOnly(ctx context.Context, name string, ro bool) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	top := m.readOnlyDir(name)
	f, err := os.Open(top)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("read the attributes of %s: %w", top, err)
	}
	if ro {
		flags |= fsImmutable
	} else {
		flags &^= fsImmutable
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags)); err != nil {
		return fmt.Errorf("set the immutable attribute of %s: %w", top, err)
	}
	return nil
}

// readOnlyDir is the directory whose immutable flag marks machine name
// read-only: its tree's top, or an overlay machine's upper (its tree is a
// mount point, and what is mounted there shows the upper's flags only
// while mounted).
func (m *Manager) readOnlyDir(name string) string {
	if m.storageOf(name).Kind == storage.Overlay {
		return m.layout(name).Upper()
	}
	return m.Dir(name)
}

// ReadOnly reports whether a machine's tree is marked read-only.
func (m *Manager) ReadOnly(name string) bool {
	f, err := os.Open(m.readOnlyDir(name))
	if err != nil {
		return false
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	return err == nil && flags&fsImmutable != 0
}
