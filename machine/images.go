package machine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Image types of machinectl's images, as list and status show them.
const (
	ImageDirectory = "directory"
	ImageSubvolume = "subvolume"
	ImageRaw       = "raw"
)

// MachinectlImage is an image machinectl knows that is not an nsbox
// machine: a directory, a btrfs subvolume or a raw disk image (NAME.raw)
// in one of the directories machined searches (ImageSearchPath), put
// there by machinectl clone, import-tar, pull-tar or by hand.
type MachinectlImage struct {
	Name     string
	Dir      string // the image directory it is in
	Path     string // Dir/NAME, or Dir/NAME.raw
	Type     string // ImageDirectory, ImageSubvolume or ImageRaw
	ReadOnly bool
}

// defaultImageSearchPath is where machined looks for machine images, in
// its order (systemd's src/shared/discover-image.c): the first directory
// that holds a name is the one it uses.
var defaultImageSearchPath = []string{"/etc/machines", "/run/machines", "/var/lib/machines", "/usr/local/lib/machines", "/usr/lib/machines"}

// imageDirs is the image search path: ImageSearchPath, or ImagesDir alone
// when none is set (tests); RootDir itself is never one (nsbox's
// machines are its own there).
func (p Paths) imageDirs() []string {
	dirs := p.ImageSearchPath
	if dirs == nil && p.ImagesDir != "" {
		dirs = []string{p.ImagesDir}
	}
	var out []string
	for _, d := range dirs {
		if filepath.Clean(d) != filepath.Clean(p.RootDir) {
			out = append(out, d)
		}
	}
	return out
}

// machinectlImages lists machinectl's images in the image search path,
// by name, the first directory's where two hold one. Passed over: hidden
// entries (locks, staging trees), names nsbox would not accept (never
// shown: the name is whoever made the entry's), links of every kind
// (nsbox's own for its machines, and others: nsbox follows none there),
// and files that are not NAME.raw.
func (m *Manager) machinectlImages() []MachinectlImage {
	seen := map[string]bool{}
	var out []MachinectlImage
	for _, dir := range m.imageDirs() {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			img, ok := imageEntry(dir, e.Name(), e.Type())
			if !ok || seen[img.Name] {
				continue
			}
			seen[img.Name] = true
			out = append(out, img)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// machinectlImage is machinectl's image of name, if there is one.
func (m *Manager) machinectlImage(name string) (MachinectlImage, bool) {
	if ValidateName(name) != nil {
		return MachinectlImage{}, false
	}
	for _, dir := range m.imageDirs() {
		for _, entry := range []string{name, name + ".raw"} {
			fi, err := os.Lstat(filepath.Join(dir, entry))
			if err != nil {
				continue
			}
			if img, ok := imageEntry(dir, entry, fi.Mode().Type()); ok && img.Name == name {
				return img, true
			}
		}
	}
	return MachinectlImage{}, false
}

// imageEntry is the image that entry of dir is, of type typ (its
// fs.FileMode type bits, read without following a link).
func imageEntry(dir, entry string, typ fs.FileMode) (MachinectlImage, bool) {
	if strings.HasPrefix(entry, ".") {
		return MachinectlImage{}, false
	}
	img := MachinectlImage{Name: entry, Dir: dir, Path: filepath.Join(dir, entry)}
	switch {
	case typ&fs.ModeSymlink != 0:
		return img, false
	case typ.IsDir():
		img.Type = ImageDirectory
		if bootstrap.IsSubvolume(img.Path) {
			img.Type = ImageSubvolume
		}
	case typ.IsRegular() && strings.HasSuffix(entry, ".raw"):
		img.Name, img.Type = strings.TrimSuffix(entry, ".raw"), ImageRaw
	default:
		return img, false
	}
	if err := ValidateName(img.Name); err != nil {
		logrus.Debugf("passing over %s: %v", Printable(img.Path), err)
		return img, false
	}
	img.ReadOnly = imageReadOnly(img)
	return img, true
}

// btrfsSubvolGetflags is BTRFS_IOC_SUBVOL_GETFLAGS, _IOR(0x94, 25, u64),
// and btrfsSubvolRdonly the flag of a read-only subvolume.
const (
	btrfsSubvolGetflags = 0x80089419
	btrfsSubvolRdonly   = 1 << 1
)

// imageReadOnly says whether machined takes img as read-only: the
// immutable flag (machinectl read-only on a directory or a raw file), a
// read-only btrfs subvolume, a raw file nobody may write, or an image
// under /usr (a vendor's).
func imageReadOnly(img MachinectlImage) bool {
	if img.Dir == "/usr" || strings.HasPrefix(img.Dir, "/usr/") {
		return true
	}
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	if img.Type != ImageRaw {
		flags |= unix.O_DIRECTORY
	}
	fd, err := unix.Open(img.Path, flags, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if attr, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS); err == nil && attr&fsImmutable != 0 {
		return true
	}
	switch img.Type {
	case ImageSubvolume:
		var f uint64
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), btrfsSubvolGetflags, uintptr(unsafe.Pointer(&f)))
		return errno == 0 && f&btrfsSubvolRdonly != 0
	case ImageRaw:
		var st unix.Stat_t
		return unix.Fstat(fd, &st) == nil && st.Mode&0o222 == 0
	}
	return false
}

// ErrMachinectlImage is a command that changes a machine named for one of
// machinectl's images: adopt makes it nsbox's first.
var ErrMachinectlImage = errors.New("not an nsbox machine")

// imageError is what a command nsbox runs only on its own machines says
// when name is machinectl's image.
func imageError(img MachinectlImage) error {
	if img.Type == ImageRaw {
		return fmt.Errorf("%w: %s is machinectl's raw disk image %s, which nsbox cannot use (machinectl start %s boots it)",
			ErrMachinectlImage, img.Name, img.Path, img.Name)
	}
	return fmt.Errorf("%w: %s is machinectl's image in %s: adopt it first (nsbox adopt %s)", ErrMachinectlImage, img.Name, img.Dir, img.Name)
}

// notNsboxs is the error for name, which is no machine of nsbox's: that it
// is machinectl's image, when it is one, or notFound.
func (m *Manager) notNsboxs(name string, notFound error) error {
	if img, ok := m.machinectlImage(name); ok {
		return imageError(img)
	}
	return notFound
}
