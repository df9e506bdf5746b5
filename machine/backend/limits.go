package backend

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
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

// LimitFlags are limits as a user types them; empty strings are unset,
// and NoLimit clears a limit.
type LimitFlags struct {
	Memory, MemorySwap, CPUs, CPUWeight, Tasks, IOWeight string
}

// NoLimit as a limit's value clears it ("--io-weight none"; the command
// line takes "--io-weight=" for it too).
const NoLimit = "none"

// unlimited is the value of a unit property that means "no limit" (or,
// for the weights, "the default"): infinity, UINT64_MAX on the bus. It
// lifts every limit.
const unlimited = ^uint64(0)

// limitTable is every resource limit nsbox knows, one row each, in the
// order nsbox parses, writes and shows them. Everything that renders a
// limit (the unit's properties, a unit file's lines, the cgroup files of
// the direct backend, what status shows) and reads one (the command line
// flags) goes through it: adding a limit is a field in Limits and in
// LimitFlags and a row here.
var limitTable = []limitRow{
	row[uint64]{
		flag:      "memory",
		usage:     "memory limit, e.g. 512M or 2G, or none (MemoryMax=)",
		arg:       func(f *LimitFlags) *string { return &f.Memory },
		field:     func(l *Limits) *uint64 { return &l.Memory },
		parse:     parseSizeFlag,
		property:  "MemoryMax",
		bus:       same,
		directive: "MemoryMax",
		unit:      decimal,
		v2:        cgroupForm[uint64]{file: "memory.max", value: cgroupDecimal, lift: "max"},
		v1:        cgroupForm[uint64]{file: "memory.limit_in_bytes", value: cgroupDecimal, lift: "-1"},
		show:      func(v uint64, size func(uint64) string) string { return "memory " + size(v) },
	},
	row[uint64]{
		flag:      "memory-swap",
		usage:     "swap limit, or none (MemorySwapMax=)",
		arg:       func(f *LimitFlags) *string { return &f.MemorySwap },
		field:     func(l *Limits) *uint64 { return &l.MemorySwap },
		parse:     parseSizeFlag,
		property:  "MemorySwapMax",
		bus:       same,
		directive: "MemorySwapMax",
		unit:      decimal,
		v2:        cgroupForm[uint64]{file: "memory.swap.max", value: cgroupDecimal, lift: "max"},
		// cgroup v1 limits memory and swap together.
		v1:   cgroupForm[uint64]{file: "memory.memsw.limit_in_bytes", value: func(l Limits, v uint64) string { return decimal(l.Memory + v) }, lift: "-1"},
		show: func(v uint64, size func(uint64) string) string { return "swap " + size(v) },
	},
	row[float64]{
		flag:      "cpus",
		usage:     "CPU quota in CPUs, e.g. 0.5 or 2, or none (CPUQuota=)",
		arg:       func(f *LimitFlags) *string { return &f.CPUs },
		field:     func(l *Limits) *float64 { return &l.CPUs },
		parse:     parseCPUsFlag,
		property:  "CPUQuotaPerSecUSec",
		bus:       func(v float64) uint64 { return uint64(v * 1e6) },
		directive: "CPUQuota",
		unit:      func(v float64) string { return fmt.Sprintf("%d%%", int(v*100)) },
		v2:        cgroupForm[float64]{file: "cpu.max", value: func(_ Limits, v float64) string { return cpuQuota(v) + " 100000" }, lift: "max 100000"},
		// The quota counts in periods of cpu.cfs_period_us, set first.
		v1: cgroupForm[float64]{file: "cpu.cfs_quota_us", value: func(_ Limits, v float64) string { return cpuQuota(v) }, lift: "-1",
			first: CgroupFile{"cpu.cfs_period_us", "100000"}},
		show: func(v float64, _ func(uint64) string) string { return fmt.Sprintf("%g CPUs", v) },
	},
	row[uint64]{
		flag:      "cpu-weight",
		usage:     "CPU weight 1-10000, or none (CPUWeight=)",
		arg:       func(f *LimitFlags) *string { return &f.CPUWeight },
		field:     func(l *Limits) *uint64 { return &l.CPUWeight },
		parse:     wholeNumber(1, 10000),
		property:  "CPUWeight",
		bus:       same,
		directive: "CPUWeight",
		unit:      decimal,
		v2:        cgroupForm[uint64]{file: "cpu.weight", value: cgroupDecimal, lift: "100"},
		v1:        cgroupForm[uint64]{file: "cpu.shares", value: func(_ Limits, v uint64) string { return decimal(max(2, v*1024/100)) }, lift: "1024"},
		show:      func(v uint64, _ func(uint64) string) string { return fmt.Sprintf("CPU weight %d", v) },
	},
	row[uint64]{
		flag:      "tasks",
		usage:     "most tasks, or none (TasksMax=)",
		arg:       func(f *LimitFlags) *string { return &f.Tasks },
		field:     func(l *Limits) *uint64 { return &l.Tasks },
		parse:     wholeNumber(1, math.MaxInt32),
		property:  "TasksMax",
		bus:       same,
		directive: "TasksMax",
		unit:      decimal,
		// pids.max is the file's name in cgroup v1 too: no v1 of its own.
		v2:   cgroupForm[uint64]{file: "pids.max", value: cgroupDecimal, lift: "max"},
		show: func(v uint64, _ func(uint64) string) string { return fmt.Sprintf("%d tasks", v) },
	},
	row[uint64]{
		flag:      "io-weight",
		usage:     "IO weight 1-10000, or none (IOWeight=)",
		arg:       func(f *LimitFlags) *string { return &f.IOWeight },
		field:     func(l *Limits) *uint64 { return &l.IOWeight },
		parse:     wholeNumber(1, 10000),
		property:  "IOWeight",
		bus:       same,
		directive: "IOWeight",
		unit:      decimal,
		v2:        cgroupForm[uint64]{file: "io.weight", value: func(_ Limits, v uint64) string { return "default " + decimal(v) }, lift: "default 100"},
		v1:        cgroupForm[uint64]{file: "blkio.weight", value: func(_ Limits, v uint64) string { return decimal(min(1000, max(10, v/10))) }, lift: "500"},
		show:      func(v uint64, _ func(uint64) string) string { return fmt.Sprintf("IO weight %d", v) },
	},
}

