package machine

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/machine/treediff"
)

// ErrNoBase is returned by Diff for a machine that was not made from a
// cached base (imported, made with --no-cache, or a copy made before nsbox
// recorded the bases of copies), or whose base version is gone.
var ErrNoBase = errors.New("no base to compare with")

// DiffOptions are nsbox diff's choices.
type DiffOptions struct {
	// Path limits the diff to a path of the machine and what is under it.
	Path string
}

// DiffReport is what nsbox diff reports (its JSON).
type DiffReport struct {
	Machine     string           `json:"machine"`
	Storage     string           `json:"storage"`
	Base        string           `json:"base"`
	BaseVersion string           `json:"base_version"`
	Path        string           `json:"path"`
	Entries     []treediff.Entry `json:"entries"`
	Summary     treediff.Summary `json:"summary"`
}

// CheckDiffPath checks nsbox diff's PATH before anything is opened and
// returns it cleaned.
func CheckDiffPath(p string) (string, error) {
	c, err := treediff.CleanPath(p)
	if err != nil {
		return "", fmt.Errorf("%w: PATH: %v", ErrInvalidOption, err)
	}
	return c, nil
}

// Diff says what machine name changed against the base version it was
// made from: an overlay machine's upper against its lower, a copy's or
// btrfs snapshot's tree against the base's. The machine may run: its
// trees are only read. The base version is held meanwhile, so that a
// refresh or prune does not take it away.
func (m *Manager) Diff(ctx context.Context, name string, o DiffOptions) (DiffReport, error) {
	rep := DiffReport{Machine: name, Path: "/"}
	if o.Path != "" {
		p, err := CheckDiffPath(o.Path)
		if err != nil {
			return rep, err
		}
		rep.Path = p
	}
	if err := m.checkRootAndName(name, true); err != nil {
		return rep, err
	}
	rec := m.storageOf(name)
	rep.Storage = string(rec.Kind)
	if rec.Kind == storage.Copy && bootstrap.IsSubvolume(m.Dir(name)) {
		rep.Storage = string(storage.Btrfs)
	}
	if rec.Base == "" || rec.Version == "" {
		return rep, fmt.Errorf("%w: %s was not made from a cached base (imported, made with --no-cache, or a copy made by an earlier nsbox)", ErrNoBase, name)
	}
	rep.Base, rep.BaseVersion = rec.Base, rec.Version
	lower, release, err := m.holdBaseVersion(rec)
	if err != nil {
		return rep, fmt.Errorf("%w: %s was made from version %s of base %s, which is gone (a cache refresh or prune took it)", ErrNoBase, name, rec.Version, rec.Base)
	}
	defer release()

	newRoot, newShift := m.Dir(name), -1
	if rec.Kind == storage.Overlay {
		newRoot, newShift = m.layout(name).Upper(), rec.UpperBase()
	}
	newFD, err := openTreeRoot(newRoot)
	if err != nil {
		return rep, fmt.Errorf("the tree of %s: %w", name, err)
	}
	defer unix.Close(newFD)
	if newShift < 0 {
		newShift = rangeOf(newFD)
	}
	oldFD, err := openTreeRoot(lower)
	if err != nil {
		return rep, fmt.Errorf("base %s: %w", rec.Base, err)
	}
	defer unix.Close(oldFD)
	rep.Entries, rep.Summary, err = treediff.Diff(ctx,
		treediff.Tree{FD: oldFD, Shift: rangeOf(oldFD)}, treediff.Tree{FD: newFD, Shift: newShift},
		treediff.Options{Overlay: rec.Kind == storage.Overlay, Path: rep.Path})
	return rep, err
}

// holdBaseVersion finds the tree of the base version rec was made from
// and marks it in use (as a throwaway run does) until release is called:
// a refresh keeps it, prune and remove leave it.
func (m *Manager) holdBaseVersion(rec storage.Record) (string, func(), error) {
	for try := 0; ; try++ {
		root, err := m.lowerOf(rec)
		if err != nil {
			return "", nil, err
		}
		release, err := bootstrap.HoldForRun(root)
		if err == nil {
			// Still that version's tree: no refresh moved it meanwhile.
			if again, err := m.lowerOf(rec); err == nil && again == root {
				return root, release, nil
			}
			release()
		}
		if try >= 2 {
			return "", nil, fmt.Errorf("version %s of base %s moved while it was looked up", rec.Version, rec.Base)
		}
	}
}

// openTreeRoot opens a tree's root directory, itself no link.
func openTreeRoot(p string) (int, error) {
	return unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// rangeOf is the user id range of the tree whose root is fd: its owner's,
// on a RangeSize boundary (0 for a base and a machine without a user
// namespace), as copySide reads it.
func rangeOf(fd int) int {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return int(st.Uid) &^ (treediff.RangeSize - 1)
}
