package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafeArchive is returned for an archive that would write outside the
// directory it is extracted into, or that GNU tar could read otherwise
// than nsbox checked it.
var ErrUnsafeArchive = errors.New("unsafe archive")

// ErrNoSpace is returned for an archive that needs more of the file
// system than an import may take.
var ErrNoSpace = errors.New("not enough space")

// ErrTooLarge is returned for an image whose layers write more than the
// cap (ArchiveChecker.Cap).
var ErrTooLarge = errors.New("image too large")

// overSpace reports whether err is a refusal for the space an archive
// takes, after which copyArchive stops writing.
func overSpace(err error) bool { return errors.Is(err, ErrNoSpace) || errors.Is(err, ErrTooLarge) }

// Space is what an import may take of the file system it lands on.
type Space struct {
	Dir     string // the file system, as the user knows it (named in errors)
	Bytes   int64  // bytes the new tree may take
	Reserve int64  // bytes kept free beyond Bytes (named in errors)
	Inodes  int64  // inodes the new tree may take; 0: not counted (btrfs)
	Block   int64  // the file system's block size: a file takes whole blocks
}

// ArchiveChecker checks tar members one by one, in archive order, and says
// what of each goes on to GNU tar.
type ArchiveChecker struct {
	// Space, when set, caps what the kept members may take.
	Space *Space
	// Need and Inodes are what the members kept so far take.
	Need, Inodes int64
	// Devices counts the device nodes dropped (and hard links to them);
	// Xattrs the trusted.* extended attributes dropped.
	Devices, Xattrs int

	// Cap, when above 0, caps the bytes the kept members may take
	// whatever the space: an image's layers (ErrTooLarge).
	Cap int64

	// XattrACLs extracts with XattrACLTarArgs: the archive's ACLs are
	// extended attributes (an image layer's, a send's base and upper),
	// which GNU tar's --acls would ignore.
	XattrACLs bool

	links   map[string]bool // paths the archive made symbolic links
	dropped map[string]bool // paths of dropped device nodes
	full    bool            // Space was exceeded: only counting from here
	partial bool            // counting stopped before the end

	// layer: Check reads an image layer (see Layers): whiteouts were
	// taken by the first pass and are dropped here, and tree remembers
	// what every kept member made ('d' directory, 'l' symbolic link,
	// 'f' anything else), for the layers after.
	layer bool
	tree  map[string]byte
}

