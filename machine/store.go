package machine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// StoreName is the directory under RootDir that holds the machine trees.
// With user namespaces and idmapped mounts, what a machine's root creates
// is owned by uid 0 on the host disk: a setuid file or a device node in a
// tree that host users can reach is host root for all of them. So the
// trees live in RootDir/.nsbox, root's and mode 0700 whatever the mode of
// RootDir (as machined keeps /var/lib/machines), and RootDir/NAME is a link
// into it: the path users and machinectl know, which only root can follow
// to the end. A machine name never starts with a dot, so the store cannot
// clash with one.
const StoreName = ".nsbox"

// Store is the directory of machine trees and staging trees.
func (p Paths) Store() string { return filepath.Join(p.RootDir, StoreName) }

// Tree is where machine name's tree lives: in the store.
func (p Paths) Tree(name string) string { return filepath.Join(p.Store(), name) }

// Path is the path users know machine name by: RootDir/NAME, a link to
// its tree.
func (p Paths) Path(name string) string { return filepath.Join(p.RootDir, name) }

// storeLink is what RootDir/NAME points to: relative, so the pair can be
// moved or mounted elsewhere together.
func storeLink(name string) string { return StoreName + "/" + name }

// Dir is the tree of machine name. A machine made before the store
// existed, not moved into it yet (it was running), is still at
// RootDir/NAME.
func (m *Manager) Dir(name string) string {
	tree := m.Tree(name)
	if _, err := os.Lstat(tree); err != nil && isLegacy(m.Path(name)) {
		return m.Path(name)
	}
	return tree
}

// isLegacy reports whether path is a machine tree of an earlier nsbox: a
// real directory (no link) holding os-release.
func isLegacy(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.IsDir() {
		return false
	}
	_, ok := readOSRelease(path)
	return ok
}

// ensureStore makes the store, or checks it: a directory of root's, not a
// link, mode 0700 (a widened mode is narrowed again).
func (m *Manager) ensureStore() error {
	if err := host.PrivateDir(m.Store()); err != nil {
		return fmt.Errorf("%w (nsbox keeps machine trees there)", err)
	}
	return nil
}

// publish makes RootDir/NAME the link to name's tree. An existing link of
// nsbox's is replaced; anything else there is left and said.
func (m *Manager) publish(name string) {
	path := m.Path(name)
	if cur, err := os.Readlink(path); err == nil && cur == storeLink(name) {
		return
	}
	tmp := filepath.Join(m.RootDir, ".#"+name+".link")
	_ = os.Remove(tmp)
	if err := os.Symlink(storeLink(name), tmp); err != nil {
		logrus.Warnf("link %s: %v", path, err)
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		_ = os.Remove(tmp)
		logrus.Warnf("%s exists and is not nsbox's link: the machine is at %s", path, m.Tree(name))
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		logrus.Warnf("link %s: %v", path, err)
	}
}

// unpublish removes RootDir/NAME when it is nsbox's link.
func (m *Manager) unpublish(name string) {
	if cur, err := os.Readlink(m.Path(name)); err == nil && cur == storeLink(name) {
		_ = os.Remove(m.Path(name))
	}
}

// migrateLegacy moves the trees of an earlier nsbox (real directories at
// RootDir/NAME) into the store, leaving the link in their place. A tree in
// use (a running machine) is locked and stays until a later command.
func (m *Manager) migrateLegacy() {
	if m.Euid != 0 {
		return
	}
	ents, err := os.ReadDir(m.RootDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || strings.HasPrefix(name, ".") || ValidateName(name) != nil || !isLegacy(m.Path(name)) {
			continue
		}
		if err := m.migrate(name); err != nil {
			logrus.Debugf("move %s into %s: %v", m.Path(name), m.Store(), err)
		}
	}
}

func (m *Manager) migrate(name string) error {
	if err := m.ensureStore(); err != nil {
		return err
	}
	old := m.Path(name)
	lock, err := m.lockImage(old, true)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if !isLegacy(old) {
		return nil
	}
	if err := renameNoReplace(old, m.Tree(name)); err != nil {
		return err
	}
	_ = os.Remove(lockPath(old))
	m.publish(name)
	if cur, err := os.Readlink(filepath.Join(m.ImagesDir, name)); err == nil && cur == old {
		_ = os.Remove(filepath.Join(m.ImagesDir, name))
	}
	m.linkImage(name)
	m.claim(name)
	logrus.Infof("moved %s into %s (only root may reach machine trees); %s is now a link to it", old, m.Store(), old)
	return nil
}

// namePath is where the owner of name is recorded. A machine name is
// unique on the host, whatever root directory its tree is under: settings, units, addresses, limits, runtime state and
// machined's registrations are all keyed by name. StateDir/names/NAME
// records which root directory a name belongs to (a link to it).
func (m *Manager) namePath(name string) string {
	return filepath.Join(m.StateDir, "names", name)
}

// claim records that name belongs to this root directory.
func (m *Manager) claim(name string) {
	path := m.namePath(name)
	if cur, err := os.Readlink(path); err == nil && cur == m.RootDir {
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		logrus.Warnf("record %s: %v", name, err)
		return
	}
	tmp := filepath.Join(filepath.Dir(path), ".#"+name)
	_ = os.Remove(tmp)
	if err := os.Symlink(m.RootDir, tmp); err == nil {
		err = os.Rename(tmp, path)
		if err != nil {
			_ = os.Remove(tmp)
			logrus.Warnf("record %s: %v", name, err)
		}
	}
}

