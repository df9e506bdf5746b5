package backend

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Every field of Limits and of LimitFlags has exactly one row of the
// table: a limit added without its row fails here.
func TestLimitTableCoversEveryField(t *testing.T) {
	lt := reflect.TypeOf(Limits{})
	for i := 0; i < lt.NumField(); i++ {
		var l Limits
		f := reflect.ValueOf(&l).Elem().Field(i)
		if f.Kind() == reflect.Float64 {
			f.SetFloat(1)
		} else {
			f.SetUint(1)
		}
		n := 0
		for _, r := range limitTable {
			if r.isSet(l) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("Limits.%s has %d rows", lt.Field(i).Name, n)
		}
	}
	ft := reflect.TypeOf(LimitFlags{})
	if ft.NumField() != len(limitTable) {
		t.Fatalf("LimitFlags has %d fields, the table %d rows", ft.NumField(), len(limitTable))
	}
	for i := 0; i < ft.NumField(); i++ {
		var f LimitFlags
		reflect.ValueOf(&f).Elem().Field(i).SetString("x")
		n := 0
		for _, r := range limitTable {
			if *r.flagValue(&f) == "x" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("LimitFlags.%s has %d rows", ft.Field(i).Name, n)
		}
	}
}

// Each row in all its forms: what was four hand-written renderings
// (properties, unit lines, cgroup files, status text) before the table.
func TestLimitForms(t *testing.T) {
	size := func(n uint64) string { return fmt.Sprintf("%dB", n) }
	for _, tc := range []struct {
		flag, arg  string
		l          Limits
		property   string
		bus        uint64
		unitLine   string
		cgroup     []CgroupFile
		liftCgroup []CgroupFile
		status     string
	}{
		{"memory", "1G", Limits{Memory: 1 << 30}, "MemoryMax", 1 << 30, "MemoryMax=1073741824",
			[]CgroupFile{{"memory.max", "1073741824"}, {"memory.limit_in_bytes", "1073741824"}},
			[]CgroupFile{{"memory.max", "max"}, {"memory.limit_in_bytes", "-1"}}, "memory 1073741824B"},
		{"memory-swap", "512", Limits{MemorySwap: 512}, "MemorySwapMax", 512, "MemorySwapMax=512",
			[]CgroupFile{{"memory.swap.max", "512"}, {"memory.memsw.limit_in_bytes", "512"}},
			[]CgroupFile{{"memory.swap.max", "max"}, {"memory.memsw.limit_in_bytes", "-1"}}, "swap 512B"},
		{"cpus", "1.5", Limits{CPUs: 1.5}, "CPUQuotaPerSecUSec", 1500000, "CPUQuota=150%",
			[]CgroupFile{{"cpu.max", "150000 100000"}, {"cpu.cfs_quota_us", "150000"}},
			[]CgroupFile{{"cpu.max", "max 100000"}, {"cpu.cfs_quota_us", "-1"}}, "1.5 CPUs"},
		{"cpu-weight", "50", Limits{CPUWeight: 50}, "CPUWeight", 50, "CPUWeight=50",
			[]CgroupFile{{"cpu.weight", "50"}, {"cpu.shares", "512"}},
			[]CgroupFile{{"cpu.weight", "100"}, {"cpu.shares", "1024"}}, "CPU weight 50"},
		{"tasks", "200", Limits{Tasks: 200}, "TasksMax", 200, "TasksMax=200",
			[]CgroupFile{{"pids.max", "200"}},
			[]CgroupFile{{"pids.max", "max"}}, "200 tasks"},
		{"io-weight", "5", Limits{IOWeight: 5}, "IOWeight", 5, "IOWeight=5",
			[]CgroupFile{{"io.weight", "default 5"}, {"blkio.weight", "10"}},
			[]CgroupFile{{"io.weight", "default 100"}, {"blkio.weight", "500"}}, "IO weight 5"},
	} {
		var f LimitFlags
		f.Set(tc.flag, tc.arg)
		if got := f.Value(tc.flag); got != tc.arg {
			t.Errorf("%s: Value %q after Set %q", tc.flag, got, tc.arg)
		}
		l, err := f.Apply(Limits{})
		if err != nil || l != tc.l {
			t.Errorf("%s %s: Apply = %+v, %v; want %+v", tc.flag, tc.arg, l, err, tc.l)
			continue
		}
		if p := l.Properties(); len(p) != 1 || p[0].Name != tc.property || p[0].Value != tc.bus {
			t.Errorf("%s: properties %+v", tc.flag, p)
		}
		if got := l.UnitLines(); len(got) != 1 || got[0] != tc.unitLine {
			t.Errorf("%s: unit lines %q", tc.flag, got)
		}
		if opts := l.UnitOptions("Service"); len(opts) != 1 || opts[0].Section != "Service" || opts[0].Name+"="+opts[0].Value != tc.unitLine {
			t.Errorf("%s: unit options %v", tc.flag, opts)
		}
		if got := l.CgroupFiles(); !reflect.DeepEqual(got, [][]CgroupFile{tc.cgroup}) {
			t.Errorf("%s: cgroup files %q", tc.flag, got)
		}
		if got := l.LiftCgroupFiles(); !reflect.DeepEqual(got, [][]CgroupFile{tc.liftCgroup}) {
			t.Errorf("%s: lift files %q", tc.flag, got)
		}
		if p := l.ClearProperties(); len(p) != 1 || p[0].Name != tc.property || p[0].Value != ^uint64(0) {
			t.Errorf("%s: clear properties %+v", tc.flag, p)
		}
		if got := l.Describe(size); len(got) != 1 || got[0] != tc.status {
			t.Errorf("%s: status %q", tc.flag, got)
		}
		if c := l.Cleared(Limits{}); c != l {
			t.Errorf("%s: Cleared %+v", tc.flag, c)
		}
		if c := l.Cleared(l); !c.IsZero() {
			t.Errorf("%s: Cleared by itself %+v", tc.flag, c)
		}
		var none LimitFlags
		none.Set(tc.flag, NoLimit)
		if l, err := none.Apply(l); err != nil || !l.IsZero() {
			t.Errorf("%s none: %+v, %v", tc.flag, l, err)
		}
	}
}

