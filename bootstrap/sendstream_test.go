package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
)

// streamBuilder writes a btrfs send stream (version 1) command by
// command, as the kernel does (the checksum is left zero: btrfs receive
// checks it, the checker does not).
type streamBuilder struct{ bytes.Buffer }

func newStream(version uint32) *streamBuilder {
	s := &streamBuilder{}
	s.WriteString(streamMagic)
	_ = binary.Write(s, binary.LittleEndian, version)
	return s
}

type attr struct {
	t uint16
	v []byte
}

func str(t uint16, s string) attr { return attr{t, []byte(s)} }
func u64(t uint16, n uint64) attr {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return attr{t, b}
}
func uuidAttr(t uint16, u host.UUID) attr { return attr{t, u[:]} }

// raw writes a command whose payload is p as it is.
func (s *streamBuilder) raw(cmd uint16, p []byte) *streamBuilder {
	_ = binary.Write(s, binary.LittleEndian, uint32(len(p)))
	_ = binary.Write(s, binary.LittleEndian, cmd)
	_ = binary.Write(s, binary.LittleEndian, uint32(0))
	s.Write(p)
	return s
}

func (s *streamBuilder) cmd(cmd uint16, as ...attr) *streamBuilder {
	var p bytes.Buffer
	for _, a := range as {
		_ = binary.Write(&p, binary.LittleEndian, a.t)
		_ = binary.Write(&p, binary.LittleEndian, uint16(len(a.v)))
		p.Write(a.v)
	}
	_ = binary.Write(s, binary.LittleEndian, uint32(p.Len()))
	_ = binary.Write(s, binary.LittleEndian, cmd)
	_ = binary.Write(s, binary.LittleEndian, uint32(0))
	s.Write(p.Bytes())
	return s
}

var (
	selfUUID   = host.UUID{1, 2, 3}
	parentUUID = host.UUID{9, 9, 9}
	otherUUID  = host.UUID{7, 7, 7}
)

func full() *streamBuilder {
	return newStream(1).cmd(cmdSubvol, str(attrPath, "m"), uuidAttr(attrUUID, selfUUID), u64(2, 1))
}

func incremental() *streamBuilder {
	return newStream(1).cmd(cmdSnapshot, str(attrPath, "m"), uuidAttr(attrUUID, selfUUID), u64(2, 1),
		uuidAttr(attrCloneUUID, parentUUID), u64(21, 1))
}

