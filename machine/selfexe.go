package machine

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// TrustedExecutable is a path of this very program that only root can
// change, for what runs it again as root later: units (ExecStartPost=,
// autostart) and the direct backend's supervisor. Run from a user's
// checkout (sudo ./nsbox enable web), os.Executable() is a file that user
// can rewrite, and a unit naming it would run their program as root at
// every start. Such a binary is copied, from the running image
// (/proc/self/exe, not the path, which may already have changed), to
// stateDir/bin/nsbox, root's and 0755 (replaced when another build runs:
// the copy is always the newest nsbox that root ran); a binary root alone
// can change is used where it is.
func TrustedExecutable(stateDir string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	if err := rootOnly(exe); err == nil {
		return exe, nil
	} else {
		logrus.Debugf("%s: %v; running a root-owned copy", exe, err)
	}
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", err
	}
	defer src.Close()
	dir := filepath.Join(stateDir, "bin")
	dst := filepath.Join(dir, "nsbox")
	if same, err := sameContent(src, dst); err != nil {
		return "", err
	} else if same && rootOnly(dst) == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := rootOnly(dir); err != nil {
		return "", fmt.Errorf("keep a copy of nsbox in %s: %w", dir, err)
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".#nsbox.")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, src)
	if err == nil {
		err = tmp.Chmod(0o755)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("copy nsbox to %s: %w", dst, err)
	}
	// A supervisor running the copy it replaces keeps its own inode.
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// sameContent reports whether the file at path holds what f holds.
func sameContent(f *os.File, path string) (bool, error) {
	g, err := os.Open(path)
	if err != nil {
		return false, nil
	}
	defer g.Close()
	hash := func(r io.Reader) ([]byte, error) {
		h := sha256.New()
		_, err := io.Copy(h, r)
		return h.Sum(nil), err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	a, err := hash(f)
	if err != nil {
		return false, err
	}
	b, err := hash(g)
	return err == nil && string(a) == string(b), nil
}

// rootOnly checks that path and every directory above it belong to root
// and are writable by nobody else, so no other user can replace it.
func rootOnly(path string) error {
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("%s is a symbolic link", p)
		}
		if st.Uid != 0 {
			return fmt.Errorf("%s belongs to uid %d", p, st.Uid)
		}
		if st.Mode&0o022 != 0 {
			return fmt.Errorf("%s is writable by others than root (mode %04o)", p, st.Mode&0o7777)
		}
		if p == "/" {
			return nil
		}
	}
}
