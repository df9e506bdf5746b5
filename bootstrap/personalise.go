package bootstrap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
)

// Personalise makes a freshly bootstrapped or cloned root its own machine:
// hostname set, machine id emptied so the first boot generates one, and
// D-Bus's machine id a link to it (DBusMachineIDLink). Every write stays
// inside root even if the tree holds hostile symbolic links.
func Personalise(root, hostname string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, f := range []struct {
		path, content string
	}{
		{"etc/hostname", hostname + "\n"},
		{"etc/machine-id", ""},
	} {
		if err := host.WriteInRoot(r, f.path, f.content); err != nil {
			return fmt.Errorf("personalise %s: %w", f.path, err)
		}
	}
	if _, _, err := LinkDBusMachineID(r); err != nil {
		return fmt.Errorf("personalise %s: %w", DBusMachineID, err)
	}
	return nil
}

// DBusMachineID is where D-Bus keeps its machine id, relative to a root.
// debootstrap leaves a file there with the id the bootstrap generated, and
// systemd's first boot takes it for the machine's own ("Initializing
// machine ID from D-Bus machine ID"), so every copy of one base would share
// one id. Debian's dbus makes it a link to /etc/machine-id instead, which
// systemd does not read (it opens the file with O_NOFOLLOW).
const DBusMachineID = "var/lib/dbus/machine-id"

// DBusMachineIDTarget is what DBusMachineID links to inside the machine.
const DBusMachineIDTarget = "/etc/machine-id"

// LinkDBusMachineID makes DBusMachineID inside r a link to /etc/machine-id,
// as Debian's dbus does, unless it is such a link already or the tree has
// no /var/lib/dbus. It reports whether it changed anything and what a
// regular file there held (the id the tree would otherwise have taken at
// its first boot). The link is made beside it and renamed over it, inside
// r, so the path is never missing for a machine that runs meanwhile.
func LinkDBusMachineID(r *os.Root) (changed bool, old string, err error) {
	fi, err := r.Lstat(DBusMachineID)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, derr := r.Lstat(filepath.Dir(DBusMachineID)); derr != nil {
			return false, "", nil // no dbus in this tree
		}
	case err != nil:
		return false, "", err
	case fi.Mode()&os.ModeSymlink != 0:
		if cur, err := r.Readlink(DBusMachineID); err == nil && cur == DBusMachineIDTarget {
			return false, "", nil
		}
	case fi.Mode().IsRegular():
		if b, err := host.ReadSmallInRoot(r, DBusMachineID, 4096); err == nil {
			old = strings.TrimSpace(string(b))
		}
	}
	tmp := filepath.Join(filepath.Dir(DBusMachineID), ".#nsbox.machine-id")
	_ = r.Remove(tmp)
	if err := r.Symlink(DBusMachineIDTarget, tmp); err != nil {
		return false, old, err
	}
	if err := r.Rename(tmp, DBusMachineID); err != nil {
		_ = r.Remove(tmp)
		return false, old, err
	}
	return true, old, nil
}
