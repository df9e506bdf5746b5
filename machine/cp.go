package machine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/machine/treecopy"
)

// CopyEnd is one end of nsbox cp: a path in a machine (NAME:PATH), a path
// on the host, or a tar stream on stdin or stdout ("-").
type CopyEnd struct {
	Machine string
	Path    string
	Stream  bool
}

func (e CopyEnd) String() string {
	switch {
	case e.Stream:
		return "-"
	case e.Machine != "":
		return e.Machine + ":" + e.Path
	}
	return e.Path
}

// ParseCopyEnd reads an argument of nsbox cp. NAME:PATH names a machine's
// path (relative to its root when it does not start with /); a host path
// with a colon in its first component is written ./a:b.
func ParseCopyEnd(s string) (CopyEnd, error) {
	if s == "-" {
		return CopyEnd{Stream: true}, nil
	}
	if s == "" {
		return CopyEnd{}, fmt.Errorf("%w: an empty path", ErrInvalidOption)
	}
	if strings.ContainsRune(s, 0) {
		return CopyEnd{}, fmt.Errorf("%w: a path with a NUL byte", ErrInvalidOption)
	}
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.ContainsRune(s[:i], '/') {
		name := s[:i]
		if err := ValidateName(name); err != nil {
			return CopyEnd{}, fmt.Errorf("%w (a host path with a colon is written ./%s)", err, s)
		}
		p := s[i+1:]
		if p == "" {
			p = "/"
		}
		return CopyEnd{Machine: name, Path: p}, nil
	}
	return CopyEnd{Path: s}, nil
}

// CopyOptions are nsbox cp's choices.
type CopyOptions struct {
	// Owner is USER[:GROUP] in the destination machine, names or ids.
	Owner string
	// Progress is told the bytes copied so far.
	Progress func(bytes int64)
}

// CheckCopy checks nsbox cp's arguments before anything is opened.
func CheckCopy(src, dst CopyEnd, o CopyOptions) error {
	switch {
	case src.Stream && dst.Stream:
		return fmt.Errorf("%w: only one side can be a stream (-)", ErrInvalidOption)
	case src.Machine == "" && dst.Machine == "":
		return fmt.Errorf("%w: neither %s nor %s is in a machine (NAME:PATH); for host files use cp", ErrInvalidOption, src, dst)
	case o.Owner != "" && dst.Machine == "":
		return fmt.Errorf("%w: --owner names a user in the destination machine; %s is not in one", ErrInvalidOption, dst)
	}
	return nil
}

// CopyResult says what a copy did beyond copying.
type CopyResult struct {
	treecopy.Stats
}

// Copy copies src to dst as cp -a does (see treecopy): between the host
// and a machine, two machines, or a machine and a tar stream on stdin or
// stdout. A running machine's paths are its own view, its mounts
// included (through its root, /proc/LEADER/root); a stopped machine's are
// its tree, held so that it does not boot meanwhile. Owners move between
// the machines' user id ranges; with o.Owner, every copied entry belongs
// to that user of the destination.
func (m *Manager) Copy(ctx context.Context, src, dst CopyEnd, o CopyOptions) (CopyResult, error) {
	var res CopyResult
	if err := CheckCopy(src, dst, o); err != nil {
		return res, err
	}
	if err := m.requireRoot(); err != nil {
		return res, err
	}
	for _, e := range []CopyEnd{src, dst} {
		if e.Machine != "" {
			if err := m.checkRootAndName(e.Machine, true); err != nil {
				return res, err
			}
		}
	}
	if dst.Machine != "" && m.ReadOnly(dst.Machine) {
		return res, fmt.Errorf("%s is read-only (make it writable: nsbox read-only %s false)", dst.Machine, dst.Machine)
	}
	copyWith := func(from, to treecopy.Side) error {
		var owner *treecopy.Owner
		if o.Owner != "" {
			ow, err := resolveOwner(to, o.Owner)
			if err != nil {
				return err
			}
			owner = &ow
		}
		var err error
		switch {
		case dst.Stream:
			res.Stats, err = treecopy.WriteTar(ctx, from, src.Path, os.Stdout)
		case src.Stream:
			res.Stats, err = treecopy.ExtractTar(ctx, bufio.NewReaderSize(os.Stdin, 1<<20), to, dst.Path, treecopy.Options{Owner: owner, Progress: o.Progress})
		default:
			res.Stats, err = treecopy.Copy(ctx, from, src.Path, to, dst.Path,
				treecopy.Options{Owner: owner, FromMachine: src.Machine != "", Progress: o.Progress})
		}
		return err
	}
	sideOf := func(e CopyEnd, fn func(treecopy.Side) error) error {
		if e.Machine == "" {
			return fn(treecopy.Host)
		}
		return m.withCopySide(ctx, e.Machine, fn)
	}
	if src.Machine != "" && src.Machine == dst.Machine {
		// One machine: one view of it, held once.
		return res, m.withCopySide(ctx, src.Machine, func(s treecopy.Side) error { return copyWith(s, s) })
	}
	err := sideOf(src, func(from treecopy.Side) error {
		return sideOf(dst, func(to treecopy.Side) error { return copyWith(from, to) })
	})
	return res, err
}

