package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
)

// TestReceiveRefusesCloneOutside sends btrfs receive a stream of the
// kind a hostile sender writes (checksums and all): a clone whose source
// is a subvolume with a received UUID on the file system, with a path up
// out of it. btrfs receive opens clone sources from the file system's
// mount, opened before its chroot, so with --chroot alone it copies a
// file from outside the staging directory (logged, not asserted: that is
// btrfs-progs' behaviour, which may change). Through ReceiveSubvolume the
// stream is refused and nothing is left.
func TestReceiveRefusesCloneOutside(t *testing.T) {
	fs := loopBtrfs(t)
	writeFile(t, filepath.Join(fs, "secret"), "host secret\n")
	run(t, "btrfs", "subvolume", "create", filepath.Join(fs, "p"))
	writeFile(t, filepath.Join(fs, "p/x"), "x")
	run(t, "btrfs", "subvolume", "snapshot", "-r", filepath.Join(fs, "p"), filepath.Join(fs, "p.ro"))
	os.Mkdir(filepath.Join(fs, "r"), 0o700)
	out, err := exec.Command("sh", "-c", "btrfs send -q "+fs+"/p.ro | btrfs receive -q "+fs+"/r").CombinedOutput()
	if err != nil {
		t.Fatalf("%v %s", err, out)
	}
	ri, _ := host.Subvolume(filepath.Join(fs, "r/p.ro"))
	show, _ := exec.Command("btrfs", "subvolume", "show", filepath.Join(fs, "r/p.ro")).CombinedOutput()
	var stransid uint64
	for _, l := range strings.Split(string(show), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "Send" && f[1] == "transid:" {
			stransid, _ = strconv.ParseUint(f[2], 10, 64)
		}
	}
	s := newStream(1).cmd(cmdSubvol, str(attrPath, "evil"), uuidAttr(attrUUID, host.UUID{5}), u64(2, 1)).
		cmd(cmdMkfile, str(attrPath, "f"), u64(3, 300)).
		cmd(cmdClone, str(attrPath, "f"), u64(18, 0), u64(24, 0), uuidAttr(attrCloneUUID, ri.Received), u64(21, stransid), str(attrClonePath, "../../secret"), u64(23, 0)).
		cmd(cmdEnd)
	b := s.Bytes()
	// crc32c of each command with its crc zeroed, as btrfs-progs checks.
	tab := crc32.MakeTable(crc32.Castagnoli)
	off := streamHeaderLen
	for off < len(b) {
		n := int(binary.LittleEndian.Uint32(b[off:]))
		c := ^crc32.Update(0xffffffff, tab, b[off:off+cmdHeaderLen+n])
		binary.LittleEndian.PutUint32(b[off+6:], c)
		off += cmdHeaderLen + n
	}
	stage := filepath.Join(fs, "stage")
	os.Mkdir(stage, 0o700)
	cmd := exec.Command("btrfs", "receive", "--chroot", "-e", "-E", "1", stage)
	cmd.Stdin = bytes.NewReader(b)
	_ = cmd.Run()
	if got, err := os.ReadFile(filepath.Join(stage, "evil/f")); err == nil && string(got) == "host secret\n" {
		t.Logf("btrfs receive --chroot alone copied a file from outside its chroot: %q", got)
	}
	if err := host.RemoveTree(stage); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(stage, 0o700)
	_, _, err = ReceiveSubvolume(t.Context(), host.ExecRunner{}, bytes.NewReader(b), stage, &SendStreamCheck{})
	if !errors.Is(err, ErrSendStream) || !strings.Contains(err.Error(), "../../secret") {
		t.Fatalf("through ReceiveSubvolume: %v", err)
	}
	if ents, _ := os.ReadDir(stage); len(ents) > 0 {
		t.Errorf("left in the staging directory: %v", ents)
	}
}
