// Package treediff says what a machine's tree changed against the base it
// was made from: entries added, deleted, modified (content, mode, owner,
// link target, device number) and changed in type. It compares two trees
// walked side by side (a copy or btrfs snapshot against its base), or an
// overlay's upper directory against the lower it lies over, where a
// whiteout is a deletion, an opaque directory hides what is under it in
// the lower, and an entry missing from the upper is the lower's,
// unchanged.
//
// The trees are a machine's: every step is taken relative to a directory
// descriptor with O_NOFOLLOW, so that no link the machine planted leads
// the walk out of its tree, and a file's data is read only through a
// descriptor that was checked to be a regular file (never a device or a
// FIFO the machine swapped in).
package treediff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// RangeSize is the ids a machine's range holds.
const RangeSize = 0x10000

// overflowID is the owner a machine sees for an id outside its range.
const overflowID = 65534

// Tree is one side of a diff: the directory that is its root, and the
// host id of the tree's id 0 (its user id range; 0 for a base and for a
// machine without a user namespace).
type Tree struct {
	FD    int
	Shift int
}

// Options are a diff's choices.
type Options struct {
	// Overlay says New is an overlay's upper directory over Old.
	Overlay bool
	// Path limits the diff to this path of the machine and what is under
	// it (cleaned, "/" for the whole tree); see CleanPath.
	Path string
}

// Change is what happened to an entry.
type Change string

// The changes an entry can have.
const (
	Added       Change = "added"
	Deleted     Change = "deleted"
	Modified    Change = "modified"
	TypeChanged Change = "type_changed"
)

// Letter is the change's letter in the text report.
func (c Change) Letter() string {
	switch c {
	case Added:
		return "A"
	case Deleted:
		return "D"
	case TypeChanged:
		return "T"
	}
	return "M"
}

// Entry is one changed path. Fields of the entry as it is now are set
// unless it was deleted; old_ fields, as the base has it, unless it was
// added.
type Entry struct {
	Path   string `json:"path"`
	Change Change `json:"change"`
	// What lists what differs in a modified entry, each of content,
	// mode, owner, group, target (a link's), device (a node's numbers),
	// xattrs (extended attributes: file capabilities, ACLs, labels);
	// type for a type change.
	What      []string `json:"what"`
	Type      string   `json:"type,omitempty"`
	OldType   string   `json:"old_type,omitempty"`
	Mode      string   `json:"mode,omitempty"`
	OldMode   string   `json:"old_mode,omitempty"`
	UID       *int     `json:"uid,omitempty"`
	OldUID    *int     `json:"old_uid,omitempty"`
	GID       *int     `json:"gid,omitempty"`
	OldGID    *int     `json:"old_gid,omitempty"`
	Size      *int64   `json:"size,omitempty"`
	OldSize   *int64   `json:"old_size,omitempty"`
	Target    *string  `json:"target,omitempty"`
	OldTarget *string  `json:"old_target,omitempty"`
}

// Summary counts the changes and the bytes of regular files they concern:
// added (the new files, a file of several hard links counted once),
// modified (the modified files as they are now) and deleted (as they
// were).
type Summary struct {
	Added         int   `json:"added"`
	Modified      int   `json:"modified"`
	Deleted       int   `json:"deleted"`
	TypeChanged   int   `json:"type_changed"`
	AddedBytes    int64 `json:"added_bytes"`
	ModifiedBytes int64 `json:"modified_bytes"`
	DeletedBytes  int64 `json:"deleted_bytes"`
}

// ErrPath marks a Path the trees do not have, or reach only through a
// link (a PathError).
var ErrPath = errors.New("path")

// PathError is a Path the trees do not have, or reach only through a
// link; Msg says which.
type PathError struct{ Msg string }

func (e *PathError) Error() string        { return e.Msg }
func (e *PathError) Is(target error) bool { return target == ErrPath }

func pathErrorf(format string, a ...any) error { return &PathError{fmt.Sprintf(format, a...)} }

// CleanPath checks a path of a machine that a user gave and cleans it, as
// the machine would resolve it lexically: relative to its root, ".."
// stopping at the root.
func CleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fmt.Errorf("an empty path")
	case strings.ContainsRune(p, 0):
		return "", fmt.Errorf("a path with a NUL byte")
	case len(p) > unix.PathMax:
		return "", fmt.Errorf("a path longer than %d bytes", unix.PathMax)
	}
	c := path.Clean("/" + p)
	for _, part := range strings.Split(c, "/") {
		if len(part) > 255 {
			return "", fmt.Errorf("a path with a name longer than 255 bytes")
		}
	}
	return c, nil
}

