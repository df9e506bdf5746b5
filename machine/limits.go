package machine

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// ParseSize reads a byte count: see backend.ParseSize.
func ParseSize(s string) (uint64, error) { return backend.ParseSize(s) }

type (
	// LimitFlags are limits as a user types them: see backend.LimitFlags.
	LimitFlags = backend.LimitFlags
	// LimitFlag is a limit's command line flag.
	LimitFlag = backend.LimitFlag
)

// NoLimit as a limit's value clears it ("--io-weight none"; the command
// line takes "--io-weight=" for it too).
const NoLimit = backend.NoLimit

// LimitFlagList lists the limits' command line flags, in the order of
// the limits.
func LimitFlagList() []LimitFlag { return backend.LimitFlagList() }

func (m *Manager) limitsPath(name string) string {
	return filepath.Join(m.StateDir, "limits", name+".json")
}

// Limits returns the remembered limits of name.
func (m *Manager) Limits(name string) (backend.Limits, error) {
	var l backend.Limits
	b, err := os.ReadFile(m.limitsPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	return l, json.Unmarshal(b, &l)
}

func (m *Manager) saveLimits(name string, l backend.Limits) error {
	if l.IsZero() {
		err := os.Remove(m.limitsPath(name))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	return host.WriteFileAtomic(m.limitsPath(name), append(b, '\n'), 0o644)
}

// liftLimits lifts, on running machine name, the limits set in c.
func (m *Manager) liftLimits(ctx context.Context, name string, c backend.Limits) error {
	if c.IsZero() {
		return nil
	}
	return m.Backend.LiftLimits(ctx, name, c)
}

// limitsChecker is a backend that can tell whether this host can apply
// limits before a machine boots with them.
type limitsChecker interface {
	CheckLimits(l backend.Limits) error
}

// checkLimitsFit refuses limits this host cannot apply to a stopped
// machine, as a running machine refuses them.
func (m *Manager) checkLimitsFit(l backend.Limits) error {
	if c, ok := m.Backend.(limitsChecker); ok && !l.IsZero() {
		return c.CheckLimits(l)
	}
	return nil
}

// stopped reports whether err from Backend.Get says the machine does not run.
func stopped(err error) bool { return errors.Is(err, ErrNotRunning) }
