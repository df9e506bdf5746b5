package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned when a lock is held by another process.
var ErrLocked = errors.New("locked by another process")

// FileLock is an open-file-description lock (F_OFD_SETLK), the kind
// systemd-nspawn and machinectl take on images. It conflicts with other
// holders, even in the same process, and dies with the process.
type FileLock struct {
	f    *os.File
	path string
}

// LockFile locks path, creating it if needed: exclusive or shared. Without
// wait it fails with ErrLocked at once; with wait it retries until ctx ends.
func LockFile(ctx context.Context, path string, exclusive, wait bool) (*FileLock, error) {
	var l *FileLock
	err := Poll(ctx, Every(100*time.Millisecond), func() (bool, error) {
		var err error
		l, err = tryLock(path, exclusive)
		if errors.Is(err, ErrLocked) && wait {
			return false, nil
		}
		return true, err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func tryLock(path string, exclusive bool) (*FileLock, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		typ := int16(unix.F_RDLCK)
		if exclusive {
			typ = unix.F_WRLCK
		}
		lk := unix.Flock_t{Type: typ}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			f.Close()
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return nil, ErrLocked
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// The holder before us may have unlinked the file after we opened
		// it; a lock on an unlinked file protects nothing, so try again.
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Nlink > 0 {
			return &FileLock{f: f, path: path}, nil
		}
		f.Close()
	}
}

// Unlock releases the lock and, when nobody else holds the file, removes
// it, as systemd does.
func (l *FileLock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, &lk) == nil {
		_ = os.Remove(l.path)
	}
	l.f.Close()
	l.f = nil
}

// Release releases the lock and leaves its file: for a lock file that
// was there before it was taken, and stays as it was found.
func (l *FileLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Close()
	l.f = nil
}

// HoldShared takes a shared lock on path, created if missing, that lasts
// until the returned file is closed. Unlike FileLock's, the file is never
// removed: it may live in a directory that is renamed while it is held
// (the lock goes with the inode), where a removal by path would hit
// another file.
func HoldShared(path string) (*os.File, error) {
	l, err := tryLock(path, false)
	if err != nil {
		return nil, err
	}
	return l.f, nil
}

// Held reports whether any process holds a lock on path.
func Held(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false
	}
	return lk.Type != unix.F_UNLCK
}