// release forgets name, when it is this root directory's.
func (m *Manager) release(name string) {
	if cur, err := os.Readlink(m.namePath(name)); err == nil && cur == m.RootDir {
		_ = os.Remove(m.namePath(name))
	}
}

// owner is the root directory that machine name belongs to, when it is
// another than this one and its machine is still there; "" otherwise.
// Machines made before names were recorded are found through their link in
// ImagesDir.
func (m *Manager) owner(name string) string {
	root, err := os.Readlink(m.namePath(name))
	if err != nil {
		root = ""
		if t, err := os.Readlink(filepath.Join(m.ImagesDir, name)); err == nil && filepath.IsAbs(t) && filepath.Base(t) == name {
			root = filepath.Dir(t)
			if filepath.Base(root) == StoreName {
				root = filepath.Dir(root)
			}
		}
	}
	if root == "" || root == m.RootDir {
		return ""
	}
	other := Paths{RootDir: root}
	if fi, err := os.Lstat(other.Tree(name)); err == nil && fi.IsDir() {
		return root
	}
	if isLegacy(other.Path(name)) {
		return root
	}
	return ""
}

// checkOwner refuses a name that belongs to another root directory.
func (m *Manager) checkOwner(name string) error {
	if o := m.owner(name); o != "" {
		return fmt.Errorf("%w: machine %s is under %s; names are unique on the host (use: nsbox --root-dir %s ...)", ErrOtherRoot, name, o, o)
	}
	return nil
}

// taken says why name cannot be made here: its tree, or something at
// RootDir/NAME, or machinectl's image of the name exists already (names
// are unique on the host: machinectl would not find nsbox's machine).
func (m *Manager) taken(name string) error {
	for _, p := range []string{m.Tree(name), m.Path(name)} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s (remove it first: nsbox remove %s)", ErrExists, m.Path(name), name)
		}
	}
	if img, ok := m.machinectlImage(name); ok {
		return fmt.Errorf("%w: %s is machinectl's image %s (adopt it: nsbox adopt %s, or choose another name)", ErrExists, name, img.Path, name)
	}
	return nil
}

// published makes a new tree of name known: the link at RootDir/NAME, the
// one in ImagesDir for machinectl, and the record of its root directory.
func (m *Manager) published(name string) {
	m.publish(name)
	m.linkImage(name)
	m.claim(name)
}

// stagingName matches the staging trees of one name: ".#NAME." and 16 hex
// digits (nsbox's own), or decimal digits (what earlier versions made).
// "NAME." followed by more name, the staging tree of another machine, does
// not match.
func stagingName(name string) *regexp.Regexp {
	return regexp.MustCompile(`^\.#` + regexp.QuoteMeta(name) + `\.([0-9a-f]{16}|[0-9]+)$`)
}

// stage makes an empty staging tree for name in the store, mode 0755, and
// holds its lock (".#<tree>.lck" beside it) so that no sweep takes it while
// it is filled. The caller closes the lock after removing or renaming the
// tree.
func (m *Manager) stage(name string) (string, io.Closer, error) {
	if err := m.ensureStore(); err != nil {
		return "", nil, err
	}
	for range 100 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", nil, err
		}
		dir := filepath.Join(m.Store(), ".#"+name+"."+hex.EncodeToString(b[:]))
		l, err := host.LockFile(context.Background(), lockPath(dir), true, false)
		if err != nil {
			return "", nil, err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			l.Unlock()
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return "", nil, err
		}
		// Mkdir's mode passed through the umask.
		if err := os.Chmod(dir, 0o755); err != nil {
			l.Unlock()
			_ = os.Remove(dir)
			return "", nil, err
		}
		return dir, unlocker{l}, nil
	}
	return "", nil, fmt.Errorf("no free staging name for %s in %s", name, m.Store())
}

type unlocker struct{ l *host.FileLock }

func (u unlocker) Close() error { u.l.Unlock(); return nil }

// sweepStaging removes the leftovers of creates, clones and imports of
// name that died (killed with SIGKILL, power loss): its own staging trees
// only, and only those whose lock nobody holds.
func (m *Manager) sweepStaging(name string) {
	match := stagingName(name)
	for _, dir := range []string{m.Store(), m.RootDir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !e.IsDir() || !match.MatchString(e.Name()) {
				continue
			}
			tree := filepath.Join(dir, e.Name())
			l, err := host.LockFile(context.Background(), lockPath(tree), true, false)
			if err != nil {
				logrus.Debugf("leaving %s: %v", tree, err)
				continue
			}
			logrus.Infof("removing %s, left by an interrupted create", tree)
			// A create killed with SIGKILL leaves its debootstrap running.
			backend.KillWorkingIn(tree)
			host.UnmountUnder(tree)
			if err := host.RemoveTree(tree); err != nil {
				logrus.Warnf("could not remove %s: %v", tree, err)
			}
			l.Unlock()
		}
	}
}
