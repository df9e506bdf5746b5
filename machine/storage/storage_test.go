package storage

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func owner(t *testing.T, path string) (uint32, uint32, os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode()
}

// TestShift moves what host root wrote (ids below RangeSize) into the
// machine's range, keeps setuid bits, and leaves ids outside the range.
func TestShift(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	const base = 0x100000
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("x\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "suid"), nil, 0o755))
	must(os.Lchown(filepath.Join(dir, "suid"), 1000, 1000))
	must(syscall.Chmod(filepath.Join(dir, "suid"), 0o4755))
	must(os.Symlink("/etc/shadow", filepath.Join(dir, "link")))
	must(os.WriteFile(filepath.Join(dir, "theirs"), nil, 0o644))
	must(os.Lchown(filepath.Join(dir, "theirs"), base+5, base+6))
	must(Shift(dir, 0, base))
	for path, want := range map[string][2]uint32{
		"etc": {base, base}, "etc/hostname": {base, base}, "suid": {base + 1000, base + 1000},
		"link": {base, base}, "theirs": {base + 5, base + 6},
	} {
		if u, g, _ := owner(t, filepath.Join(dir, path)); u != want[0] || g != want[1] {
			t.Errorf("%s: %d:%d, want %d:%d", path, u, g, want[0], want[1])
		}
	}
	if _, _, mode := owner(t, filepath.Join(dir, "suid")); mode&os.ModeSetuid == 0 {
		t.Errorf("suid lost its setuid bit: %v", mode)
	}
	// /etc/shadow is untouched: the link was changed, not what it names.
	if u, _, _ := owner(t, "/etc/shadow"); u != 0 {
		t.Errorf("/etc/shadow now belongs to %d", u)
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]Kind{"": "", "auto": "", "copy": Copy, "overlay": Overlay, "btrfs": Btrfs} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseKind("zfs"); err == nil {
		t.Error("ParseKind(zfs) accepted")
	}
}

func TestPickUIDBase(t *testing.T) {
	taken := map[int]bool{}
	for range 100 {
		b, err := PickUIDBase(taken)
		if err != nil {
			t.Fatal(err)
		}
		if b%RangeSize != 0 || b < pickMin || b >= pickMax || taken[b] {
			t.Fatalf("PickUIDBase gave %#x", b)
		}
		taken[b] = true
	}
}

// TestShiftPaths gives the machine only the paths named (and the
// directories above them) that host root owns; a file host root owns
// elsewhere in the upper stays its, and a link the machine planted leads
// nowhere out of the upper.
func TestShiftPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	const base = 0x200000
	upper := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(upper, "etc/systemd/network"), 0o755))
	must(os.WriteFile(filepath.Join(upper, "etc/hostname"), []byte("m\n"), 0o644))
	must(os.WriteFile(filepath.Join(upper, "etc/systemd/network/x.network"), nil, 0o644))
	must(os.WriteFile(filepath.Join(upper, "etc/planted"), nil, 0o600)) // host root's, not named
	must(os.Lchown(filepath.Join(upper, "etc/systemd"), base, base))    // the machine's already
	must(os.WriteFile(filepath.Join(outside, "secret"), nil, 0o600))
	must(os.MkdirAll(filepath.Join(upper, "var/log"), 0o755))
	must(os.Symlink(outside, filepath.Join(upper, "var/log/journal")))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(upper, "var/lib")))
	must(ShiftPaths(upper, []string{"etc/hostname", "etc/systemd/network/x.network", "var/log/journal", "var/lib/dbus/machine-id", "var/nope"}, base))
	for path, want := range map[string]uint32{
		"etc": base, "etc/hostname": base, "etc/systemd": base, "etc/systemd/network": base,
		"etc/systemd/network/x.network": base, "etc/planted": 0, "var": base, "var/log": base,
		"var/log/journal": base, "var/lib": base,
	} {
		if u, _, _ := owner(t, filepath.Join(upper, path)); u != want {
			t.Errorf("%s: uid %d, want %d", path, u, want)
		}
	}
	for _, p := range []string{outside, filepath.Join(outside, "secret")} {
		if u, _, _ := owner(t, p); u != 0 {
			t.Errorf("%s, outside the upper, now belongs to %d", p, u)
		}
	}
}
