package backend

import (
	"fmt"

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

// Cleared is the limits set in l that next has no more, with their old
// values.
func (l Limits) Cleared(next Limits) Limits {
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

// ClearProperties are the unit properties that lift the limits set in c.
func (c Limits) ClearProperties() []dbusapi.UnitProperty {
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