// limitValue is what a limit holds: a whole number, or CPUs as a
// fraction.
type limitValue interface{ uint64 | float64 }

// row is one limit of limitTable, of whole numbers or of CPUs.
type row[T limitValue] struct {
	flag  string                    // its command line flag, without dashes, and its name in messages
	usage string                    // its flag's help
	arg   func(*LimitFlags) *string // its flag's value
	field func(*Limits) *T          // its value
	parse func(flag, s string) (T, error)

	property string         // its unit property on the bus
	bus      func(T) uint64 // and its value there; UINT64_MAX lifts any
	// directive is its setting in a unit file, and unit its value there.
	directive string
	unit      func(T) string
	// v2 and v1 are its cgroup files in cgroup v2 and v1 (a zero v1 when
	// the v2 file's name serves both).
	v2, v1 cgroupForm[T]
	// show is how status shows it; size writes a byte count.
	show func(v T, size func(uint64) string) string
}

// cgroupForm is a limit as one cgroup file.
type cgroupForm[T limitValue] struct {
	file  string
	value func(l Limits, v T) string // the value written for v, a limit of l
	lift  string                     // the value that lifts it
	first CgroupFile                 // written before file where file is, if set
}

// limitRow is what the methods of Limits and LimitFlags ask of a row.
type limitRow interface {
	name() string
	help() string
	flagValue(f *LimitFlags) *string
	isSet(l Limits) bool
	keepCleared(c *Limits, l, next Limits)
	apply(l *Limits, f LimitFlags, parse bool) error
	unitProperty(l Limits) dbusapi.UnitProperty
	liftProperty() dbusapi.UnitProperty
	unitSetting(l Limits) (directive, value string)
	cgroupFiles(l Limits) []CgroupFile
	liftFiles() []CgroupFile
	firstFile(file string) (CgroupFile, bool)
	describe(l Limits, size func(uint64) string) string
}