// Diff compares tree new against tree old and returns the changed
// entries, sorted by path, and their summary.
func Diff(ctx context.Context, old, new Tree, o Options) ([]Entry, Summary, error) {
	p := o.Path
	if p == "" {
		p = "/"
	}
	p, err := CleanPath(p)
	if err != nil {
		return nil, Summary{}, pathErrorf("%v", err)
	}
	d := &differ{ctx: ctx, old: old, new: new, overlay: o.Overlay, links: map[[2]uint64]bool{}}
	if p != "/" {
		d.prefix = strings.Split(strings.TrimPrefix(p, "/"), "/")
	}
	oldRoot, err := reopenDir(old.FD)
	if err != nil {
		return nil, Summary{}, err
	}
	newRoot, err := reopenDir(new.FD)
	if err != nil {
		unix.Close(oldRoot)
		return nil, Summary{}, err
	}
	if p == "/" {
		// The root directory's own mode and owners.
		o, n := side{dir: oldRoot, name: "."}, side{dir: newRoot, name: "."}
		o.ok = unix.Fstat(oldRoot, &o.st) == nil
		n.ok = unix.Fstat(newRoot, &n.st) == nil
		if o.ok && n.ok {
			what, err := d.compare(&o, &n, "/")
			if err != nil {
				unix.Close(oldRoot)
				unix.Close(newRoot)
				return nil, Summary{}, err
			}
			if len(what) > 0 {
				d.changed(&o, &n, "/", Modified, what)
			}
		}
	}
	if err := d.walk(oldRoot, newRoot, "", 0, both, false); err != nil {
		return nil, Summary{}, err
	}
	if len(d.prefix) > 0 && !d.found {
		return nil, Summary{}, pathErrorf("no %s in the machine or its base", p)
	}
	sort.Slice(d.out, func(i, j int) bool { return d.out[i].Path < d.out[j].Path })
	if d.out == nil {
		d.out = []Entry{}
	}
	return d.out, d.sum, nil
}

