package machine

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
)

func ptr(v uint64) *uint64 { return &v }

func TestTopRowsRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	before := []Use{
		{Name: "web", Managed: true, At: t0, Accounted: true, Usage: backend.Usage{CPUTime: 1 * time.Second, IORead: ptr(1000), IOWrite: ptr(0)}, Net: true, RxBytes: 100, TxBytes: 50},
		{Name: "db", At: t0, Accounted: true, Usage: backend.Usage{CPUTime: 10 * time.Second}},
		// Restarted in between: its CPU time went down.
		{Name: "again", At: t0, Accounted: true, Usage: backend.Usage{CPUTime: 50 * time.Second}},
	}
	now := []Use{
		{Name: "web", Managed: true, At: t0.Add(2 * time.Second), Accounted: true, Usage: backend.Usage{Memory: 64 << 20, Tasks: 9, CPUTime: 4 * time.Second, IORead: ptr(5000), IOWrite: ptr(2048)}, Net: true, RxBytes: 2100, TxBytes: 1050},
		{Name: "db", At: t0.Add(2 * time.Second), Accounted: true, Usage: backend.Usage{CPUTime: 11 * time.Second}},
		{Name: "again", At: t0.Add(2 * time.Second), Accounted: true, Usage: backend.Usage{CPUTime: time.Second}},
		{Name: "new", At: t0.Add(2 * time.Second)},
	}
	rows := TopRows(before, now)
	byName := map[string]TopRow{}
	for _, r := range rows {
		byName[r.Name] = r
	}
	web := byName["web"]
	// 3 s of CPU in 2 s: one and a half CPUs.
	if math.Abs(web.CPU-150) > 1e-9 || web.IORead != 2000 || web.IOWrite != 1024 || !web.IO || web.NetRx != 1000 || web.NetTx != 500 || !web.Net {
		t.Errorf("web: %+v", web)
	}
	if web.Memory != 64<<20 || web.Tasks != 9 || web.IOReadTotal != 5000 || web.NetRxTotal != 2100 {
		t.Errorf("web's figures: %+v", web)
	}
	if db := byName["db"]; math.Abs(db.CPU-50) > 1e-9 || db.IO || db.Net {
		t.Errorf("db (no I/O count, host network): %+v", db)
	}
	if a := byName["again"]; a.CPU != 0 {
		t.Errorf("a machine restarted between samples has no rate yet: %+v", a)
	}
	if n := byName["new"]; n.CPU != 0 || n.Accounted {
		t.Errorf("new: %+v", n)
	}
}

func TestSortTop(t *testing.T) {
	rows := []TopRow{{Name: "b", CPU: 5, Memory: 1}, {Name: "a", CPU: 5, Memory: 3}, {Name: "c", CPU: 90, Memory: 2}}
	if err := SortTop(rows, "cpu"); err != nil || rows[0].Name != "c" || rows[1].Name != "a" || rows[2].Name != "b" {
		t.Errorf("by cpu, ties by name: %+v, %v", rows, err)
	}
	if err := SortTop(rows, "memory"); err != nil || rows[0].Name != "a" || rows[2].Name != "b" {
		t.Errorf("by memory: %+v", rows)
	}
	if err := SortTop(rows, "name"); err != nil || rows[0].Name != "a" {
		t.Errorf("by name: %+v", rows)
	}
	if err := SortTop(rows, "pid"); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("unknown column: %v", err)
	}
}
