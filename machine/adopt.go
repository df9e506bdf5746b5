package machine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Adopt makes machinectl's image name, a directory or btrfs subvolume in
// ImagesDir, the nsbox machine newName ("" keeps its name): its tree moves
// into the store (a rename on one file system; a copy into a staging tree
// renamed into place, then the original's removal, across two), and
// ImagesDir/NAME becomes nsbox's link to it, so machinectl still finds it.
// Its settings file in SettingsDir is nsbox's settings file already, and
// moves with a new name. Refused, with nothing changed: a running image,
// a raw one, a read-only one, one elsewhere than ImagesDir (a vendor's in
// /usr/lib/machines), one locked by nspawn or machinectl, a name nsbox's
// root directory has, and a settings file nsbox cannot read.
//
// An interrupted adopt leaves the image where it was or the machine where
// it went: the rename is one step; a copy is a staging tree until whole
// (swept by the next command on the name), and the original leaves
// machinectl's sight (a hidden name, removed, or swept by the next adopt
// of the name) only after the machine is in place.
func (m *Manager) Adopt(ctx context.Context, name, newName string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if newName == "" {
		newName = name
	}
	if err := ValidateName(newName); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	if err := m.checkOwner(newName); err != nil {
		return err
	}
	img, err := m.adoptable(ctx, name)
	if err != nil {
		return err
	}
	if _, _, err := readSettings(m.settingsPath(name)); err != nil {
		return fmt.Errorf("its settings file: %w (fix it or move it away first)", err)
	}
	if newName != name {
		if _, err := os.Lstat(m.settingsPath(newName)); err == nil {
			return fmt.Errorf("%w: %s has a settings file already (%s)", ErrExists, newName, m.settingsPath(newName))
		}
	}
	if err := m.ensureStore(); err != nil {
		return err
	}
	lock, err := m.lockImage(img.Path, true)
	if errors.Is(err, ErrBusy) {
		return fmt.Errorf("%w: %s is in use by a systemd-nspawn, machinectl or another nsbox", ErrBusy, img.Path)
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	// Again under the lock: the image may have changed, or started.
	if again, err := m.adoptable(ctx, name); err != nil {
		return err
	} else if again != img {
		return fmt.Errorf("%w: %s changed meanwhile; try again", ErrBusy, img.Path)
	}
	target := m.Tree(newName)
	nl, err := m.lockNewTree(newName)
	if err != nil {
		return err
	}
	defer nl.Unlock()
	for _, p := range []string{target, m.Path(newName)} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s (choose another name: nsbox adopt %s NEWNAME)", ErrExists, m.Path(newName), name)
		}
	}
	if newName != name {
		if other, ok := m.machinectlImage(newName); ok {
			return fmt.Errorf("%w: %s is machinectl's image %s", ErrExists, newName, other.Path)
		}
	}
	m.sweepStaging(newName)
	m.sweepAdopted(name)

	err = renameNoReplace(img.Path, target)
	switch {
	case errors.Is(err, unix.EXDEV):
		if err := m.adoptCopy(ctx, img, newName); err != nil {
			return err
		}
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %s", ErrExists, m.Path(newName))
	case err != nil:
		return fmt.Errorf("move %s into %s: %w", img.Path, m.Store(), err)
	}
	_ = os.Remove(lockPath(img.Path))
	// What a machine of the name that is gone left (prune's to take).
	_ = os.Remove(m.storagePath(newName))
	if newName != name {
		if b, err := os.ReadFile(m.settingsPath(name)); err == nil {
			if err := host.WriteFileAtomic(m.settingsPath(newName), b, 0o644); err != nil {
				logrus.Warnf("%s: its settings stay in %s: %v", newName, m.settingsPath(name), err)
			} else {
				_ = os.Remove(m.settingsPath(name))
			}
		}
		if _, err := os.Lstat("/etc/systemd/system/machines.target.wants/systemd-nspawn@" + name + ".service"); err == nil {
			logrus.Warnf("machinectl enable %s still starts systemd-nspawn@%s.service, which finds no image now (machinectl disable %s; nsbox enable %s)", name, name, name, newName)
		}
	}
	if _, err := os.Lstat(filepath.Join(img.Dir, name+".nspawn")); err == nil {
		logrus.Warnf("%s stays where it is: nsbox reads settings from %s only", filepath.Join(img.Dir, name+".nspawn"), m.SettingsDir)
	}
	m.published(newName)
	logrus.Infof("moved %s to %s; %s is nsbox's link to it", img.Path, target, filepath.Join(m.ImagesDir, newName))
	return nil
}

