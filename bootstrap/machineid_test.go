package bootstrap

import (
	"os"
	"path/filepath"
	"testing"
)

// bootstrappedTree is a tree as debootstrap leaves it: /etc/machine-id and D-Bus's machine id
// both hold the id the bootstrap generated.
func bootstrappedTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"etc", "var/lib/dbus"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	id := "41e810596f0b4bfda8a11cf2422810b8\n"
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(id), 0o444)
	os.WriteFile(filepath.Join(root, DBusMachineID), []byte(id), 0o644)
	return root
}

func wantLinkedMachineID(t *testing.T, root string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(root, "etc/machine-id")); err != nil || len(b) != 0 {
		t.Errorf("/etc/machine-id %q %v, want it empty", b, err)
	}
	if cur, err := os.Readlink(filepath.Join(root, DBusMachineID)); err != nil || cur != "/etc/machine-id" {
		t.Errorf("%s: link %q %v, want a link to /etc/machine-id", DBusMachineID, cur, err)
	}
}

// systemd initialises the machine id of a first boot from D-Bus's when
// that is a regular file: a created, cloned or imported tree must not keep
// one, or every copy of a base boots with the base's id.
func TestPersonaliseLeavesNoDBusMachineID(t *testing.T) {
	root := bootstrappedTree(t)
	if err := Personalise(root, "web"); err != nil {
		t.Fatal(err)
	}
	wantLinkedMachineID(t, root)
	// Again (a rename personalises an already personalised tree).
	if err := Personalise(root, "web2"); err != nil {
		t.Fatal(err)
	}
	wantLinkedMachineID(t, root)

	// A tree without dbus gets no /var/lib/dbus.
	bare := filepath.Join(t.TempDir(), "bare")
	os.MkdirAll(filepath.Join(bare, "etc"), 0o755)
	if err := Personalise(bare, "bare"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(bare, "var/lib/dbus")); err == nil {
		t.Error("a tree without dbus got /var/lib/dbus")
	}
}

func TestUnshareMachineIDOfABase(t *testing.T) {
	root := bootstrappedTree(t)
	if err := UnshareMachineID(root); err != nil {
		t.Fatal(err)
	}
	wantLinkedMachineID(t, root)
	// A base already fixed is left alone.
	if err := UnshareMachineID(root); err != nil {
		t.Fatal(err)
	}
	wantLinkedMachineID(t, root)
}

// /var/lib/dbus a link out of the tree: nothing is made outside it.
func TestLinkDBusMachineIDStaysInsideRoot(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "var/lib"), 0o755)
	os.Symlink(outside, filepath.Join(root, "var/lib/dbus"))
	r, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, _, err := LinkDBusMachineID(r); err == nil {
		t.Error("made a link through var/lib/dbus, which leaves the root")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files made outside the root: %v", ents)
	}
}
