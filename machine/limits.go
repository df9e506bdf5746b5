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

// LimitFlags are limits as a user types them; empty strings are unset,
// and NoLimit clears a limit.
type LimitFlags struct {
	Memory, MemorySwap, CPUs, CPUWeight, Tasks, IOWeight string
}

// NoLimit as a limit's value clears it ("--io-weight none"; the command
// line takes "--io-weight=" for it too).
const NoLimit = "none"

// Apply parses f onto l: only the set values change, and NoLimit clears.
func (f LimitFlags) Apply(l Limits) (Limits, error) {
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

// cleared is the limits set in l that next has no more, with their old
// values.
func (l Limits) cleared(next Limits) Limits {
	var c Limits
	if next.Memory == 0 {
		c.Memory = l.Memory
	}
	if next.MemorySwap == 0 {
		c.MemorySwap = l.MemorySwap
	}
	if next.CPUs == 0 {
		c.CPUs = l.CPUs
	}
	if next.CPUWeight == 0 {
		c.CPUWeight = l.CPUWeight
	}
	if next.Tasks == 0 {
		c.Tasks = l.Tasks
	}
	if next.IOWeight == 0 {
		c.IOWeight = l.IOWeight
	}
	return c
}

// unlimited is the value of a unit property that means "no limit" (or,
// for the weights, "the default"): infinity, UINT64_MAX on the bus.
const unlimited = ^uint64(0)

// clearProperties are the unit properties that lift the limits set in c.
func (c Limits) clearProperties() []dbusapi.UnitProperty {
	var p []dbusapi.UnitProperty
	for _, x := range []struct {
		set  bool
		name string
	}{
		{c.Memory > 0, "MemoryMax"}, {c.MemorySwap > 0, "MemorySwapMax"}, {c.CPUs > 0, "CPUQuotaPerSecUSec"},
		{c.CPUWeight > 0, "CPUWeight"}, {c.Tasks > 0, "TasksMax"}, {c.IOWeight > 0, "IOWeight"},
	} {
		if x.set {
			p = append(p, dbusapi.UnitProperty{Name: x.name, Value: unlimited})
		}
	}
	return p
}

// clearFiles lists, for each limit set in c, the cgroup files (v2, then
// v1) and the values that lift it.
func (c Limits) clearFiles() [][]cgroupFile {
	var out [][]cgroupFile
	if c.Memory > 0 {
		out = append(out, []cgroupFile{{"memory.max", "max"}, {"memory.limit_in_bytes", "-1"}})
	}
	if c.MemorySwap > 0 {
		out = append(out, []cgroupFile{{"memory.swap.max", "max"}, {"memory.memsw.limit_in_bytes", "-1"}})
	}
	if c.CPUs > 0 {
		out = append(out, []cgroupFile{{"cpu.max", "max 100000"}, {"cpu.cfs_quota_us", "-1"}})
	}
	if c.CPUWeight > 0 {
		out = append(out, []cgroupFile{{"cpu.weight", "100"}, {"cpu.shares", "1024"}})
	}
	if c.Tasks > 0 {
		out = append(out, []cgroupFile{{"pids.max", "max"}})
	}
	if c.IOWeight > 0 {
		out = append(out, []cgroupFile{{"io.weight", "default 100"}, {"blkio.weight", "500"}})
	}
	return out
}

// liftLimits lifts, on running machine name, the limits set in c.
func (m *Manager) liftLimits(ctx context.Context, name string, c Limits) error {
	if c.IsZero() {
		return nil
	}
	switch b := m.Backend.(type) {
	case *Machined:
		r, err := b.Get(ctx, name)
		if err != nil {
			return err
		}
		return b.Systemd.SetUnitProperties(ctx, r.Unit, true, c.clearProperties())
	case *Direct:
		var errs []error
		for _, choices := range c.clearFiles() {
			for _, f := range choices {
				for _, h := range cgroupHierarchies() {
					p := filepath.Join(h, cgroupPath(name), f.file)
					if _, err := os.Stat(p); err != nil {
						continue
					}
					if err := os.WriteFile(p, []byte(f.value), 0o644); err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", p, err))
					}
				}
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

// checkLimitsFit refuses limits this host cannot apply to a stopped
// machine, as a running machine refuses them: on the direct backend a
// limit whose cgroup controller this host lacks (the boot would fail). A
// cgroup of its own is made to try them in, and removed.
func (m *Manager) checkLimitsFit(l Limits) error {
	if _, direct := m.Backend.(*Direct); !direct || l.IsZero() {
		return nil
	}
	trial := fmt.Sprintf(".#limits-%d", os.Getpid())
	if err := makeCgroup(trial); err != nil {
		return err
	}
	defer removeCgroup(trial)
	return applyLimits(trial, l)
}

// stopped reports whether err from Backend.Get says the machine does not run.
func stopped(err error) bool { return errors.Is(err, ErrNotRunning) }
