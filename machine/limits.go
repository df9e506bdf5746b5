package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// ParseSize reads a byte count: 512M, 2G, 1.5G, 1024K, 4096 (bytes).
// Suffixes are binary (K = 1024), as systemd reads them.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if n := len(t); n > 0 {
		switch strings.ToUpper(t[n-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*mult > math.MaxInt64 {
		return 0, fmt.Errorf("%w: size %q (use a positive number with K, M, G or T)", ErrInvalidOption, s)
	}
	return uint64(v * mult), nil
}

// LimitFlags are limits as a user types them; empty strings are unset,
// and NoLimit clears a limit.
type LimitFlags struct {
	Memory, MemorySwap, CPUs, CPUWeight, Tasks, IOWeight string
}

// NoLimit as a limit's value clears it ("--io-weight none"; the command
// line takes "--io-weight=" for it too).
const NoLimit = "none"

// Apply parses f onto l: only the set values change, and NoLimit clears.
func (f LimitFlags) Apply(l backend.Limits) (backend.Limits, error) {
	var err error
	size := func(s string, dst *uint64) {
		if s == NoLimit {
			*dst = 0
		} else if s != "" && err == nil {
			*dst, err = ParseSize(s)
		}
	}
	count := func(s, what string, lo, hi uint64, dst *uint64) {
		if s == NoLimit {
			*dst = 0
			return
		}
		if s == "" || err != nil {
			return
		}
		n, perr := strconv.ParseUint(s, 10, 64)
		if perr != nil || n < lo || n > hi {
			err = fmt.Errorf("%w: %s %q (use a whole number from %d to %d, or none)", ErrInvalidOption, what, s, lo, hi)
			return
		}
		*dst = n
	}
	size(f.Memory, &l.Memory)
	size(f.MemorySwap, &l.MemorySwap)
	if f.CPUs == NoLimit {
		l.CPUs = 0
	} else if f.CPUs != "" && err == nil {
		v, perr := strconv.ParseFloat(f.CPUs, 64)
		if perr != nil || v <= 0 || v > 1024 {
			err = fmt.Errorf("%w: cpus %q (use a positive number such as 0.5 or 2, or none)", ErrInvalidOption, f.CPUs)
		} else {
			l.CPUs = v
		}
	}
	count(f.CPUWeight, "cpu-weight", 1, 10000, &l.CPUWeight)
	count(f.Tasks, "tasks", 1, math.MaxInt32, &l.Tasks)
	count(f.IOWeight, "io-weight", 1, 10000, &l.IOWeight)
	return l, err
}

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
