package host

import (
	"errors"
	"testing"
)

func TestUUID(t *testing.T) {
	u := UUID{0x25, 0x22, 0x87, 0xe0, 0xd3, 0xd5, 0xc0, 0x40, 0xbe, 0xe8, 0x15, 0x7f, 0x7e, 0xdf, 0xbc, 0x71}
	s := u.String()
	if s != "252287e0-d3d5-c040-bee8-157f7edfbc71" {
		t.Fatalf("String: %s", s)
	}
	if got, err := ParseUUID(s); err != nil || got != u {
		t.Fatalf("ParseUUID(%s): %s %v", s, got, err)
	}
	if (UUID{}).String() != "-" || !(UUID{}).IsZero() || u.IsZero() {
		t.Error("the zero UUID")
	}
	for _, bad := range []string{"", "-", "252287e0d3d5c040bee8157f7edfbc71", "252287e0-d3d5-c040-bee8-157f7edfbc7g", "252287e0-d3d5-c040-bee8+157f7edfbc71", "../../etc/passwd"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) passed", bad)
		}
	}
}

// TestSubvolumeRefusesOthers: a directory that is no subvolume (the test's
// temporary directory is not on btrfs, or is no subvolume's top) is
// refused, and neither deleted nor snapshotted.
func TestSubvolumeRefusesOthers(t *testing.T) {
	dir := t.TempDir()
	if _, err := Subvolume(dir); !errors.Is(err, ErrNotSubvolume) {
		t.Errorf("Subvolume: %v", err)
	}
	if err := DeleteSubvolume(dir); !errors.Is(err, ErrNotSubvolume) {
		t.Errorf("DeleteSubvolume: %v", err)
	}
	if err := SnapshotReadOnly(dir, dir+"/x"); !errors.Is(err, ErrNotSubvolume) {
		t.Errorf("SnapshotReadOnly: %v", err)
	}
	if err := DeleteSubvolume(dir + "/missing"); err != nil {
		t.Errorf("DeleteSubvolume of nothing: %v", err)
	}
}
