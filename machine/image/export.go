package image

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// Compression picks tar's Compression flag from a file name, and checks
// that the program tar runs for it is installed.
func Compression(file string) (string, error) {
	flag, prog, pkg := "", "", ""
	switch {
	case strings.HasSuffix(file, ".tar"):
	case strings.HasSuffix(file, ".tar.gz"), strings.HasSuffix(file, ".tgz"):
		flag, prog, pkg = "--gzip", "gzip", "gzip"
	case strings.HasSuffix(file, ".tar.zst"), strings.HasSuffix(file, ".tar.zstd"):
		flag, prog, pkg = "--zstd", "zstd", "zstd"
	case strings.HasSuffix(file, ".tar.xz"):
		flag, prog, pkg = "--xz", "xz", "xz-utils"
	default:
		return "", fmt.Errorf("%w: %s: name it .tar, .tar.gz, .tar.zst or .tar.xz", backend.ErrInvalidOption, file)
	}
	if prog != "" {
		if _, err := exec.LookPath(prog); err != nil {
			return "", fmt.Errorf("%s is not installed (install it: apt-get install %s)", prog, pkg)
		}
	}
	return flag, nil
}

// ExportFile is an archive being written into a directory that a host
// user may control; see Export.
type ExportFile struct {
	File *os.File // the archive, open for writing, mode 0600

	dir  *os.File // the destination directory, opened once
	base string   // the archive's final name in dir
	tmp  string   // its name in dir while it has one ("" while unnamed)
	done bool
	// NoReplace keeps an entry already at base: Publish fails instead.
	NoReplace bool
}

// path is the archive's final path, the one the user gave: errors name it,
// never a temporary name the user did not choose.
func (e *ExportFile) path() string { return filepath.Join(e.dir.Name(), e.base) }

// Exists reports whether anything has the archive's final name.
func (e *ExportFile) Exists() bool {
	var st unix.Stat_t
	return unix.Fstatat(int(e.dir.Fd()), e.base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// CreateExport makes the archive file for dir/base: unnamed (O_TMPFILE)
// when unnamed is set and the file system can, else under a fresh name.
func CreateExport(dir, base string, unnamed bool) (*ExportFile, error) {
	d, err := openFollowingRoot(dir, unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("directory %s does not exist (create it first)", dir)
	}
	if errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	if err != nil {
		return nil, err
	}
	dfd := int(d.Fd())
	e := &ExportFile{dir: d, base: base}
	if unnamed {
		fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
		if err == nil {
			e.File = os.NewFile(uintptr(fd), filepath.Join(dir, base))
			return e, nil
		}
		// EOPNOTSUPP: a file system without O_TMPFILE; EISDIR: a kernel
		// without it.
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) {
			e.dir.Close()
			return nil, &os.PathError{Op: "create", Path: filepath.Join(dir, base), Err: err}
		}
	}
	for range 100 {
		name, err := tempName(base)
		if err != nil {
			e.dir.Close()
			return nil, err
		}
		fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			e.dir.Close()
			return nil, &os.PathError{Op: "create", Path: filepath.Join(dir, base), Err: err}
		}
		e.File, e.tmp = os.NewFile(uintptr(fd), filepath.Join(dir, name)), name
		return e, nil
	}
	e.dir.Close()
	return nil, fmt.Errorf("create %s: no free temporary name", filepath.Join(dir, base))
}

// tempName is a fresh ".#BASE.XXXXXXXXXXXXXXXX" name.
func tempName(base string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return ".#" + base + "." + hex.EncodeToString(b[:]), nil
}

