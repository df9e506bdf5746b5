package host

import (
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers never see half a file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteFileAtomicOwned(path, data, mode, -1, -1)
}

// WriteFileAtomicOwned is WriteFileAtomic giving the file to uid and gid
// (-1 leaves nsbox's): a file rewritten keeps the owner it had.
func WriteFileAtomicOwned(path string, data []byte, mode os.FileMode, uid, gid int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".#"+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil && (uid >= 0 || gid >= 0) {
		werr = f.Chown(uid, gid)
	}
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
	}
	return werr
}
