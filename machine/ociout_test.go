package machine

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A machine not made from an image gets /sbin/init where its tree has
// one (through merged /usr's links, resolved inside the tree), /bin/sh
// where it has only that; a link out of the tree leads nowhere.
func TestDefaultConfig(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "usr/sbin"), 0o755)
	os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(tree, "sbin"))
	os.Symlink("usr/bin", filepath.Join(tree, "bin"))
	os.Symlink("/lib/systemd/systemd", filepath.Join(tree, "usr/sbin/init"))
	os.WriteFile(filepath.Join(tree, "usr/bin/sh"), nil, 0o755)
	// A tree whose sbin is a link to a host directory that has an init.
	host, out := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(host, "init"), nil, 0o755)
	os.Symlink(host, filepath.Join(out, "sbin"))

	if c := defaultConfig(tree); !reflect.DeepEqual(c.Cmd, []string{"/sbin/init"}) || c.StopSignal != "SIGRTMIN+3" || c.Env[0] != defaultPath {
		t.Errorf("a tree with systemd: %+v", c)
	}
	if c := defaultConfig(out); c.Cmd != nil {
		t.Errorf("a link out of the tree followed: %+v", c)
	}
	os.Remove(filepath.Join(tree, "usr/sbin/init"))
	if c := defaultConfig(tree); !reflect.DeepEqual(c.Cmd, []string{"/bin/sh"}) || c.StopSignal != "" {
		t.Errorf("a tree with a shell only: %+v", c)
	}
}