// Check decides about one member, as the Go reader gave it: an error
// refuses the whole archive; otherwise it returns the header to give
// GNU tar, or nil to drop the member.
//
// Refused: an absolute path, a ".." component, a path that goes through a
// symbolic link the archive made earlier or replaces one, a hard link
// pointing out or at a link, a member larger than Space allows, and every
// header that GNU tar would read otherwise than Go's reader does: sparse
// files (typeflag 'S' and GNU.sparse.* records, which carry names and
// sizes of their own), all other GNU.* records (dump directories,
// volumes), a PAX path or linkpath that disagrees with the name Go chose
// (a GNU long name and a PAX record together: Go takes the one, GNU tar
// the other), a regular file whose name ends in "/" (a directory to GNU
// tar), data on a type that has none (GNU tar would read it as headers),
// global headers other than comments (GNU tar applies them to every later
// member, Go to none), and every type but regular file, directory,
// symbolic link, hard link, FIFO and device (volume labels 'V',
// continuations 'M', old long names 'N', Solaris headers 'X', dump
// directories 'D', vendor types).
//
// Dropped: character and block devices (and hard links to them), since
// systemd-nspawn gives a machine its own /dev and a device node elsewhere
// in a tree only opens the host's devices, and trusted.* extended
// attributes, which a machine cannot set or use and which overlayfs on
// the host would trust.
func (c *ArchiveChecker) Check(h *tar.Header) (*tar.Header, error) {
	if c.links == nil {
		c.links, c.dropped = map[string]bool{}, map[string]bool{}
	}
	if h.Typeflag == tar.TypeXGlobalHeader {
		for k := range h.PAXRecords {
			if k != "comment" {
				return nil, fmt.Errorf("%w: a global header sets %q for every member after it", ErrUnsafeArchive, k)
			}
		}
		return nil, nil
	}
	for k, v := range h.PAXRecords {
		switch {
		case strings.HasPrefix(k, "GNU."):
			return nil, fmt.Errorf("%w: %q has the GNU tar record %s (sparse files, dump directories and volumes are not imported)", ErrUnsafeArchive, h.Name, k)
		case k == "path" && v != h.Name, k == "linkpath" && v != h.Linkname:
			return nil, fmt.Errorf("%w: %q: its PAX %s record %q disagrees with its name", ErrUnsafeArchive, h.Name, k, v)
		}
	}
	name, err := memberPath(h.Name)
	if err != nil {
		return nil, err
	}
	if c.layer {
		if err := checkWhiteoutUse(h.Name, name); err != nil {
			return nil, err
		}
		if strings.HasPrefix(path.Base(name), whiteoutPrefix) {
			return nil, nil // applied before this pass
		}
	}
	switch h.Typeflag {
	case tar.TypeReg:
		if strings.HasSuffix(h.Name, "/") {
			return nil, fmt.Errorf("%w: %q is a file whose name ends in / (GNU tar makes it a directory)", ErrUnsafeArchive, h.Name)
		}
	case tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
		if h.Size != 0 {
			return nil, fmt.Errorf("%w: %q, a %s, carries %d bytes of data", ErrUnsafeArchive, h.Name, typeName(h.Typeflag), h.Size)
		}
	default:
		return nil, fmt.Errorf("%w: %q is a %s, which nsbox does not import", ErrUnsafeArchive, h.Name, typeName(h.Typeflag))
	}
	if name == "." && h.Typeflag != tar.TypeDir {
		return nil, fmt.Errorf("%w: the archive's root %q is a %s", ErrUnsafeArchive, h.Name, typeName(h.Typeflag))
	}
	if h.Uid < 0 || h.Gid < 0 || int64(h.Uid) > 1<<32-2 || int64(h.Gid) > 1<<32-2 {
		return nil, fmt.Errorf("%w: %q: owner %d:%d out of range", ErrUnsafeArchive, h.Name, h.Uid, h.Gid)
	}
	if err := c.throughLink(h.Name, name); err != nil {
		return nil, err
	}
	if c.links[name] {
		return nil, fmt.Errorf("%w: %q replaces a symbolic link the archive made", ErrUnsafeArchive, h.Name)
	}
	out := &tar.Header{
		Typeflag: h.Typeflag, Name: name, Size: h.Size, Mode: h.Mode & 0o7777,
		Uid: h.Uid, Gid: h.Gid, ModTime: h.ModTime, AccessTime: h.AccessTime, Format: tar.FormatPAX,
	}
	switch h.Typeflag {
	case tar.TypeDir:
		out.Name += "/"
	case tar.TypeChar, tar.TypeBlock:
		c.dropped[name] = true
		c.Devices++
		return nil, nil
	case tar.TypeSymlink:
		out.Linkname = h.Linkname
	case tar.TypeLink:
		target, err := memberPath(h.Linkname)
		if err != nil {
			return nil, fmt.Errorf("hard link %q: %w", h.Name, err)
		}
		if err := c.throughLink(h.Linkname, target); err != nil {
			return nil, err
		}
		if c.links[target] {
			return nil, fmt.Errorf("%w: hard link %q to a symbolic link", ErrUnsafeArchive, h.Name)
		}
		if target == "." {
			return nil, fmt.Errorf("%w: hard link %q to the root", ErrUnsafeArchive, h.Name)
		}
		if c.dropped[target] {
			c.dropped[name] = true
			c.Devices++
			return nil, nil
		}
		out.Linkname = target
	}
	if h.Typeflag == tar.TypeSymlink {
		c.links[name] = true
	}
	delete(c.dropped, name)
	out.PAXRecords = c.records(h)
	c.add(h)
	if c.over() {
		c.full = true
		return nil, c.spaceError()
	}
	if c.layer {
		c.made(name, h.Typeflag)
	}
	return out, nil
}

