package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// Lock holds systemd's two locks on an image: ".#NAME.lck" beside it and,
// when the image exists, the one on its inode under
// /run/systemd/nspawn/locks, which holds however the image was reached
// (/var/lib/machines/NAME is a link). A lock held here excludes a running
// systemd-nspawn, and it dies with the process that holds it.
type Lock struct {
	local, global *host.FileLock
}

// lockPath is the lock file systemd uses beside the image at path.
func lockPath(path string) string {
	return filepath.Join(filepath.Dir(path), ".#"+filepath.Base(path)+".lck")
}

// lockImage takes the image locks of path without waiting: exclusive for
// changes, shared for reads. It fails with ErrBusy when a lock is held.
func (m *Manager) lockImage(path string, exclusive bool) (*Lock, error) {
	return lockImage(m.LockDir, path, exclusive)
}

// lockNewTree takes the image lock of the tree name is about to get (a
// clone's, a rename's or an adopt's destination), as nspawn and another
// nsbox would take it.
func (m *Manager) lockNewTree(name string) (*Lock, error) {
	l, err := m.lockImage(m.Tree(name), true)
	if errors.Is(err, ErrBusy) {
		return nil, fmt.Errorf("%w: %s is being created or used by another process", ErrBusy, name)
	}
	return l, err
}

// lockImage takes the lock beside the image at path and, with lockDir,
// the one on its inode there.
func lockImage(lockDir, path string, exclusive bool) (*Lock, error) {
	ctx := context.Background()
	local, err := host.LockFile(ctx, lockPath(path), exclusive, false)
	if errors.Is(err, host.ErrLocked) {
		return nil, ErrBusy
	}
	if err != nil {
		return nil, err
	}
	l := &Lock{local: local}
	var st unix.Stat_t
	if lockDir != "" && unix.Stat(path, &st) == nil {
		if err := os.MkdirAll(lockDir, 0o755); err != nil {
			l.Unlock()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		g, err := host.LockFile(ctx, filepath.Join(lockDir, fmt.Sprintf("inode-%d:%d", st.Dev, st.Ino)), exclusive, false)
		if err != nil {
			l.Unlock()
			if errors.Is(err, host.ErrLocked) {
				return nil, ErrBusy
			}
			return nil, err
		}
		l.global = g
	}
	return l, nil
}

// Unlock releases both locks.
func (l *Lock) Unlock() {
	if l == nil {
		return
	}
	l.global.Unlock()
	l.local.Unlock()
}
