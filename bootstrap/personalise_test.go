package bootstrap

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPersonaliseStaysInsideRoot(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "host-hostname")
	os.WriteFile(host, []byte("host\n"), 0o644)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// A hostile tree: its hostname is a link to a host file.
	os.Symlink(host, filepath.Join(root, "etc", "hostname"))
	os.WriteFile(filepath.Join(root, "etc", "machine-id"), []byte("0123\n"), 0o444)
	if err := Personalise(root, "web"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(host); string(b) != "host\n" {
		t.Errorf("host file written through a link: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc", "hostname")); string(b) != "web\n" {
		t.Errorf("hostname %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(root, "etc", "hostname")); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("hostname is still a link")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc", "machine-id")); len(b) != 0 {
		t.Errorf("machine-id %q", b)
	}

	// etc itself a link out of the root: refused, nothing written.
	root2 := filepath.Join(dir, "root2")
	os.MkdirAll(root2, 0o755)
	os.Symlink(dir, filepath.Join(root2, "etc"))
	if err := Personalise(root2, "web"); err == nil {
		t.Error("wrote through an etc link that leaves the root")
	}
	if _, err := os.Stat(filepath.Join(dir, "hostname")); err == nil {
		t.Error("a file was created outside the root")
	}
}
