package imagetest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Victim is a file of another user's that root must not change.
func Victim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte("root:secret\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func Untouched(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if err != nil || string(b) != "root:secret\n" || fi.Mode().Perm() != 0o640 {
		t.Errorf("%s was changed: %q, %v, %v", p, b, fi.Mode(), err)
	}
}

// Leftovers lists the temporary entries in dir.
func Leftovers(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") {
			out = append(out, e.Name())
		}
	}
	return out
}
