package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/nsbox/nsbox/machine/host"

	"golang.org/x/sys/unix"
)

// ErrSendStream is a btrfs send stream that is malformed or asks for
// what a received machine must not have; the receive stops before
// btrfs receive sees the command.
var ErrSendStream = errors.New("refused btrfs send stream")

// ErrStreamTooLarge is a btrfs send stream longer than the space the
// receiving file system may give it.
var ErrStreamTooLarge = errors.New("btrfs send stream too large")

// The send stream's format (version 1), from the kernel's fs/btrfs/send.h:
// a header ("btrfs-stream\0", a little-endian u32 version), then
// commands, each a header (u32 payload length, u16 command, u32 crc32c)
// and a payload of attributes (u16 type, u16 length, value).
const (
	streamMagic     = "btrfs-stream\x00"
	streamHeaderLen = len(streamMagic) + 4
	cmdHeaderLen    = 10
	// maxCommand is the largest payload of a version 1 command
	// (BTRFS_SEND_BUF_SIZE_V1, 64 KiB, less its header).
	maxCommand = 64 << 10
)

// Send stream commands (enum btrfs_send_cmd, version 1).
const (
	cmdSubvol       = 1
	cmdSnapshot     = 2
	cmdMkfile       = 3
	cmdMkdir        = 4
	cmdMknod        = 5
	cmdMkfifo       = 6
	cmdMksock       = 7
	cmdSymlink      = 8
	cmdRename       = 9
	cmdLink         = 10
	cmdUnlink       = 11
	cmdRmdir        = 12
	cmdSetXattr     = 13
	cmdRemoveXattr  = 14
	cmdWrite        = 15
	cmdClone        = 16
	cmdTruncate     = 17
	cmdChmod        = 18
	cmdChown        = 19
	cmdUtimes       = 20
	cmdEnd          = 21
	cmdUpdateExtent = 22
)

// Send stream attributes (enum btrfs_send_attr, version 1).
const (
	attrUUID      = 1
	attrMode      = 5
	attrUID       = 6
	attrGID       = 7
	attrRdev      = 8
	attrXattrName = 13
	attrPath      = 15
	attrPathTo    = 16
	attrPathLink  = 17
	attrCloneUUID = 20
	attrClonePath = 22
)

// SendStreamCheck is what a received btrfs send stream may do: make the
// one subvolume Name (any one name, then set, when empty) (a full stream), or, with Parent set, make Name as a
// snapshot of the subvolume received from Parent (an incremental one),
// whose tree is ParentRoot on this host. Every path stays inside the
// subvolume (no absolute path, no ".."); clones read only the subvolume
// itself or, through no symbolic link, a regular file of ParentRoot;
// device nodes are the pseudo devices a tree may carry (null, zero, full,
// random, urandom, tty, console, ptmx) or an overlay whiteout; trusted.*
// extended attributes (overlayfs's) are left out. Max caps the stream's
// bytes; ReceiveSubvolume stops btrfs receive when the file system's free
// space falls below Reserve (clones and holes take no bytes of the
// stream, and a file system's metadata grows with it).
//
// btrfs receive --chroot alone does not confine a stream: it resolves
// snapshot and clone sources from a descriptor of the file system's
// mount opened before its chroot, so a clone path with ".." there, or
// through a symbolic link in the parent, reads any file of the file
// system. These checks close that.
type SendStreamCheck struct {
	Name       string
	Parent     host.UUID
	ParentRoot string
	Max        int64
	Reserve    int64

	// Self is the UUID the stream gives its subvolume (which the
	// received subvolume keeps as its received UUID); Bytes what was
	// read; Xattrs the trusted.* attributes left out.
	Self   host.UUID
	Bytes  int64
	Xattrs int

	started bool
	parent  *os.Root
}

// allowedDevices are the device nodes a received tree may have: the
// pseudo devices of debootstrap's /dev (nspawn gives a machine its own
// /dev anyway) and overlayfs's whiteout (0:0).
var allowedDevices = map[[2]uint32]bool{
	{0, 0}: true, {1, 3}: true, {1, 5}: true, {1, 7}: true, {1, 8}: true, {1, 9}: true,
	{5, 0}: true, {5, 1}: true, {5, 2}: true,
}

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrSendStream, fmt.Sprintf(format, a...))
}

