package machine

import (
	"os"
	"sort"
	"strings"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// unshareMachineID is the one-time fix, at boot, of a machine made by an
// nsbox before 0.x that left D-Bus's machine id a regular file copied
// from the base: systemd initialised the machine's id from it, so every
// machine of that base, and every clone, had one id. The file becomes a
// link to /etc/machine-id (as Debian's dbus makes it), and an
// /etc/machine-id that holds that same id, or none yet, is emptied so the
// machine generates an id of its own at this boot. Every write stays
// inside the tree. A read-only machine is left as it is, and said.
func (m *Manager) unshareMachineID(name string) {
	r, err := os.OpenRoot(m.Dir(name))
	if err != nil {
		return
	}
	defer r.Close()
	if fi, err := r.Lstat(bootstrap.DBusMachineID); err != nil || !fi.Mode().IsRegular() {
		return
	}
	if m.ReadOnly(name) {
		logrus.Warnf("%s may share its machine ID with other machines (its %s is a copy); it is read-only, so nsbox leaves it: "+
			"make it writable (nsbox read-only %s false) and boot it again", name, "/"+bootstrap.DBusMachineID, name)
		return
	}
	etc := ""
	if b, err := readSmall(r, "etc/machine-id"); err == nil {
		etc = strings.TrimSpace(string(b))
	}
	changed, old, err := bootstrap.LinkDBusMachineID(r)
	if err != nil {
		logrus.Warnf("%s: could not make %s a link to /etc/machine-id: %v", name, "/"+bootstrap.DBusMachineID, err)
		return
	}
	if !changed {
		return
	}
	if old != "" && (etc == "" || etc == old) {
		if err := host.WriteInRoot(r, "etc/machine-id", ""); err != nil {
			logrus.Warnf("%s: could not empty /etc/machine-id: %v", name, err)
			return
		}
		logrus.Warnf("%s took the machine ID of the base it was made from, shared with every machine made from it; "+
			"it gets an ID of its own at this boot (once: /%s is now a link to /etc/machine-id)", name, bootstrap.DBusMachineID)
		return
	}
	logrus.Warnf("%s: /%s is now a link to /etc/machine-id (once: a copy there gives every machine made from one base the same ID)", name, bootstrap.DBusMachineID)
}

// MachineIDSharers lists the machines under RootDir that share a machine
// ID with another (each group sorted, groups sorted by their first name),
// and the machines that would take a shared ID at their next boot from a
// regular file /var/lib/dbus/machine-id (a boot of nsbox fixes that).
func (m *Manager) MachineIDSharers() (shared [][]string, pending []string) {
	byID := map[string][]string{}
	for _, name := range m.onDisk() {
		r, err := os.OpenRoot(m.Dir(name))
		if err != nil {
			continue
		}
		id := ""
		if b, err := readSmall(r, "etc/machine-id"); err == nil {
			id = strings.TrimSpace(string(b))
		}
		dbus := false
		if fi, err := r.Lstat(bootstrap.DBusMachineID); err == nil && fi.Mode().IsRegular() {
			dbus = true
		}
		r.Close()
		if id != "" && id != "uninitialized" {
			byID[id] = append(byID[id], name)
		}
		if dbus {
			pending = append(pending, name)
		}
	}
	for _, names := range byID {
		if len(names) > 1 {
			sort.Strings(names)
			shared = append(shared, names)
		}
	}
	sort.Slice(shared, func(i, j int) bool { return shared[i][0] < shared[j][0] })
	sort.Strings(pending)
	return shared, pending
}
