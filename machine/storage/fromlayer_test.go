package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFromLayer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("whiteouts and trusted.* attributes are root's to make")
	}
	mk := func(t *testing.T, files ...string) string {
		dir := t.TempDir()
		for _, f := range files {
			p := filepath.Join(dir, f)
			if f[len(f)-1] == '/' {
				os.MkdirAll(p, 0o755)
				continue
			}
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	up := mk(t, "etc/.wh.gone", "var/cache/.wh..wh..opq", "var/cache/new")
	if err := FromLayer(up); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(up, "etc/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/gone: %+v %v", st, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(up, "var/cache"), opaqueXattr, buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("var/cache not opaque: %v", err)
	}
	for _, p := range []string{"etc/.wh.gone", "var/cache/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(up, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	for what, files := range map[string][]string{
		"a whiteout beside what it hides": {"etc/.wh.x", "etc/x"},
		"a whiteout that is a directory":  {"etc/.wh.x/"},
		"a whiteout of a whiteout":        {"etc/.wh..wh.x"},
	} {
		if err := FromLayer(mk(t, files...)); !errors.Is(err, ErrLayerUpper) {
			t.Errorf("%s: %v", what, err)
		}
	}
}
