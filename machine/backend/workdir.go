package backend

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// OpenWorkdir opens directory dir of the tree whose root is the directory
// fd root, O_PATH, resolved as the machine would resolve it: symlinks and
// ".." stay inside the tree (RESOLVE_IN_ROOT), and no /proc magic link
// leads out. A path that is no directory there is refused in words a
// user reads.
func OpenWorkdir(root int, dir string) (int, error) {
	fd, err := unix.Openat2(root, dir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("%w: --workdir %s: no such directory", ErrInvalidOption, dir)
	case errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("%w: --workdir %s: not a directory", ErrInvalidOption, dir)
	case errors.Is(err, unix.EACCES):
		return -1, fmt.Errorf("%w: --workdir %s: permission denied", ErrInvalidOption, dir)
	}
	return -1, fmt.Errorf("--workdir %s: %w", dir, err)
}

// CheckWorkdir reports whether dir is a directory in the tree whose root
// is the directory fd root (OpenWorkdir).
func CheckWorkdir(root int, dir string) error {
	fd, err := OpenWorkdir(root, dir)
	if err == nil {
		unix.Close(fd)
	}
	return err
}
