package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

// An ephemeral boot (boot --ephemeral) runs a stopped machine over a
// throwaway upper: its tree (or an overlay machine's upper and base)
// becomes the lower of an overlay mounted on the machine's tree, and
// what the machine writes goes to STORE/.ephemeral/NAME, removed when it
// stops. The boot is a real one, through the backend, so the mount is
// the host's: it is made before the start (PreStart, ExecStartPre=) and
// taken away after the stop (StopPost, ExecStopPost=), whoever stops
// the machine. What a host that died meanwhile left (the upper; the
// mount went with the host) is swept by the machine's next boot or
// remove.

// ephemeralRecord is what nsbox keeps of an ephemeral boot while it runs,
// in RunDir/ephemeral/NAME.json.
type ephemeralRecord struct {
	Lowers  []storage.Lower `json:"lowers"`
	UIDBase int             `json:"uid_base"`
}

func (m *Manager) ephemeralPath(name string) string {
	return filepath.Join(m.RunDir, "ephemeral", name+".json")
}

// ephemeralDir holds machine name's throwaway upper and work directories.
func (m *Manager) ephemeralDir(name string) string {
	return filepath.Join(m.Store(), ".ephemeral", name)
}

func (m *Manager) ephemeralStack(name string, rec ephemeralRecord) storage.Stack {
	dir := m.ephemeralDir(name)
	return storage.Stack{Target: m.Tree(name), Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"),
		Scratch: dir, Lowers: rec.Lowers, UIDBase: rec.UIDBase}
}

// ephemeral reports whether machine name runs ephemeral (or is being
// booted so).
func (m *Manager) ephemeral(name string) (ephemeralRecord, bool) {
	var rec ephemeralRecord
	b, err := os.ReadFile(m.ephemeralPath(name))
	return rec, err == nil && json.Unmarshal(b, &rec) == nil && len(rec.Lowers) > 0
}

// MountEphemeral mounts stopped machine name's tree over a fresh
// throwaway upper; mounted already, it does nothing (nsbox __storage
// mount-ephemeral NAME, before a start; a restart after a reboot gets a
// fresh upper).
func (m *Manager) MountEphemeral(ctx context.Context, name string) error {
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if rec, ok := m.ephemeral(name); ok && storage.Mounted(m.Tree(name)) {
		if _, err := os.Stat(m.ephemeralStack(name, rec).Upper); err == nil {
			return nil
		}
	}
	if m.storageOf(name).Kind == storage.Overlay && storage.Mounted(m.Tree(name)) {
		return fmt.Errorf("%w: %s is mounted (a shell into its tree?)", ErrBusy, name)
	}
	lowers, err := m.machineLowers(name)
	if err != nil {
		return err
	}
	rec := ephemeralRecord{Lowers: lowers}
	if sr := m.storageOf(name); sr.Kind == storage.Overlay {
		rec.UIDBase = sr.UIDBase
	} else {
		if rec.UIDBase, err = m.pickUIDBase(); err != nil {
			return err
		}
	}
	s := m.ephemeralStack(name, rec)
	// What a killed boot left goes first; the record comes before the
	// upper, so that an upper is never there without one.
	if err := m.dropEphemeral(name); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(m.ephemeralPath(name)), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(rec)
	if err := host.WriteFileAtomic(m.ephemeralPath(name), b, 0o600); err != nil {
		return err
	}
	if err := host.PrivateDir(filepath.Dir(m.ephemeralDir(name))); err != nil {
		return err
	}
	err = storage.PrepareUpper(s.Upper, s.Work, lowers[0].Path, rec.UIDBase, lowers[0].Owner)
	if err == nil {
		err = storage.MountStack(ctx, m.Runner, s)
	}
	if err != nil {
		_ = host.RemoveTree(m.ephemeralDir(name))
		_ = os.Remove(m.ephemeralPath(name))
		return err
	}
	return nil
}

// UnmountEphemeral unmounts machine name's throwaway tree and removes its
// upper (nsbox __storage unmount-ephemeral NAME, after nspawn ended: the
// direct supervisor runs it before its state goes, machined's unit while
// it is still stopping, so a check of whether the machine runs would
// still say it does).
func (m *Manager) UnmountEphemeral(ctx context.Context, name string) error {
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return m.dropEphemeral(name)
}

// UnmountEphemeralAfterStop is UnmountEphemeral for the hook after a
// stop, which may come after another boot of the machine began: that
// boot's tree is left (bootingOrUp).
func (m *Manager) UnmountEphemeralAfterStop(ctx context.Context, name string) error {
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if m.bootingOrUp(ctx, name) {
		return nil
	}
	return m.dropEphemeral(name)
}

// dropEphemeral unmounts and removes what an ephemeral boot of name made;
// the caller holds its mount lock.
func (m *Manager) dropEphemeral(name string) error {
	if _, ok := m.ephemeral(name); ok || m.storageOf(name).Kind != storage.Overlay {
		// An overlay machine's tree is an overlay of its own when
		// mounted otherwise; only the ephemeral one (its record says
		// so) is taken away here.
		if err := (storage.Layout{Target: m.Tree(name)}).Unmount(); err != nil {
			return err
		}
	}
	if err := host.RemoveTree(m.ephemeralDir(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(filepath.Dir(m.ephemeralDir(name))) // when it was the last
	if err := os.Remove(m.ephemeralPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// sweepEphemeralOf removes what an ephemeral boot of stopped machine name
// left, before it boots again or goes.
func (m *Manager) sweepEphemeralOf(ctx context.Context, name string) error {
	if _, err := os.Lstat(m.ephemeralDir(name)); err != nil {
		if _, ok := m.ephemeral(name); !ok {
			return nil
		}
	}
	l, err := m.mountLock(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return m.dropEphemeral(name)
}

// endEphemeral takes away the throwaway tree of machine name once it has
// stopped, so that stop returns with it gone whatever became of the hook
// after the stop (which then finds nothing to do).
func (m *Manager) endEphemeral(ctx context.Context, name string) error {
	if _, ok := m.ephemeral(name); !ok {
		return nil
	}
	return m.UnmountEphemeral(context.WithoutCancel(ctx), name)
}