func (r row[T]) name() string                    { return r.flag }
func (r row[T]) help() string                    { return r.usage }
func (r row[T]) flagValue(f *LimitFlags) *string { return r.arg(f) }
func (r row[T]) value(l Limits) T                { return *r.field(&l) }
func (r row[T]) isSet(l Limits) bool             { return r.value(l) > 0 }
func (r row[T]) liftProperty() dbusapi.UnitProperty {
	return dbusapi.UnitProperty{Name: r.property, Value: unlimited}
}
func (r row[T]) unitProperty(l Limits) dbusapi.UnitProperty {
	return dbusapi.UnitProperty{Name: r.property, Value: r.bus(r.value(l))}
}
func (r row[T]) unitSetting(l Limits) (string, string) { return r.directive, r.unit(r.value(l)) }

// keepCleared sets the limit in c to its value in l when next has it
// no more.
func (r row[T]) keepCleared(c *Limits, l, next Limits) {
	if r.value(next) == 0 {
		*r.field(c) = r.value(l)
	}
}

func (r row[T]) describe(l Limits, size func(uint64) string) string {
	return r.show(r.value(l), size)
}

// apply reads the row's flag in f onto l: NoLimit clears, and any other
// set value is parsed when parse is true (no error came before).
func (r row[T]) apply(l *Limits, f LimitFlags, parse bool) error {
	s := *r.arg(&f)
	if s == NoLimit {
		*r.field(l) = 0
		return nil
	}
	if s == "" || !parse {
		return nil
	}
	v, err := r.parse(r.flag, s)
	if err != nil {
		return err
	}
	*r.field(l) = v
	return nil
}

func (r row[T]) cgroupFiles(l Limits) []CgroupFile {
	var out []CgroupFile
	for _, c := range []cgroupForm[T]{r.v2, r.v1} {
		if c.file != "" {
			out = append(out, CgroupFile{c.file, c.value(l, r.value(l))})
		}
	}
	return out
}

func (r row[T]) liftFiles() []CgroupFile {
	var out []CgroupFile
	for _, c := range []cgroupForm[T]{r.v2, r.v1} {
		if c.file != "" {
			out = append(out, CgroupFile{c.file, c.lift})
		}
	}
	return out
}

func (r row[T]) firstFile(file string) (CgroupFile, bool) {
	for _, c := range []cgroupForm[T]{r.v2, r.v1} {
		if c.file == file && c.first.File != "" {
			return c.first, true
		}
	}
	return CgroupFile{}, false
}

// same, decimal and cgroupDecimal are the common conversions of a whole
// number: as it is, on the bus, in a unit file and in a cgroup file.
func same(v uint64) uint64                    { return v }
func decimal(v uint64) string                 { return strconv.FormatUint(v, 10) }
func cgroupDecimal(_ Limits, v uint64) string { return decimal(v) }

// cpuQuota is a CPU limit in microseconds per period of 100000.
func cpuQuota(cpus float64) string { return strconv.Itoa(int(cpus * 100000)) }

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

// parseSizeFlag reads a size flag (ParseSize).
func parseSizeFlag(_, s string) (uint64, error) { return ParseSize(s) }

// parseCPUsFlag reads a number of CPUs, up to 1024.
func parseCPUsFlag(flag, s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 || v > 1024 {
		return 0, fmt.Errorf("%w: %s %q (use a positive number such as 0.5 or 2, or none)", ErrInvalidOption, flag, s)
	}
	return v, nil
}

