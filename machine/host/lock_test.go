package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestHoldSharedMovesWithItsDirectory: a shared hold is seen by Held,
// keeps out an exclusive lock, lasts while its directory is renamed
// (the lock is the inode's), and its file stays when it is released.
func TestHoldSharedMovesWithItsDirectory(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.Mkdir(a, 0o700); err != nil {
		t.Fatal(err)
	}
	if Held(filepath.Join(a, "x.lck")) {
		t.Error("a file that is not there is held")
	}
	f, err := HoldShared(filepath.Join(a, "x.lck"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := HoldShared(filepath.Join(a, "x.lck"))
	if err != nil {
		t.Fatalf("a second shared hold: %v", err)
	}
	g.Close()
	if !Held(filepath.Join(a, "x.lck")) {
		t.Error("a held file is not held")
	}
	if _, err := LockFile(context.Background(), filepath.Join(a, "x.lck"), true, false); !errors.Is(err, ErrLocked) {
		t.Errorf("an exclusive lock beside a shared hold: %v", err)
	}
	if err := os.Rename(a, b); err != nil {
		t.Fatal(err)
	}
	if !Held(filepath.Join(b, "x.lck")) {
		t.Error("the hold did not move with its directory")
	}
	f.Close()
	if Held(filepath.Join(b, "x.lck")) {
		t.Error("held after release")
	}
	if _, err := os.Stat(filepath.Join(b, "x.lck")); err != nil {
		t.Errorf("the file went with the hold: %v", err)
	}
}