// Copy reads a send stream from src, checks every command, and writes the
// commands that pass to dst, up to and including the stream's end
// command, after which it stops reading. A command that fails a check is
// never written.
func (c *SendStreamCheck) Copy(dst io.Writer, src io.Reader) error {
	defer func() {
		if c.parent != nil {
			c.parent.Close()
			c.parent = nil
		}
	}()
	hdr := make([]byte, streamHeaderLen)
	if err := c.read(src, hdr); err != nil {
		return err
	}
	if string(hdr[:len(streamMagic)]) != streamMagic {
		return refuse("it is not a btrfs send stream")
	}
	if v := binary.LittleEndian.Uint32(hdr[len(streamMagic):]); v != 1 {
		return refuse("its version is %d; nsbox takes version 1", v)
	}
	if _, err := dst.Write(hdr); err != nil {
		return err
	}
	buf := make([]byte, cmdHeaderLen+maxCommand)
	for {
		if err := c.read(src, buf[:cmdHeaderLen]); err != nil {
			if errors.Is(err, io.EOF) {
				return refuse("it ends without its end command")
			}
			return err
		}
		n := binary.LittleEndian.Uint32(buf[0:4])
		cmd := binary.LittleEndian.Uint16(buf[4:6])
		if n > maxCommand {
			return refuse("a command of %d bytes", n)
		}
		msg := buf[:cmdHeaderLen+int(n)]
		if err := c.read(src, msg[cmdHeaderLen:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		keep, err := c.check(cmd, msg[cmdHeaderLen:])
		if err != nil {
			return err
		}
		if !keep {
			continue
		}
		if _, err := dst.Write(msg); err != nil {
			return err
		}
		if cmd == cmdEnd {
			return nil
		}
	}
}

func (c *SendStreamCheck) read(src io.Reader, b []byte) error {
	if c.Max > 0 && c.Bytes+int64(len(b)) > c.Max {
		return fmt.Errorf("%w: more than the %d bytes this file system may take", ErrStreamTooLarge, c.Max)
	}
	n, err := io.ReadFull(src, b)
	c.Bytes += int64(n)
	return err
}

// attrs splits a command's payload into its attributes (the last value
// of a type wins, as btrfs receive reads them).
func attrs(p []byte) (map[uint16][]byte, error) {
	out := make(map[uint16][]byte)
	for len(p) > 0 {
		if len(p) < 4 {
			return nil, refuse("a truncated attribute")
		}
		t, n := binary.LittleEndian.Uint16(p[0:2]), int(binary.LittleEndian.Uint16(p[2:4]))
		if len(p) < 4+n {
			return nil, refuse("an attribute longer than its command")
		}
		out[t] = p[4 : 4+n]
		p = p[4+n:]
	}
	return out, nil
}

// checkPath refuses a path that could leave the subvolume: absolute,
// with a ".." component, or with a NUL.
func checkPath(what string, p []byte) error {
	s := string(p)
	if strings.HasPrefix(s, "/") || bytes.IndexByte(p, 0) >= 0 {
		return refuse("%s %q is not inside the machine", what, s)
	}
	for _, part := range strings.Split(s, "/") {
		if part == ".." {
			return refuse("%s %q is not inside the machine", what, s)
		}
	}
	return nil
}

func (c *SendStreamCheck) check(cmd uint16, payload []byte) (keep bool, err error) {
	a, err := attrs(payload)
	if err != nil {
		return false, err
	}
	for _, t := range []uint16{attrPath, attrPathTo, attrClonePath} {
		if p, ok := a[t]; ok {
			if err := checkPath("path", p); err != nil {
				return false, err
			}
		}
	}
	if !c.started && cmd != cmdSubvol && cmd != cmdSnapshot {
		return false, refuse("it does not start with its subvolume")
	}
	switch cmd {
	case cmdSubvol, cmdSnapshot:
		if c.started {
			return false, refuse("it makes a second subvolume")
		}
		c.started = true
		got := string(a[attrPath])
		if c.Name == "" && (got == "" || got == "." || strings.Contains(got, "/")) || c.Name != "" && got != c.Name {
			return false, refuse("it makes subvolume %q, not %q", got, c.Name)
		}
		c.Name = got
		if len(a[attrUUID]) != 16 {
			return false, refuse("its subvolume has no UUID")
		}
		copy(c.Self[:], a[attrUUID])
		if c.Parent.IsZero() != (cmd == cmdSubvol) {
			if cmd == cmdSubvol {
				return false, refuse("it is a full stream where an incremental one from %s was agreed", c.Parent)
			}
			return false, refuse("it is an incremental stream where a full one was agreed")
		}
		if cmd == cmdSnapshot {
			if !bytes.Equal(a[attrCloneUUID], c.Parent[:]) {
				return false, refuse("it is incremental from another subvolume than %s", c.Parent)
			}
			r, err := os.OpenRoot(c.ParentRoot)
			if err != nil {
				return false, err
			}
			c.parent = r
		}
	case cmdLink:
		if err := checkPath("link", a[attrPathLink]); err != nil {
			return false, err
		}
	case cmdMknod:
		mode := binary.LittleEndian.Uint64(pad8(a[attrMode]))
		rdev := binary.LittleEndian.Uint64(pad8(a[attrRdev]))
		switch mode & unix.S_IFMT {
		case unix.S_IFIFO, unix.S_IFSOCK:
		case unix.S_IFCHR:
			if !allowedDevices[[2]uint32{unix.Major(rdev), unix.Minor(rdev)}] {
				return false, refuse("it makes character device %d:%d at %q", unix.Major(rdev), unix.Minor(rdev), a[attrPath])
			}
		default:
			return false, refuse("it makes a device node of mode %o at %q", mode, a[attrPath])
		}
	case cmdSetXattr:
		if strings.HasPrefix(string(a[attrXattrName]), "trusted.") {
			c.Xattrs++
			return false, nil
		}
	case cmdClone:
		uuid := a[attrCloneUUID]
		switch {
		case bytes.Equal(uuid, c.Self[:]):
			// The subvolume being received: btrfs receive opens it by
			// an absolute path, which its chroot confines.
		case !c.Parent.IsZero() && bytes.Equal(uuid, c.Parent[:]):
			if err := c.checkParentFile(string(a[attrClonePath])); err != nil {
				return false, err
			}
		default:
			return false, refuse("it clones from subvolume %x, neither its own nor its parent", uuid)
		}
	case cmdMkfile, cmdMkdir, cmdMkfifo, cmdMksock, cmdSymlink, cmdRename, cmdUnlink, cmdRmdir,
		cmdRemoveXattr, cmdWrite, cmdTruncate, cmdChmod, cmdChown, cmdUtimes, cmdEnd, cmdUpdateExtent:
	default:
		return false, refuse("unknown command %d", cmd)
	}
	return true, nil
}

// checkParentFile makes sure a clone source in the parent is a regular
// file reached through no symbolic link: btrfs receive opens it from
// the file system's mount, outside its chroot.
func (c *SendStreamCheck) checkParentFile(p string) error {
	if p == "" {
		return refuse("it clones from the parent's top directory")
	}
	clean := path.Clean(p)
	dir := "."
	for _, part := range strings.Split(clean, "/") {
		fi, err := c.parent.Lstat(path.Join(dir, part))
		if err != nil {
			return refuse("it clones from %q, which its parent does not have", p)
		}
		dir = path.Join(dir, part)
		if fi.Mode()&os.ModeSymlink != 0 {
			return refuse("it clones from %q, through a symbolic link of its parent", p)
		}
	}
	fi, err := c.parent.Lstat(clean)
	if err != nil || !fi.Mode().IsRegular() {
		return refuse("it clones from %q, which is not a file of its parent", p)
	}
	return nil
}

func pad8(b []byte) []byte {
	out := make([]byte, 8)
	copy(out, b)
	return out
}
