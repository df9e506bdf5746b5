package machine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Lock is an open-file-description lock on a file, as systemd-nspawn and
// machinectl take on ".#NAME.lck" beside an image: a lock held here excludes
// a running nspawn, and it dies with the process that holds it.
type Lock struct {
	f      *os.File
	path   string
	global *Lock // the inode lock under /run/systemd/nspawn/locks
}

// lockPath is the lock file systemd uses for the image at path.
func lockPath(path string) string {
	return filepath.Join(filepath.Dir(path), ".#"+filepath.Base(path)+".lck")
}

// globalLockDir is where systemd keeps the per-inode image locks, which
// hold however the image was reached (/var/lib/machines/NAME is a link).
const globalLockDir = "/run/systemd/nspawn/locks"

// LockImage takes the image locks of path without waiting: exclusive for
// changes, shared for reads. It fails with ErrBusy when a lock is held,
// e.g. by a running systemd-nspawn. Both systemd's locks are taken: the one
// beside the image and, when the image exists, the one on its inode.
func LockImage(path string, exclusive bool) (*Lock, error) {
	l, err := lockFile(lockPath(path), exclusive)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		if err := os.MkdirAll(globalLockDir, 0o755); err != nil {
			l.Unlock()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		g, err := lockFile(filepath.Join(globalLockDir, fmt.Sprintf("inode-%d:%d", st.Dev, st.Ino)), exclusive)
		if err != nil {
			l.Unlock()
			return nil, err
		}
		l.global = g
	}
	return l, nil
}

func lockFile(p string, exclusive bool) (*Lock, error) {
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		typ := int16(unix.F_RDLCK)
		if exclusive {
			typ = unix.F_WRLCK
		}
		lk := unix.Flock_t{Type: typ, Whence: 0}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			f.Close()
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return nil, ErrBusy
			}
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		// The holder before us may have unlinked the file after we opened
		// it; a lock on an unlinked file protects nothing, so try again.
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Nlink > 0 {
			return &Lock{f: f, path: p}, nil
		}
		f.Close()
	}
}

// Unlock releases the lock and, when nobody else holds it, removes the
// lock file, as systemd does.
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	l.global.Unlock()
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, &lk) == nil {
		_ = os.Remove(l.path)
	}
	l.f.Close()
	l.f = nil
}