// reopenDir opens the directory fd is for reading its entries.
func reopenDir(fd int) (int, error) {
	return unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// walkMode is what a walk of a directory compares.
type walkMode int

const (
	// both: the directory is on both sides.
	both walkMode = iota
	// added, deleted: only the new (old) side has it: all it holds was
	// added (deleted).
	added
	deleted
	// lowerOnly: an overlay's lower directory the upper has nothing of:
	// unchanged, walked only to check the path a diff is limited to.
	lowerOnly
)

type differ struct {
	ctx      context.Context
	old, new Tree
	overlay  bool
	prefix   []string
	found    bool
	out      []Entry
	sum      Summary
	// links are the added files counted in AddedBytes, by device and
	// inode: a file's hard links count once.
	links map[[2]uint64]bool
}

// side is an entry on one side: its parent directory and name.
type side struct {
	dir  int
	name string
	st   unix.Stat_t
	ok   bool
}

func (s *side) isDir() bool { return s.ok && s.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// names lists directory fd's entries (fd stays open).
func names(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	if _, err := unix.Seek(dup, 0, io.SeekStart); err != nil {
		return nil, err
	}
	return f.Readdirnames(-1)
}

// walk compares directory oldDir with newDir (either -1 where mode says
// that side has none), rel being their path ("" for the root) at depth
// (the number of its components); opaque says newDir is an overlay's
// opaque directory. It closes both descriptors.
func (d *differ) walk(oldDir, newDir int, rel string, depth int, mode walkMode, opaque bool) error {
	defer func() {
		if oldDir >= 0 {
			unix.Close(oldDir)
		}
		if newDir >= 0 {
			unix.Close(newDir)
		}
	}()
	if err := d.ctx.Err(); err != nil {
		return err
	}
	if mode == lowerOnly && depth >= len(d.prefix) {
		return nil
	}
	set := map[string]bool{}
	if newDir >= 0 {
		ns, err := names(newDir)
		if err != nil {
			return fmt.Errorf("read %s: %w", display(rel), err)
		}
		for _, n := range ns {
			set[n] = true
		}
	}
	// An overlay's upper lists what changed; the lower's other entries
	// are as they were, unless the upper's directory is opaque.
	if oldDir >= 0 && (!d.overlay || newDir < 0 || opaque) {
		ns, err := names(oldDir)
		if err != nil {
			return fmt.Errorf("read %s in the base: %w", display(rel), err)
		}
		for _, n := range ns {
			set[n] = true
		}
	}
	if depth < len(d.prefix) {
		want := d.prefix[depth]
		set = map[string]bool{}
		set[want] = true
	}
	list := make([]string, 0, len(set))
	for n := range set {
		list = append(list, n)
	}
	sort.Strings(list)
	for _, n := range list {
		if err := d.entry(oldDir, newDir, n, rel, depth, mode, opaque); err != nil {
			return err
		}
	}
	return nil
}

func display(rel string) string {
	if rel == "" {
		return "/"
	}
	return rel
}

// entry compares name in oldDir and newDir.
func (d *differ) entry(oldDir, newDir int, name, rel string, depth int, mode walkMode, opaque bool) error {
	p := rel + "/" + name
	o := side{dir: oldDir, name: name}
	n := side{dir: newDir, name: name}
	if oldDir >= 0 {
		o.ok = unix.Fstatat(oldDir, name, &o.st, unix.AT_SYMLINK_NOFOLLOW) == nil
	}
	if newDir >= 0 {
		n.ok = unix.Fstatat(newDir, name, &n.st, unix.AT_SYMLINK_NOFOLLOW) == nil
	}
	upperHas := n.ok
	if d.overlay && n.ok && d.whiteout(newDir, name, &n.st) {
		n.ok = false
		if mode == added {
			// A whiteout over nothing the lower has.
			return nil
		}
	}
	// An overlay's entry the upper has nothing of (outside an opaque
	// directory) is the lower's, unchanged.
	unchanged := mode == lowerOnly || d.overlay && mode == both && !upperHas && !opaque
	final := depth == len(d.prefix)-1
	ancestor := depth < len(d.prefix)-1
	if final && (o.ok || n.ok) {
		d.found = true
	}
	if ancestor {
		// A path the diff is limited to goes through directories only.
		if err := d.throughDir(&o, &n, p, unchanged); err != nil {
			return err
		}
	}
	if unchanged {
		if ancestor && o.isDir() {
			sub, err := openDir(oldDir, name)
			if err != nil {
				return fmt.Errorf("open %s in the base: %w", p, err)
			}
			return d.walk(sub, -1, p, depth+1, lowerOnly, false)
		}
		return nil
	}
	emit := !ancestor
	switch {
	case !o.ok && !n.ok:
		return nil
	case !o.ok:
		if emit {
			d.add(&n, p, Added, nil)
		}
		return d.descend(nil, &n, p, depth, added)
	case !n.ok:
		if emit {
			d.add(&o, p, Deleted, nil)
		}
		return d.descend(&o, nil, p, depth, deleted)
	case o.st.Mode&unix.S_IFMT != n.st.Mode&unix.S_IFMT:
		if emit {
			d.changed(&o, &n, p, TypeChanged, []string{"type"})
		}
		if err := d.descend(&o, nil, p, depth, deleted); err != nil {
			return err
		}
		return d.descend(nil, &n, p, depth, added)
	}
	if emit {
		what, err := d.compare(&o, &n, p)
		if err != nil {
			return err
		}
		if len(what) > 0 {
			d.changed(&o, &n, p, Modified, what)
		}
	}
	if n.isDir() {
		return d.descend(&o, &n, p, depth, both)
	}
	return nil
}

// throughDir checks that the sides having ancestor p of the path a diff
// is limited to have a directory there.
func (d *differ) throughDir(o, n *side, p string, unchanged bool) error {
	check := func(s *side, where string) error {
		if !s.ok || s.isDir() {
			return nil
		}
		if s.st.Mode&unix.S_IFMT == unix.S_IFLNK {
			target, _ := readlink(s.dir, s.name)
			return pathErrorf("%s is a symbolic link to %s %s (give the path it leads to)", p, target, where)
		}
		return pathErrorf("%s is not a directory %s", p, where)
	}
	if n.ok {
		return check(n, "in the machine")
	}
	if unchanged {
		// An overlay's lower entry the upper left as it is.
		return check(o, "in the machine")
	}
	return check(o, "in the base")
}

// descend walks what directory p holds on the sides given that have a
// directory there.
func (d *differ) descend(o, n *side, p string, depth int, mode walkMode) error {
	oldDir, newDir := -1, -1
	opaque := false
	if o != nil && o.isDir() {
		fd, err := openDir(o.dir, o.name)
		if err != nil {
			return fmt.Errorf("open %s in the base: %w", p, err)
		}
		oldDir = fd
	}
	if n != nil && n.isDir() {
		fd, err := openDir(n.dir, n.name)
		if gone(err) {
			// A running machine removed it, or put a link there,
			// meanwhile: what it held is not there to compare.
			fd, err = -1, nil
		}
		if err != nil {
			if oldDir >= 0 {
				unix.Close(oldDir)
			}
			return fmt.Errorf("open %s: %w", p, err)
		}
		newDir = fd
		opaque = fd >= 0 && d.overlay && isOpaque(fd)
	}
	if oldDir < 0 && newDir < 0 {
		return nil
	}
	if mode == both && (oldDir < 0 || newDir < 0) {
		// Not a directory on one side after all (it changed meanwhile).
		if oldDir >= 0 {
			mode = deleted
		} else {
			mode = added
		}
	}
	return d.walk(oldDir, newDir, p, depth+1, mode, opaque)
}

// openDir opens directory name in dir, following no link.
func openDir(dir int, name string) (int, error) {
	return unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
}

// whiteout reports whether name in an overlay's upper directory dir is a
// whiteout: a character device 0:0, or an empty file marked with the
// trusted.overlay.whiteout attribute.
func (d *differ) whiteout(dir int, name string, st *unix.Stat_t) bool {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return st.Rdev == 0
	case unix.S_IFREG:
		return st.Size == 0 && hasXattr(dir, name, "trusted.overlay.whiteout")
	}
	return false
}

// isOpaque reports whether an overlay's upper directory fd hides what the
// lower has under it.
func isOpaque(fd int) bool {
	buf := make([]byte, 8)
	n, err := unix.Fgetxattr(fd, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// hasXattr reports whether name in dir has extended attribute attr,
// name's last step not followed.
func hasXattr(dir int, name, attr string) bool {
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	_, err = unix.Getxattr(fmt.Sprintf("/proc/self/fd/%d", fd), attr, nil)
	return err == nil
}

// readlink reads link name in dir.
func readlink(dir int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// id is host id v as a tree whose id 0 is host id shift sees it.
func id(v uint32, shift int) int {
	i := int(v) - shift
	if i < 0 || i >= RangeSize {
		return overflowID
	}
	return i
}

// compare says what differs between o and n, of one type.
func (d *differ) compare(o, n *side, p string) ([]string, error) {
	var what []string
	switch o.st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		same, err := d.sameContent(o, n, p)
		if err != nil {
			return nil, err
		}
		if !same {
			what = append(what, "content")
		}
	case unix.S_IFLNK:
		a, err := readlink(o.dir, o.name)
		if err != nil {
			return nil, fmt.Errorf("read link %s in the base: %w", p, err)
		}
		b, err := readlink(n.dir, n.name)
		if err != nil {
			return nil, fmt.Errorf("read link %s: %w", p, err)
		}
		if a != b {
			what = append(what, "target")
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		if o.st.Rdev != n.st.Rdev {
			what = append(what, "device")
		}
	}
	// A link's own mode is always 0777 and means nothing.
	if o.st.Mode&unix.S_IFMT != unix.S_IFLNK && o.st.Mode&07777 != n.st.Mode&07777 {
		what = append(what, "mode")
	}
	if id(o.st.Uid, d.old.Shift) != id(n.st.Uid, d.new.Shift) {
		what = append(what, "owner")
	}
	if id(o.st.Gid, d.old.Shift) != id(n.st.Gid, d.new.Shift) {
		what = append(what, "group")
	}
	// A link's attributes are rare and its own; those of the others
	// (file capabilities, ACLs, labels) are compared.
	if o.st.Mode&unix.S_IFMT != unix.S_IFLNK {
		a, err := xattrs(o.dir, o.name, d.old.Shift)
		if err != nil {
			return nil, fmt.Errorf("read the attributes of %s in the base: %w", p, err)
		}
		b, err := xattrs(n.dir, n.name, d.new.Shift)
		if err != nil {
			return nil, fmt.Errorf("read the attributes of %s: %w", p, err)
		}
		if !maps.Equal(a, b) {
			what = append(what, "xattrs")
		}
	}
	return what, nil
}

// sameContent reports whether regular files o and n hold the same bytes:
// of different sizes they do not; of one size and one modification time
// they do (as rsync's quick check: a copy, a snapshot and an overlay's
// copy-up keep the time); otherwise their bytes are compared.
func (d *differ) sameContent(o, n *side, p string) (bool, error) {
	if o.st.Size != n.st.Size {
		return false, nil
	}
	if o.st.Mtim == n.st.Mtim {
		return true, nil
	}
	a, err := openFile(o.dir, o.name, &o.st)
	if err != nil {
		return false, fmt.Errorf("read %s in the base: %w", p, err)
	}
	defer a.Close()
	b, err := openFile(n.dir, n.name, &n.st)
	if gone(err) {
		// A running machine replaced or removed it meanwhile.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", p, err)
	}
	defer b.Close()
	if d.overlay {
		// An upper that holds only the metadata reads its data from
		// the lower (metacopy; nsbox mounts without it).
		if _, err := unix.Fgetxattr(int(b.Fd()), "trusted.overlay.metacopy", nil); err == nil {
			return true, nil
		}
	}
	bufA, bufB := make([]byte, 1<<16), make([]byte, 1<<16)
	for {
		if err := d.ctx.Err(); err != nil {
			return false, err
		}
		na, errA := io.ReadFull(a, bufA)
		nb, errB := io.ReadFull(b, bufB)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		endA := errA == io.EOF || errA == io.ErrUnexpectedEOF
		endB := errB == io.EOF || errB == io.ErrUnexpectedEOF
		if errA != nil && !endA {
			return false, fmt.Errorf("read %s in the base: %w", p, errA)
		}
		if errB != nil && !endB {
			return false, fmt.Errorf("read %s: %w", p, errB)
		}
		if endA || endB {
			return endA == endB, nil
		}
	}
}

// openFile opens regular file name in dir for reading: as a path first,
// checked to be the file st describes, then reopened through that
// descriptor, so that nothing else (a device node, a FIFO) the machine put
// there meanwhile is opened.
func openFile(dir int, name string, st *unix.Stat_t) (*os.File, error) {
	pfd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pfd)
	var now unix.Stat_t
	if err := unix.Fstat(pfd, &now); err != nil {
		return nil, err
	}
	if now.Mode&unix.S_IFMT != unix.S_IFREG || now.Ino != st.Ino || now.Dev != st.Dev {
		return nil, errChanged
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// errChanged is a file that is not the one stat'ed a moment before.
var errChanged = errors.New("it changed while it was read")

// gone reports whether err says an entry of a running machine's tree
// went, or became another, between the look at it and its use.
func gone(err error) bool {
	return errors.Is(err, errChanged) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)
}

// typeName names the type of an entry of mode m.
func typeName(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "char-device"
	case unix.S_IFBLK:
		return "block-device"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "unknown"
}

// fill sets the fields of e that describe s, on the new side or (old) the
// base's.
func (d *differ) fill(e *Entry, s *side, old bool) {
	shift := d.new.Shift
	if old {
		shift = d.old.Shift
	}
	typ := typeName(s.st.Mode)
	var mode string
	if s.st.Mode&unix.S_IFMT != unix.S_IFLNK {
		mode = fmt.Sprintf("%04o", s.st.Mode&07777)
	}
	uid, gid := id(s.st.Uid, shift), id(s.st.Gid, shift)
	var size *int64
	if s.st.Mode&unix.S_IFMT == unix.S_IFREG {
		v := s.st.Size
		size = &v
	}
	var target *string
	if s.st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if t, err := readlink(s.dir, s.name); err == nil {
			target = &t
		}
	}
	if old {
		e.OldType, e.OldMode, e.OldUID, e.OldGID, e.OldSize, e.OldTarget = typ, mode, &uid, &gid, size, target
	} else {
		e.Type, e.Mode, e.UID, e.GID, e.Size, e.Target = typ, mode, &uid, &gid, size, target
	}
}

// add reports an entry that is on one side only: s is the new side's
// (added) or the base's (deleted).
func (d *differ) add(s *side, p string, c Change, what []string) {
	if what == nil {
		what = []string{}
	}
	e := Entry{Path: p, Change: c, What: what}
	d.fill(&e, s, c == Deleted)
	if c == Deleted {
		e.Type = e.OldType
		d.sum.Deleted++
		if e.OldSize != nil {
			d.sum.DeletedBytes += *e.OldSize
		}
	} else {
		d.sum.Added++
		d.addedBytes(&s.st)
	}
	d.out = append(d.out, e)
}

// addedBytes counts an added regular file's bytes, once for its links.
func (d *differ) addedBytes(st *unix.Stat_t) {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	k := [2]uint64{st.Dev, st.Ino}
	if st.Nlink > 1 {
		if d.links[k] {
			return
		}
		d.links[k] = true
	}
	d.sum.AddedBytes += st.Size
}

// changed reports an entry on both sides.
func (d *differ) changed(o, n *side, p string, c Change, what []string) {
	e := Entry{Path: p, Change: c, What: what}
	d.fill(&e, o, true)
	d.fill(&e, n, false)
	if c == TypeChanged {
		d.sum.TypeChanged++
		if e.OldSize != nil {
			d.sum.DeletedBytes += *e.OldSize
		}
		d.addedBytes(&n.st)
	} else {
		d.sum.Modified++
		if e.Size != nil {
			d.sum.ModifiedBytes += *e.Size
		}
	}
	d.out = append(d.out, e)
}

// Note says, for the text report, what changed in a modified entry or
// an entry of changed type ("" for one added or deleted): "content",
// "mode 0644 -> 0600", "owner 0 -> 33", "group 0 -> 33", "target", "device",
// or "symlink -> directory".
func (e Entry) Note() string {
	if e.Change == TypeChanged {
		return e.OldType + " -> " + e.Type
	}
	if e.Change != Modified {
		return ""
	}
	var parts []string
	for _, w := range e.What {
		switch {
		case w == "mode":
			parts = append(parts, "mode "+e.OldMode+" -> "+e.Mode)
		case w == "owner" && e.OldUID != nil && e.UID != nil:
			parts = append(parts, fmt.Sprintf("owner %d -> %d", *e.OldUID, *e.UID))
		case w == "group" && e.OldGID != nil && e.GID != nil:
			parts = append(parts, fmt.Sprintf("group %d -> %d", *e.OldGID, *e.GID))
		default:
			parts = append(parts, w)
		}
	}
	return strings.Join(parts, ", ")
}

// xattrs reads the extended attributes of name in dir, its last step not
// followed (the l- calls through the directory's descriptor), but for an
// overlay's own (trusted.overlay.*), with the ids in capabilities and
// ACLs as a tree whose id 0 is host id shift sees them.
func xattrs(dir int, name string, shift int) (map[string]string, error) {
	p := fmt.Sprintf("/proc/self/fd/%d/%s", dir, name)
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	buf := make([]byte, sz+256)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if n == "" || strings.HasPrefix(n, "trusted.overlay.") {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, n, v)
		if err != nil {
			return nil, err
		}
		out[n] = string(normalXattr(n, v[:vn], shift))
	}
	return out, nil
}

// normalXattr is value v of attribute name with the host ids in it as
// the tree sees them: a capability's root (version 3 keeps the host id
// of the namespace's root; version 2, none), an ACL's users and groups.
func normalXattr(name string, v []byte, shift int) []byte {
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	put := func(b []byte, x uint32) { b[0], b[1], b[2], b[3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24) }
	switch name {
	case "security.capability":
		if len(v) < 20 {
			return v
		}
		// As version 3: flags, the sets, the root as the tree sees it.
		out := make([]byte, 24)
		copy(out, v[:20])
		put(out, le(v)&^0xFF000000|0x03000000)
		root := 0
		if len(v) >= 24 && le(v)>>24 == 3 {
			root = id(le(v[20:]), shift)
		}
		put(out[20:], uint32(root))
		return out
	case "system.posix_acl_access", "system.posix_acl_default":
		if len(v) < 4 || (len(v)-4)%8 != 0 {
			return v
		}
		out := append([]byte{}, v...)
		for i := 4; i+8 <= len(out); i += 8 {
			// ACL_USER and ACL_GROUP entries name an id.
			if tag := uint16(out[i]) | uint16(out[i+1])<<8; tag == 0x02 || tag == 0x08 {
				put(out[i+4:], uint32(id(le(out[i+4:]), shift)))
			}
		}
		return out
	}
	return v
}
