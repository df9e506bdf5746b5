package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths a host user could redirect: the checks root makes before it
// follows a path it was given (an export's directory, an archive, a bind
// source).

// RootLinks resolves the symbolic links in path as the kernel would,
// refusing one that is not root's. kernel is set when the rest of the path
// is procfs's to resolve.
func RootLinks(path string) (real string, kernel bool, err error) {
	return walkRootLinks(path, nil)
}

// walkRootLinks is RootLinks that also calls check, when set, for each
// existing entry on the way, with the directory it is in.
func walkRootLinks(path string, check func(dir string, ent *unix.Stat_t) error) (real string, kernel bool, err error) {
	if !filepath.IsAbs(path) {
		// From the working directory itself: $PWD may name it through
		// links.
		wd, err := unix.Getwd()
		if err != nil {
			return "", false, err
		}
		path = filepath.Join(wd, path)
	}
	real = "/"
	rest := strings.Split(path, "/")
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			real = filepath.Dir(real) // real has no links: .. is its parent
			continue
		}
		next := filepath.Join(real, c)
		var st unix.Stat_t
		if err := unix.Lstat(next, &st); err != nil {
			// Missing: the open says so.
			return filepath.Join(append([]string{next}, rest...)...), false, nil
		}
		if check != nil {
			if err := check(real, &st); err != nil {
				return "", false, err
			}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			real = next
			continue
		}
		var fs unix.Statfs_t
		if unix.Statfs(real, &fs) == nil && fs.Type == unix.PROC_SUPER_MAGIC {
			return filepath.Join(append([]string{next}, rest...)...), true, nil
		}
		if st.Uid != 0 {
			return "", false, fmt.Errorf("%s is a symbolic link of uid %d, and nsbox follows only root's here (give the path it points to)", next, st.Uid)
		}
		if links++; links > 40 {
			return "", false, &os.PathError{Op: "open", Path: path, Err: unix.ELOOP}
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", false, err
		}
		if filepath.IsAbs(target) {
			real = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return real, false, nil
}

// StablePath resolves path following only symbolic links that belong to
// root, and checks that no user but root can change what it names: every
// directory on the way is root's and writable by nobody else, or sticky
// with the entry in it root's. The last component may belong to anyone
// (its owner cannot replace it without writing its parent).
func StablePath(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("not an absolute path")
	}
	real, _, err := walkRootLinks(path, func(dir string, ent *unix.Stat_t) error {
		var st unix.Stat_t
		if err := unix.Lstat(dir, &st); err != nil {
			return err
		}
		if st.Uid != 0 {
			return fmt.Errorf("%s belongs to uid %d", dir, st.Uid)
		}
		if st.Mode&0o022 != 0 && (st.Mode&unix.S_ISVTX == 0 || ent.Uid != 0) {
			return fmt.Errorf("%s is writable by others than root", dir)
		}
		return nil
	})
	return real, err
}

// ReachableBy says which host users besides root can reach path ("" for
// none): every directory from / down to it lets them through, or one of
// them is theirs. Access control lists are not read.
func ReachableBy(path string) string {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ""
	}
	p := "/"
	parts := strings.Split(strings.TrimPrefix(real, "/"), "/")
	for i := 0; ; i++ {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return ""
		}
		if st.Uid != 0 {
			return fmt.Sprintf("%s belongs to uid %d", p, st.Uid)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&0o011 == 0 {
			return ""
		}
		if i == len(parts) || parts[i] == "" {
			return fmt.Sprintf("every host user can reach %s", real)
		}
		p = filepath.Join(p, parts[i])
	}
}
