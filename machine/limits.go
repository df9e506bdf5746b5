package machine

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/dbusapi"
)

// Limits are the resource limits of a machine, applied to its unit (or,
// without machined, its cgroup) and remembered across boots. Zero means
// no limit.
type Limits struct {
	Memory     uint64  `json:"memory_bytes,omitempty"`
	MemorySwap uint64  `json:"memory_swap_bytes,omitempty"`
	CPUs       float64 `json:"cpus,omitempty"` // a quota: 1.5 is one and a half CPUs
	CPUWeight  uint64  `json:"cpu_weight,omitempty"`
	Tasks      uint64  `json:"tasks,omitempty"`
	IOWeight   uint64  `json:"io_weight,omitempty"`
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

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

// LimitFlags are limits as a user types them; empty strings are unset.
type LimitFlags struct {
	Memory, MemorySwap, CPUs, CPUWeight, Tasks, IOWeight string
}

// Apply parses f onto l: only the set values change.
func (f LimitFlags) Apply(l Limits) (Limits, error) {
	var err error
	size := func(s string, dst *uint64) {
		if s != "" && err == nil {
			*dst, err = ParseSize(s)
		}
	}
	count := func(s, what string, lo, hi uint64, dst *uint64) {
		if s == "" || err != nil {
			return
		}
		n, perr := strconv.ParseUint(s, 10, 64)
		if perr != nil || n < lo || n > hi {
			err = fmt.Errorf("%w: %s %q (use a whole number from %d to %d)", ErrInvalidOption, what, s, lo, hi)
			return
		}
		*dst = n
	}
	size(f.Memory, &l.Memory)
	size(f.MemorySwap, &l.MemorySwap)
	if f.CPUs != "" && err == nil {
		v, perr := strconv.ParseFloat(f.CPUs, 64)
		if perr != nil || v <= 0 || v > 1024 {
			err = fmt.Errorf("%w: cpus %q (use a positive number such as 0.5 or 2)", ErrInvalidOption, f.CPUs)
		} else {
			l.CPUs = v
		}
	}
	count(f.CPUWeight, "cpu-weight", 1, 10000, &l.CPUWeight)
	count(f.Tasks, "tasks", 1, math.MaxInt32, &l.Tasks)
	count(f.IOWeight, "io-weight", 1, 10000, &l.IOWeight)
	return l, err
}

// Properties are the unit properties that apply l.
func (l Limits) Properties() []dbusapi.UnitProperty {
	var p []dbusapi.UnitProperty
	if l.Memory > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "MemoryMax", Value: l.Memory})
	}
	if l.MemorySwap > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "MemorySwapMax", Value: l.MemorySwap})
	}
	if l.CPUs > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "CPUQuotaPerSecUSec", Value: uint64(l.CPUs * 1e6)})
	}
	if l.CPUWeight > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "CPUWeight", Value: l.CPUWeight})
	}
	if l.Tasks > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "TasksMax", Value: l.Tasks})
	}
	if l.IOWeight > 0 {
		p = append(p, dbusapi.UnitProperty{Name: "IOWeight", Value: l.IOWeight})
	}
	return p
}

// UnitLines renders l as unit file settings.
func (l Limits) UnitLines() []string {
	var out []string
	if l.Memory > 0 {
		out = append(out, fmt.Sprintf("MemoryMax=%d", l.Memory))
	}
	if l.MemorySwap > 0 {
		out = append(out, fmt.Sprintf("MemorySwapMax=%d", l.MemorySwap))
	}
	if l.CPUs > 0 {
		out = append(out, fmt.Sprintf("CPUQuota=%d%%", int(l.CPUs*100)))
	}
	if l.CPUWeight > 0 {
		out = append(out, fmt.Sprintf("CPUWeight=%d", l.CPUWeight))
	}
	if l.Tasks > 0 {
		out = append(out, fmt.Sprintf("TasksMax=%d", l.Tasks))
	}
	if l.IOWeight > 0 {
		out = append(out, fmt.Sprintf("IOWeight=%d", l.IOWeight))
	}
	return out
}

func (m *Manager) limitsPath(name string) string {
	return filepath.Join(m.StateDir, "limits", name+".json")
}

// Limits returns the remembered limits of name.
func (m *Manager) Limits(name string) (Limits, error) {
	var l Limits
	b, err := os.ReadFile(m.limitsPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	return l, json.Unmarshal(b, &l)
}

func (m *Manager) saveLimits(name string, l Limits) error {
	if l.IsZero() {
		err := os.Remove(m.limitsPath(name))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	return writeFileAtomic(m.limitsPath(name), append(b, '\n'), 0o644)
}