// adoptable is machinectl's image name, if Adopt can take it.
func (m *Manager) adoptable(ctx context.Context, name string) (MachinectlImage, error) {
	img, ok := m.machinectlImage(name)
	if !ok {
		if m.exists(name) {
			return img, fmt.Errorf("%w: %s is an nsbox machine already", ErrExists, name)
		}
		return img, fmt.Errorf("%w: no image %q in %s (see: machinectl list-images)", ErrNotFound, name, m.ImagesDir)
	}
	switch {
	case img.Type == ImageRaw:
		return img, fmt.Errorf("%w: %s is a raw disk image, and nsbox keeps directory trees only "+
			"(machinectl export-tar %s FILE.tar, then nsbox import FILE.tar NAME)", ErrInvalidOption, img.Path, name)
	case filepath.Clean(img.Dir) != filepath.Clean(m.ImagesDir):
		return img, fmt.Errorf("%w: %s is in %s, and nsbox adopts images in %s only (machinectl clone %s NEWNAME copies it there)",
			ErrInvalidOption, name, img.Dir, m.ImagesDir, name)
	case img.ReadOnly:
		return img, fmt.Errorf("%w: %s is read-only (make it writable first: machinectl read-only %s false)", ErrInvalidOption, img.Path, name)
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return img, fmt.Errorf("%w: %s (stop it first: nsbox stop %s)", ErrRunning, name, name)
	} else if !errors.Is(err, ErrNotRunning) {
		return img, err
	}
	if err := validateRoot(img.Path); err != nil {
		return img, fmt.Errorf("%w: %v", ErrInvalidOption, err)
	}
	return img, nil
}

// adoptCopy adopts img across file systems: a copy in a staging tree that
// becomes machine newName when whole; then the original is renamed to a
// hidden name beside it (out of machinectl's sight) and removed.
func (m *Manager) adoptCopy(ctx context.Context, img MachinectlImage, newName string) error {
	tmp, held, err := m.stage(newName)
	if err != nil {
		return err
	}
	defer held.Close()
	ok := false
	defer func() {
		if !ok {
			if err := host.RemoveTree(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
				logrus.Warnf("could not remove %s: %v", tmp, err)
			}
		}
	}()
	if err := os.Remove(tmp); err != nil {
		return err
	}
	logrus.Infof("%s is on another file system than %s: copying it", img.Path, m.Store())
	if err := bootstrap.CopyTree(ctx, m.Runner, img.Path, tmp); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, m.Tree(newName)); err != nil {
		return fmt.Errorf("%w: %s", ErrExists, m.Path(newName))
	}
	ok = true
	var b [8]byte
	_, _ = rand.Read(b[:])
	hidden := filepath.Join(img.Dir, ".#adopt."+img.Name+"."+hex.EncodeToString(b[:]))
	hl, err := host.LockFile(context.Background(), lockPath(hidden), true, false)
	if err != nil {
		logrus.Warnf("%s is nsbox's now, but its original stays at %s: %v (remove it by hand)", newName, img.Path, err)
		return nil
	}
	defer func() { hl.Unlock(); _ = os.Remove(lockPath(hidden)) }()
	if err := renameNoReplace(img.Path, hidden); err != nil {
		logrus.Warnf("%s is nsbox's now, but its original stays at %s: %v (remove it by hand)", newName, img.Path, err)
		return nil
	}
	if err := host.RemoveTree(hidden); err != nil {
		logrus.Warnf("%s is nsbox's now; the rest of its original is at %s: %v", newName, hidden, err)
	}
	return nil
}

// adoptedName matches the hidden originals adoptCopy leaves of name.
func adoptedName(name string) *regexp.Regexp {
	return regexp.MustCompile(`^\.#adopt\.` + regexp.QuoteMeta(name) + `\.[0-9a-f]{16}$`)
}

// sweepAdopted removes the originals an adopt of name that died left in
// ImagesDir after its copy was in place: only those whose lock nobody
// holds.
func (m *Manager) sweepAdopted(name string) {
	match := adoptedName(name)
	ents, _ := os.ReadDir(m.ImagesDir)
	for _, e := range ents {
		if !e.IsDir() || !match.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(m.ImagesDir, e.Name())
		l, err := host.LockFile(context.Background(), lockPath(dir), true, false)
		if err != nil {
			continue
		}
		logrus.Infof("removing %s, the original of an interrupted adopt", dir)
		if err := host.RemoveTree(dir); err != nil {
			logrus.Warnf("could not remove %s: %v", dir, err)
		}
		l.Unlock()
		_ = os.Remove(lockPath(dir))
	}
}