// wholeNumber reads a flag of whole numbers from lo to hi.
func wholeNumber(lo, hi uint64) func(flag, s string) (uint64, error) {
	return func(flag, s string) (uint64, error) {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n < lo || n > hi {
			return 0, fmt.Errorf("%w: %s %q (use a whole number from %d to %d, or none)", ErrInvalidOption, flag, s, lo, hi)
		}
		return n, nil
	}
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

// Properties are the unit properties that apply l.
func (l Limits) Properties() []dbusapi.UnitProperty {
	var p []dbusapi.UnitProperty
	for _, r := range limitTable {
		if r.isSet(l) {
			p = append(p, r.unitProperty(l))
		}
	}
	return p
}

// UnitOptions are the settings of a unit file, in section, that apply l.
func (l Limits) UnitOptions(section string) []*unit.UnitOption {
	var out []*unit.UnitOption
	for _, r := range limitTable {
		if r.isSet(l) {
			directive, value := r.unitSetting(l)
			out = append(out, unit.NewUnitOption(section, directive, value))
		}
	}
	return out
}

// UnitLines renders l as unit file lines (KEY=VALUE), as a unit file
// written from UnitOptions holds them.
func (l Limits) UnitLines() []string {
	var out []string
	for _, o := range l.UnitOptions("Service") {
		out = append(out, o.Name+"="+o.Value)
	}
	return out
}

// Cleared is the limits set in l that next has no more, with their old
// values.
func (l Limits) Cleared(next Limits) Limits {
	var c Limits
	for _, r := range limitTable {
		r.keepCleared(&c, l, next)
	}
	return c
}

// ClearProperties are the unit properties that lift the limits set in c.
func (c Limits) ClearProperties() []dbusapi.UnitProperty {
	var p []dbusapi.UnitProperty
	for _, r := range limitTable {
		if r.isSet(c) {
			p = append(p, r.liftProperty())
		}
	}
	return p
}

// CgroupFile is a cgroup file and the value written to it.
type CgroupFile struct{ File, Value string }

// CgroupFiles lists, for each limit set in l, the cgroup files that can
// carry it: cgroup v2 first, then v1.
func (l Limits) CgroupFiles() [][]CgroupFile {
	var out [][]CgroupFile
	for _, r := range limitTable {
		if r.isSet(l) {
			out = append(out, r.cgroupFiles(l))
		}
	}
	return out
}

// LiftCgroupFiles lists, for each limit set in c, the cgroup files (v2,
// then v1) and the values that lift it.
func (c Limits) LiftCgroupFiles() [][]CgroupFile {
	var out [][]CgroupFile
	for _, r := range limitTable {
		if r.isSet(c) {
			out = append(out, r.liftFiles())
		}
	}
	return out
}

// CgroupFileFirst is the file written before file, in the same cgroup,
// when a limit is applied: cgroup v1's CPU quota counts in periods of
// cpu.cfs_period_us.
func CgroupFileFirst(file string) (CgroupFile, bool) {
	for _, r := range limitTable {
		if f, ok := r.firstFile(file); ok {
			return f, true
		}
	}
	return CgroupFile{}, false
}

// Describe is l as status shows it, one item per limit set; size writes a
// byte count.
func (l Limits) Describe(size func(uint64) string) []string {
	var out []string
	for _, r := range limitTable {
		if r.isSet(l) {
			out = append(out, r.describe(l, size))
		}
	}
	return out
}

// Apply parses f onto l: only the set values change, and NoLimit clears.
// After a value that does not parse, the others are not read, but those
// set to NoLimit still clear.
func (f LimitFlags) Apply(l Limits) (Limits, error) {
	var err error
	for _, r := range limitTable {
		if e := r.apply(&l, f, err == nil); e != nil {
			err = e
		}
	}
	return l, err
}

// LimitFlag is a limit's command line flag.
type LimitFlag struct {
	Name  string // without dashes: "memory"
	Usage string
}

// LimitFlagList lists the limits' command line flags, in the order of
// the limits.
func LimitFlagList() []LimitFlag {
	out := make([]LimitFlag, len(limitTable))
	for i, r := range limitTable {
		out[i] = LimitFlag{r.name(), r.help()}
	}
	return out
}

// Value is the value f holds for flag name ("" for a name that is no
// limit's flag).
func (f LimitFlags) Value(name string) string {
	for _, r := range limitTable {
		if r.name() == name {
			return *r.flagValue(&f)
		}
	}
	return ""
}

// Set sets the value of flag name in f; a name that is no limit's flag
// is ignored.
func (f *LimitFlags) Set(name, value string) {
	for _, r := range limitTable {
		if r.name() == name {
			*r.flagValue(f) = value
		}
	}
}