// withCopySide runs fn with machine name's side of a copy: a running
// machine's root as its processes see it, or a stopped machine's tree,
// held with its image lock (an overlay machine's mounted meanwhile).
func (m *Manager) withCopySide(ctx context.Context, name string, fn func(treecopy.Side) error) error {
	if r, err := m.Backend.Get(ctx, name); err == nil {
		return m.inRunning(ctx, name, r, func(root int) error { return fn(copySide(root, name)) })
	} else if !errors.Is(err, ErrNotRunning) {
		return err
	}
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	open := func() error {
		fd, err := unix.Open(m.Dir(name), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("the tree of %s: %w", name, err)
		}
		defer unix.Close(fd)
		return fn(copySide(fd, name))
	}
	if m.storageOf(name).Kind == storage.Overlay {
		return m.withTree(ctx, name, open)
	}
	return open()
}

// copySide is the side of a machine whose root directory is fd: its
// range is its root directory's owner's (nspawn's ranges are 65536 ids
// on a 65536 boundary; 0 without a user namespace).
func copySide(fd int, name string) treecopy.Side {
	var st unix.Stat_t
	shift := 0
	if unix.Fstat(fd, &st) == nil {
		shift = int(st.Uid) &^ (treecopy.RangeSize - 1)
	}
	return treecopy.Side{FD: fd, InRoot: true, Shift: shift, Name: name + ":"}
}

// resolveOwner reads USER[:GROUP] as the machine on side s sees it: ids,
// or names from its /etc/passwd and /etc/group (read inside its root);
// a user without a group gets the user's primary group (its own id when
// it is a number the machine does not list).
func resolveOwner(s treecopy.Side, spec string) (treecopy.Owner, error) {
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" || hasGroup && group == "" {
		return treecopy.Owner{}, fmt.Errorf("%w: --owner %q: want USER[:GROUP]", ErrInvalidOption, spec)
	}
	machine := strings.TrimSuffix(s.Name, ":")
	passwd, _ := readInSide(s, "/etc/passwd")
	u, ok := lookupEntry(passwd, user)
	if !ok {
		return treecopy.Owner{}, fmt.Errorf("%w: --owner: no user %q in %s", ErrInvalidOption, user, machine)
	}
	ow := treecopy.Owner{UID: u.id, GID: u.group}
	if ow.GID < 0 {
		ow.GID = u.id
	}
	if hasGroup {
		groups, _ := readInSide(s, "/etc/group")
		g, ok := lookupEntry(groups, group)
		if !ok {
			return ow, fmt.Errorf("%w: --owner: no group %q in %s", ErrInvalidOption, group, machine)
		}
		ow.GID = g.id
	}
	return ow, nil
}

// entry is a line of a passwd or group file: its id (the third field)
// and, in passwd, the primary group (-1 when there is none).
type entry struct{ id, group int }

// lookupEntry finds name in a passwd or group file, by its name or its
// id; a number the file does not list is that id. Ids lie in a
// machine's range, 0 to 65535.
func lookupEntry(file []byte, name string) (entry, bool) {
	for _, f := range entryFields(string(file)) {
		if strings.HasPrefix(f[0], "#") || f[0] != name && f[2] != name {
			continue
		}
		e := entry{group: -1}
		var err error
		if e.id, err = strconv.Atoi(f[2]); err != nil {
			continue
		}
		if len(f) > 3 {
			if g, err := strconv.Atoi(f[3]); err == nil {
				e.group = g
			}
		}
		return e, e.id >= 0 && e.id < treecopy.RangeSize
	}
	n, err := strconv.Atoi(name)
	return entry{id: n, group: -1}, err == nil && n >= 0 && n < treecopy.RangeSize
}

// readInSide reads a small file at p inside side s, resolved in its root.
func readInSide(s treecopy.Side, p string) ([]byte, error) {
	fd, err := unix.Openat2(s.FD, p, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a file", p)
	}
	return io.ReadAll(io.LimitReader(f, maxPasswd))
}

// WriteHostTar writes the host path src to w as a tar stream whose top
// entry is src's name, for a copy into a machine on another host (which
// keeps setuid bits, capabilities and device nodes, as a copy into a
// machine here does).
func WriteHostTar(ctx context.Context, src string, w io.Writer) (CopyResult, error) {
	st, err := treecopy.WriteHostTar(ctx, src, w)
	return CopyResult{st}, err
}

// ExtractHostTar unpacks the tar stream r, one tree or file at its top,
// as the host path dst, as nsbox cp does with a copy out of a machine on
// another host: into dst when it is a directory (the tree under its own
// name), else as dst itself, made beside it under a temporary name and
// renamed into place (a file there is replaced). Nothing half-made is
// left.
func ExtractHostTar(ctx context.Context, r io.Reader, dst string) (CopyResult, error) {
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		st, err := treecopy.ExtractTar(ctx, r, treecopy.Host, dst, treecopy.Options{})
		return CopyResult{st}, err
	}
	parent := filepath.Dir(dst)
	tmp, err := os.MkdirTemp(parent, ".#nsbox-cp.")
	if err != nil {
		return CopyResult{}, &treecopy.Error{Op: "cannot create", Path: dst, Err: errors.Unwrap(err)}
	}
	defer host.RemoveTree(tmp)
	st, err := treecopy.ExtractTar(ctx, r, treecopy.Host, tmp, treecopy.Options{})
	if err != nil {
		return CopyResult{st}, err
	}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return CopyResult{st}, err
	}
	if len(ents) != 1 {
		return CopyResult{st}, fmt.Errorf("the stream has %d entries at its top, not one", len(ents))
	}
	if err := os.Rename(filepath.Join(tmp, ents[0].Name()), dst); err != nil {
		return CopyResult{st}, &treecopy.Error{Op: "cannot create", Path: dst, Err: errors.Unwrap(err)}
	}
	return CopyResult{st}, nil
}