// records keeps the PAX records GNU tar restores on extraction: extended
// attributes, ACLs and the SELinux label; trusted.* attributes are
// dropped. Everything else (path, size, times, owners) is in the header
// nsbox writes.
func (c *ArchiveChecker) records(h *tar.Header) map[string]string {
	var out map[string]string
	for k, v := range h.PAXRecords {
		switch {
		case strings.HasPrefix(k, "SCHILY.xattr.trusted."):
			c.Xattrs++
			continue
		case strings.HasPrefix(k, "SCHILY.xattr."), k == "SCHILY.acl.access", k == "SCHILY.acl.default", k == "RHT.security.selinux":
		default:
			continue
		}
		if h.Typeflag == tar.TypeLink {
			continue // GNU tar sets nothing on a hard link
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

// add counts what member h takes on disk: whole blocks for a file's data,
// a block for a directory or a long symbolic link, an inode for all but
// hard links.
func (c *ArchiveChecker) add(h *tar.Header) {
	block := int64(4096)
	if c.Space != nil && c.Space.Block > 0 {
		block = c.Space.Block
	}
	switch h.Typeflag {
	case tar.TypeReg:
		c.Need += (h.Size + block - 1) / block * block
	case tar.TypeDir:
		c.Need += block
	case tar.TypeSymlink:
		if len(h.Linkname) >= 60 { // ext4 keeps shorter targets in the inode
			c.Need += block
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeXGlobalHeader:
		return
	}
	if h.Typeflag != tar.TypeLink {
		c.Inodes++
	}
}

// over reports whether what was counted exceeds Space or Cap.
func (c *ArchiveChecker) over() bool {
	if c.capped() {
		return true
	}
	s := c.Space
	return s != nil && (c.Need > s.Bytes || (s.Inodes > 0 && c.Inodes > s.Inodes))
}

// capped reports whether what was counted exceeds Cap.
func (c *ArchiveChecker) capped() bool { return c.Cap > 0 && c.Need > c.Cap }

// spaceError says how much the archive needs (as far as counted) against
// what the file system has, or that it passed Cap.
func (c *ArchiveChecker) spaceError() error {
	if c.capped() {
		return fmt.Errorf("%w: its layers write more than %s, the cap on an image (raise it with --max-size)", ErrTooLarge, FormatSize(c.Cap))
	}
	s := c.Space
	if c.Need > s.Bytes {
		more := ""
		if c.partial {
			more = "more than "
		}
		return fmt.Errorf("%w: archive needs %s%s, only %s free on %s (%s kept in reserve)", ErrNoSpace, more, FormatSize(c.Need), FormatSize(s.Bytes), s.Dir, FormatSize(s.Reserve))
	}
	return fmt.Errorf("%w: archive needs %d inodes, only %d free on %s", ErrNoSpace, c.Inodes, s.Inodes, s.Dir)
}

// FormatSize writes n bytes as a person reads them: "12.3 GB".
func FormatSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// typeName names a typeflag in errors.
func typeName(t byte) string {
	switch t {
	case tar.TypeReg:
		return "regular file"
	case tar.TypeDir:
		return "directory"
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeFifo:
		return "FIFO"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeGNUSparse:
		return "GNU sparse file"
	case 'V':
		return "GNU volume label"
	case 'M':
		return "GNU multi-volume continuation"
	case 'N':
		return "GNU old long name"
	case 'D':
		return "GNU dump directory"
	case 'X':
		return "Solaris extended header"
	case tar.TypeCont:
		return "contiguous file"
	}
	return fmt.Sprintf("member of type %q", t)
}

// memberPath cleans a member name, refusing empty and absolute paths, NUL
// and "..".
func memberPath(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: a member without a name", ErrUnsafeArchive)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path %q", ErrUnsafeArchive, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q leaves the root through a .. component", ErrUnsafeArchive, name)
		}
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: NUL in %q", ErrUnsafeArchive, name)
	}
	return path.Clean(name), nil
}

// throughLink refuses a path whose parent directories include a link.
func (c *ArchiveChecker) throughLink(orig, name string) error {
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if c.links[dir] {
			return fmt.Errorf("%w: %q would be written through the symbolic link %q", ErrUnsafeArchive, orig, dir)
		}
	}
	return nil
}

// errTarStopped ends the reading of a decompressor's output that nobody
// reads any more.
var errTarStopped = errors.New("tar stopped reading the archive")

// tarStopped reports whether err is a write to GNU tar after it stopped
// reading.
func tarStopped(err error) bool {
	return errors.Is(err, unix.EPIPE) || errors.Is(err, os.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

// copyArchive reads the tar stream r with Go's reader, checks every member
// with c and writes the kept ones, encoded anew by Go's writer, to w (GNU
// tar's input). So GNU tar never parses a byte of the archive as given:
// it extracts exactly the members that were checked, named as they were
// checked, whatever tricks the headers play on one reader or the other.
// A member is written only once it has passed, so when a later one is
// refused GNU tar has written only checked members (into a staging tree
// that the caller removes).
//
// When the archive needs more than c.Space, cut is called at once (the
// caller ends GNU tar's input) and the rest is only read, to say what the
// whole archive needs (up to twice the space and 1 GiB more: then "more
// than").
func copyArchive(r io.Reader, w io.Writer, c *ArchiveChecker, cut func(error)) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if c.full {
				return c.spaceError()
			}
			return readError(err)
		}
		if c.full {
			// Only counting, for the error; a decompression bomb is not
			// read to its end, nor an image past its cap.
			if c.capped() {
				return c.spaceError()
			}
			c.add(h)
			if c.Need > 2*c.Space.Bytes+1<<30 {
				c.partial = true
				return c.spaceError()
			}
			continue
		}
		out, err := c.Check(h)
		if overSpace(err) {
			cut(err)
			continue
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeXGlobalHeader {
			n++
		}
		if out == nil {
			continue
		}
		if err := tw.WriteHeader(out); err != nil {
			if tarStopped(err) {
				return err
			}
			return fmt.Errorf("%w: %q cannot be written as checked: %v", ErrUnsafeArchive, h.Name, err)
		}
		if out.Typeflag == tar.TypeReg {
			if _, err := io.CopyN(tw, tr, h.Size); err != nil {
				if tarStopped(err) {
					return err
				}
				return readError(err)
			}
		}
	}
	if c.full {
		return c.spaceError()
	}
	if n == 0 && !c.layer {
		return fmt.Errorf("empty archive")
	}
	// GNU tar may stop reading at the first of the two closing blocks and
	// exit: its exit status, not this write, says how the extraction went.
	_ = tw.Close()
	return nil
}

// readError words a failure to read the archive.
func readError(err error) error {
	if errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("not a tar archive, or a truncated one: %w", err)
	}
	return fmt.Errorf("read archive: %w", err)
}

// maxTail is how much may follow the end of a tar archive: GNU tar pads
// to its record size (10 KiB by default, 1 MiB at -b 2048).
const maxTail = 16 << 20

// drainTail reads what follows the end of the archive, so a compressor's
// checksum at the very end is verified and its program exits.
func drainTail(r io.Reader) error {
	n, err := io.Copy(io.Discard, io.LimitReader(r, maxTail+1))
	if err != nil {
		return fmt.Errorf("read archive: %w", err)
	}
	if n > maxTail {
		return fmt.Errorf("more than %d MiB of data after the end of the archive", maxTail>>20)
	}
	return nil
}