// TestSendStreamCheck feeds the checker what a hostile sender would
// write, and streams it must pass on whole.
func TestSendStreamCheck(t *testing.T) {
	parent := t.TempDir()
	if err := os.MkdirAll(filepath.Join(parent, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A symbolic link a hostile base plants, for a clone to read through.
	if err := os.Symlink("../../../../../../etc", filepath.Join(parent, "up")); err != nil {
		t.Fatal(err)
	}
	dev := func(major, minor uint64) uint64 { return major<<8 | minor }
	cases := []struct {
		name    string
		stream  *streamBuilder
		parent  bool
		max     int64
		refuse  string // "" : passes whole
		dropped int
	}{
		{name: "a full stream", stream: full().
			cmd(cmdMkdir, str(attrPath, "o257-5-0")).
			cmd(cmdRename, str(attrPath, "o257-5-0"), str(attrPathTo, "etc")).
			cmd(cmdMkfile, str(attrPath, "etc/hostname")).
			cmd(cmdWrite, str(attrPath, "etc/hostname"), u64(18, 0), str(19, "m\n")).
			cmd(cmdSymlink, str(attrPath, "abs"), str(attrPathLink, "/etc/shadow")).
			cmd(cmdSymlink, str(attrPath, "rel"), str(attrPathLink, "../../../etc")).
			cmd(cmdLink, str(attrPath, "etc/h2"), str(attrPathLink, "etc/hostname")).
			cmd(cmdMknod, str(attrPath, "null"), u64(attrMode, 0o20666), u64(attrRdev, dev(1, 3))).
			cmd(cmdMknod, str(attrPath, "wh"), u64(attrMode, 0o20000), u64(attrRdev, 0)).
			cmd(cmdMkfifo, str(attrPath, "fifo")).
			cmd(cmdClone, str(attrPath, "etc/h3"), uuidAttr(attrCloneUUID, selfUUID), str(attrClonePath, "etc/hostname")).
			cmd(cmdChown, str(attrPath, ""), u64(attrUID, 0), u64(attrGID, 0)).
			cmd(cmdEnd)},
		{name: "an incremental stream cloning from its parent", parent: true, stream: incremental().
			cmd(cmdClone, str(attrPath, "x"), uuidAttr(attrCloneUUID, parentUUID), str(attrClonePath, "etc/passwd")).
			cmd(cmdEnd)},
		{name: "trusted xattrs left out", stream: full().
			cmd(cmdSetXattr, str(attrPath, "d"), str(attrXattrName, "trusted.overlay.redirect"), str(14, "/x")).
			cmd(cmdSetXattr, str(attrPath, "d"), str(attrXattrName, "security.capability"), str(14, "c")).
			cmd(cmdEnd), dropped: 1},

		{name: "not a stream", stream: &streamBuilder{*bytes.NewBufferString("#!/bin/sh\nrm -rf /\n\x00\x00\x00\x00")}, refuse: "not a btrfs send stream"},
		{name: "version 2", stream: newStream(2).cmd(cmdEnd), refuse: "version is 2"},
		{name: "no subvolume first", stream: newStream(1).cmd(cmdMkfile, str(attrPath, "x")), refuse: "does not start with its subvolume"},
		{name: "another name", stream: newStream(1).cmd(cmdSubvol, str(attrPath, "../etc"), uuidAttr(attrUUID, selfUUID)), refuse: "not inside"},
		{name: "another subvolume name", stream: newStream(1).cmd(cmdSubvol, str(attrPath, "n"), uuidAttr(attrUUID, selfUUID)), refuse: `makes subvolume "n"`},
		{name: "two subvolumes", stream: full().cmd(cmdSubvol, str(attrPath, "m"), uuidAttr(attrUUID, otherUUID)), refuse: "second subvolume"},
		{name: "full where incremental was agreed", parent: true, stream: full().cmd(cmdEnd), refuse: "full stream where an incremental"},
		{name: "incremental where full was agreed", stream: incremental().cmd(cmdEnd), refuse: "incremental stream where a full"},
		{name: "incremental from another parent", parent: true, stream: newStream(1).cmd(cmdSnapshot, str(attrPath, "m"), uuidAttr(attrUUID, selfUUID),
			uuidAttr(attrCloneUUID, otherUUID)).cmd(cmdEnd), refuse: "from another subvolume"},
		{name: "a path up", stream: full().cmd(cmdMkfile, str(attrPath, "a/../../x")), refuse: "not inside"},
		{name: "an absolute path", stream: full().cmd(cmdWrite, str(attrPath, "/etc/passwd")), refuse: "not inside"},
		{name: "a rename out", stream: full().cmd(cmdRename, str(attrPath, "x"), str(attrPathTo, "../x")), refuse: "not inside"},
		{name: "a hard link to outside", stream: full().cmd(cmdLink, str(attrPath, "x"), str(attrPathLink, "../../etc/shadow")), refuse: "not inside"},
		{name: "a NUL in a path", stream: full().cmd(cmdMkfile, str(attrPath, "x\x00/../y")), refuse: "not inside"},
		{name: "a clone path up, from the parent", parent: true, stream: incremental().
			cmd(cmdClone, str(attrPath, "x"), uuidAttr(attrCloneUUID, parentUUID), str(attrClonePath, "../../etc/shadow")), refuse: "not inside"},
		{name: "a clone through the parent's symlink", parent: true, stream: incremental().
			cmd(cmdClone, str(attrPath, "x"), uuidAttr(attrCloneUUID, parentUUID), str(attrClonePath, "up/shadow")), refuse: "through a symbolic link"},
		{name: "a clone of the parent's directory", parent: true, stream: incremental().
			cmd(cmdClone, str(attrPath, "x"), uuidAttr(attrCloneUUID, parentUUID), str(attrClonePath, "etc")), refuse: "not a file"},
		{name: "a clone from another subvolume", stream: full().
			cmd(cmdClone, str(attrPath, "x"), uuidAttr(attrCloneUUID, otherUUID), str(attrClonePath, "etc/shadow")), refuse: "neither its own nor its parent"},
		{name: "a block device", stream: full().cmd(cmdMknod, str(attrPath, "sda"), u64(attrMode, 0o60660), u64(attrRdev, dev(8, 0))), refuse: "device node of mode 60660"},
		{name: "a disk as character device", stream: full().cmd(cmdMknod, str(attrPath, "mem"), u64(attrMode, 0o20660), u64(attrRdev, dev(1, 1))), refuse: "character device 1:1"},
		{name: "an unknown command", stream: full().cmd(25), refuse: "unknown command 25"},
		{name: "a NUL path", stream: full().cmd(cmdMkfile, attr{attrPath, make([]byte, 3)}).cmd(cmdEnd), refuse: "not inside"},
		{name: "a truncated attribute", stream: full().raw(cmdMkfile, []byte{15, 0, 9}).cmd(cmdEnd), refuse: "truncated attribute"},
		{name: "an attribute past its command", stream: full().raw(cmdMkfile, []byte{15, 0, 9, 0, 'x'}).cmd(cmdEnd), refuse: "longer than its command"},
		{name: "a command past the limit", stream: full().raw(cmdWrite, make([]byte, maxCommand+1)), refuse: "a command of 65537 bytes"},
		{name: "no end", stream: full().cmd(cmdMkfile, str(attrPath, "x")), refuse: "without its end"},
		{name: "over its cap", max: 200, stream: full().cmd(cmdWrite, str(attrPath, "x"), str(19, strings.Repeat("a", 300))).cmd(cmdEnd), refuse: "too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &SendStreamCheck{Name: "m", Max: tc.max}
			if tc.parent {
				c.Parent, c.ParentRoot = parentUUID, parent
			}
			in := tc.stream.Bytes()
			var out bytes.Buffer
			err := c.Copy(&out, bytes.NewReader(in))
			if tc.refuse == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c.Xattrs != tc.dropped {
					t.Errorf("dropped %d xattrs, want %d", c.Xattrs, tc.dropped)
				}
				if tc.dropped == 0 && !bytes.Equal(out.Bytes(), in) {
					t.Errorf("passed on %d bytes, not the %d of the stream", out.Len(), len(in))
				}
				if c.Self != selfUUID {
					t.Errorf("its UUID: %s", c.Self)
				}
				return
			}
			if err == nil {
				t.Fatal("passed")
			}
			if !errors.Is(err, ErrSendStream) && !errors.Is(err, ErrStreamTooLarge) {
				t.Errorf("%v is neither ErrSendStream nor ErrStreamTooLarge", err)
			}
			if !strings.Contains(err.Error(), tc.refuse) {
				t.Errorf("error %q does not say %q", err, tc.refuse)
			}
			// Nothing of the refused command reached btrfs receive.
			if bytes.Contains(out.Bytes(), []byte("shadow")) || bytes.Contains(out.Bytes(), []byte("..")) {
				t.Errorf("the refused command went on: %q", out.Bytes())
			}
		})
	}
}