// Publish makes the written archive whole and gives it its final name.
func (e *ExportFile) Publish() error {
	if err := e.File.Chmod(0o600); err != nil {
		return err
	}
	if err := e.File.Sync(); err != nil {
		return err
	}
	dfd := int(e.dir.Fd())
	exists := fmt.Errorf("%s already exists (remove it, or pass --force to replace it)", e.path())
	if e.NoReplace && e.tmp == "" {
		// An unnamed file gets its final name directly: linkat never
		// replaces.
		err := linkUnnamed(e.File, dfd, e.base)
		if errors.Is(err, unix.EEXIST) {
			return exists
		}
		if err != nil {
			return &os.PathError{Op: "link", Path: e.path(), Err: err}
		}
		return e.published()
	}
	for e.tmp == "" {
		name, err := tempName(e.base)
		if err != nil {
			return err
		}
		err = linkUnnamed(e.File, dfd, name)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "link", Path: e.path(), Err: err}
		}
		e.tmp = name
	}
	if e.NoReplace {
		err := unix.Renameat2(dfd, e.tmp, dfd, e.base, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) {
			// A file system without RENAME_NOREPLACE: a hard link does not
			// replace either; the temporary name goes after it.
			if err = unix.Linkat(dfd, e.tmp, dfd, e.base, 0); err == nil {
				_ = unix.Unlinkat(dfd, e.tmp, 0)
			}
		}
		if errors.Is(err, unix.EEXIST) {
			return exists
		}
		if err != nil {
			return &os.PathError{Op: "rename", Path: e.path(), Err: err}
		}
	} else if err := unix.Renameat(dfd, e.tmp, dfd, e.base); err != nil {
		return &os.PathError{Op: "rename", Path: e.path(), Err: err}
	}
	e.tmp = ""
	return e.published()
}

// published checks that the final name is the archive and closes it.
func (e *ExportFile) published() error {
	_ = e.dir.Sync()
	// The rename moved whatever had the temporary name: the owner of the
	// directory may have swapped it. Nothing was written through it, but
	// the export is not at the name.
	if !e.is(e.base) {
		return fmt.Errorf("%s was replaced in its directory while it was written", filepath.Join(e.dir.Name(), e.base))
	}
	e.done = true
	e.File.Close()
	e.dir.Close()
	return nil
}

// linkUnnamed gives the O_TMPFILE file f the name name in directory dfd.
// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd does not.
func linkUnnamed(f *os.File, dfd int, name string) error {
	err := unix.Linkat(int(f.Fd()), "", dfd, name, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), dfd, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}

// is reports whether name in the directory is the archive file itself.
func (e *ExportFile) is(name string) bool {
	var st, own unix.Stat_t
	if unix.Fstatat(int(e.dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || unix.Fstat(int(e.File.Fd()), &own) != nil {
		return false
	}
	return st.Dev == own.Dev && st.Ino == own.Ino
}

// Abort drops an archive not published: its temporary name goes (if it
// still names the archive), and an unnamed file goes with its descriptor.
func (e *ExportFile) Abort() {
	if e.done {
		return
	}
	e.done = true
	if e.tmp != "" && e.is(e.tmp) {
		_ = unix.Unlinkat(int(e.dir.Fd()), e.tmp, 0)
	}
	e.File.Close()
	e.dir.Close()
}

// openFollowingRoot opens path (flags as for open(2)) following only the
// symbolic links that root owns. A link a host user made in a directory
// they can write lets them choose where root writes (an export lands in
// /etc/logrotate.d) or what root reads (a root-only tarball becomes a
// machine they use). Debian's fs.protected_symlinks refuses such links in
// sticky world-writable directories (/tmp) only; this refuses them on the
// whole path. Links on procfs (/dev/fd/N, /proc/self/fd/N) are the
// kernel's and are followed. Once resolved, the path is opened with
// RESOLVE_NO_SYMLINKS, so a link planted since is refused, not followed.
func openFollowingRoot(path string, flags int) (*os.File, error) {
	open := func(p string, resolve uint64) (*os.File, error) {
		fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolve})
		if errors.Is(err, unix.ENOSYS) {
			fd, err = unix.Open(p, flags|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: p, Err: err}
		}
		return os.NewFile(uintptr(fd), p), nil
	}
	f, err := open(path, unix.RESOLVE_NO_SYMLINKS)
	if !errors.Is(err, unix.ELOOP) {
		return f, err
	}
	real, kernel, err := host.RootLinks(path)
	if err != nil {
		return nil, err
	}
	if kernel {
		return open(real, 0)
	}
	return open(real, unix.RESOLVE_NO_SYMLINKS)
}

// TarArgs keeps what a root file system needs: numeric owners, modes,
// extended attributes (file capabilities) and ACLs.
var TarArgs = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--one-file-system"}

// XattrACLTarArgs is TarArgs with ACLs as the extended attributes the
// kernel keeps them in (system.posix_acl_access and _default, numeric
// ids), as an image layer carries them, instead of GNU tar's --acls text:
// GNU tar 1.34 writes that text with the names this host's user database
// gives the ids (--numeric-owner or not), which another host reads as its
// own users, and with --acls it ignores the attributes on extraction.
var XattrACLTarArgs = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "--one-file-system"}
