package host

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// DiskUsage agrees with du -sx on a tree with hard links, symbolic links,
// a sparse file and nested directories.
func TestDiskUsageAgreesWithDu(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a", "b", "c"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a", "f"), make([]byte, 100000), 0o644))
	must(os.Link(filepath.Join(dir, "a", "f"), filepath.Join(dir, "a", "b", "hard")))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "c", "g"), []byte("x"), 0o644))
	must(os.Symlink("/etc", filepath.Join(dir, "a", "etc")))
	sparse, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	must(sparse.Truncate(1 << 30))
	sparse.Close()

	got, err := DiskUsage(dir)
	must(err)
	out, err := exec.Command("du", "-sx", "--block-size=1", dir).Output()
	if err != nil {
		t.Skipf("du: %v", err)
	}
	want, _ := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	if got != want {
		t.Errorf("DiskUsage %d, du -sx %d", got, want)
	}
	if got > 1<<20 {
		t.Errorf("the sparse file or the hard link counted in full: %d", got)
	}
	if _, err := DiskUsage(filepath.Join(dir, "a", "etc")); err == nil {
		t.Error("DiskUsage followed a symbolic link at the top")
	}
}