// The conversions that are not the number as it is.
func TestLimitConversions(t *testing.T) {
	for _, tc := range []struct {
		l    Limits
		want string
	}{
		// cgroup v1 limits memory and swap together.
		{Limits{Memory: 100, MemorySwap: 20}, "memory.memsw.limit_in_bytes=120"},
		// cpu.shares: weight 100 is 1024, and at least 2.
		{Limits{CPUWeight: 1}, "cpu.shares=10"},
		{Limits{CPUWeight: 10000}, "cpu.shares=102400"},
		// blkio.weight: from 10 to 1000.
		{Limits{IOWeight: 1}, "blkio.weight=10"},
		{Limits{IOWeight: 10000}, "blkio.weight=1000"},
		{Limits{IOWeight: 500}, "blkio.weight=50"},
		// Each form of CPUs is computed from the fraction and truncated on
		// its own, as before the table: 0.29 CPUs are 28999µs a period.
		{Limits{CPUs: 0.29}, "cpu.max=28999 100000"},
		{Limits{CPUs: 0.29}, "CPUQuota=28%"},
		{Limits{CPUs: 0.29}, "CPUQuotaPerSecUSec=290000"},
	} {
		var all []string
		for _, choices := range tc.l.CgroupFiles() {
			for _, c := range choices {
				all = append(all, c.File+"="+c.Value)
			}
		}
		all = append(all, tc.l.UnitLines()...)
		for _, p := range tc.l.Properties() {
			all = append(all, fmt.Sprintf("%s=%v", p.Name, p.Value))
		}
		found := false
		for _, s := range all {
			found = found || s == tc.want
		}
		if !found {
			t.Errorf("%+v: no %s in %q", tc.l, tc.want, all)
		}
	}
	if f, ok := CgroupFileFirst("cpu.cfs_quota_us"); !ok || f != (CgroupFile{"cpu.cfs_period_us", "100000"}) {
		t.Errorf("before the v1 quota: %+v %v", f, ok)
	}
	for _, file := range []string{"cpu.max", "memory.max", "cpu.cfs_period_us", ""} {
		if f, ok := CgroupFileFirst(file); ok {
			t.Errorf("before %s: %+v", file, f)
		}
	}
}

func TestLimitsOrder(t *testing.T) {
	l := Limits{Memory: 1, MemorySwap: 2, CPUs: 3, CPUWeight: 4, Tasks: 5, IOWeight: 6}
	var names []string
	for _, p := range l.Properties() {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "MemoryMax MemorySwapMax CPUQuotaPerSecUSec CPUWeight TasksMax IOWeight" {
		t.Errorf("properties %s", got)
	}
	if got := strings.Join(l.UnitLines(), " "); got != "MemoryMax=1 MemorySwapMax=2 CPUQuota=300% CPUWeight=4 TasksMax=5 IOWeight=6" {
		t.Errorf("unit lines %s", got)
	}
	size := func(n uint64) string { return fmt.Sprint(n) }
	if got := strings.Join(l.Describe(size), ", "); got != "memory 1, swap 2, 3 CPUs, CPU weight 4, 5 tasks, IO weight 6" {
		t.Errorf("status %s", got)
	}
	var flags []string
	for _, f := range LimitFlagList() {
		flags = append(flags, f.Name)
		if f.Usage == "" {
			t.Errorf("--%s has no help", f.Name)
		}
	}
	if got := strings.Join(flags, " "); got != "memory memory-swap cpus cpu-weight tasks io-weight" {
		t.Errorf("flags %s", got)
	}
}

func TestLimitFlagsApplyErrors(t *testing.T) {
	for _, tc := range []struct {
		f    LimitFlags
		want string
	}{
		{LimitFlags{Memory: "1X"}, `invalid option: size "1X" (use a positive number with K, M, G or T)`},
		{LimitFlags{CPUs: "0"}, `invalid option: cpus "0" (use a positive number such as 0.5 or 2, or none)`},
		{LimitFlags{CPUs: "1025"}, `invalid option: cpus "1025"`},
		{LimitFlags{CPUWeight: "0"}, `invalid option: cpu-weight "0" (use a whole number from 1 to 10000, or none)`},
		{LimitFlags{Tasks: "2147483648"}, `invalid option: tasks "2147483648" (use a whole number from 1 to 2147483647, or none)`},
		{LimitFlags{IOWeight: "x"}, `invalid option: io-weight "x"`},
		// The first error is the one reported.
		{LimitFlags{Memory: "x", IOWeight: "x"}, `size "x"`},
	} {
		_, err := tc.f.Apply(Limits{})
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %s", tc.f, err, tc.want)
		}
	}
	// After an error, NoLimit still clears (as before the table).
	l, err := LimitFlags{Memory: "x", Tasks: NoLimit, CPUs: "2"}.Apply(Limits{Tasks: 5})
	if err == nil || l.Tasks != 0 || l.CPUs != 0 {
		t.Errorf("%+v %v", l, err)
	}
	var f LimitFlags
	f.Set("no-such-flag", "1")
	if f != (LimitFlags{}) || f.Value("no-such-flag") != "" {
		t.Errorf("unknown flag: %+v", f)
	}
}
