package machine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestImageLockExcludes(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "web")
	os.Mkdir(img, 0o755)
	a, err := lockImage(filepath.Join(dir, "locks"), img, true)
	if err != nil {
		t.Fatal(err)
	}
	// Open-file-description locks conflict within one process too.
	if _, err := lockImage(filepath.Join(dir, "locks"), img, true); !errors.Is(err, ErrBusy) {
		t.Errorf("second exclusive lock: %v", err)
	}
	if _, err := lockImage(filepath.Join(dir, "locks"), img, false); !errors.Is(err, ErrBusy) {
		t.Errorf("shared lock under an exclusive one: %v", err)
	}
	a.Unlock()
	if _, err := os.Stat(filepath.Join(dir, ".#web.lck")); !os.IsNotExist(err) {
		t.Errorf("lock file left after unlock: %v", err)
	}
	b, err := lockImage(filepath.Join(dir, "locks"), img, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := lockImage(filepath.Join(dir, "locks"), img, false)
	if err != nil {
		t.Errorf("two shared locks: %v", err)
	}
	c.Unlock()
	b.Unlock()
}
