package dbusapi

import (
	"math"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

func variants(kv ...any) map[string]dbus.Variant {
	m := map[string]dbus.Variant{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = dbus.MakeVariant(kv[i+1])
	}
	return m
}

func TestDecodeMachine(t *testing.T) {
	since := time.Date(2024, 5, 1, 12, 30, 0, 123456000, time.UTC)
	for _, tc := range []struct {
		name  string
		props map[string]dbus.Variant
		want  Machine
	}{
		{
			"every property",
			variants("Name", "web", "Class", "container", "Service", "nspawn", "Unit", "nsbox-web.service",
				"Leader", uint32(4242), "RootDirectory", "/srv/.nsbox/web", "Timestamp", uint64(since.UnixMicro()),
				"TimestampMonotonic", uint64(99), "State", "running", "NetworkInterfaces", []int32{7}),
			Machine{Name: "web", Class: "container", Service: "nspawn", Unit: "nsbox-web.service",
				Leader: 4242, RootDirectory: "/srv/.nsbox/web", Since: since},
		},
		{"none", map[string]dbus.Variant{}, Machine{Name: "web"}},
		{"nil map", nil, Machine{Name: "web"}},
		{
			"wrong types are left out",
			variants("Class", []byte("container"), "Service", 1, "Unit", dbus.ObjectPath("/x"),
				"Leader", int32(4242), "RootDirectory", []string{"/srv"}, "Timestamp", int64(5)),
			Machine{Name: "web"},
		},
		{"leader unknown", variants("Leader", uint32(0)), Machine{Name: "web"}},
		{"timestamp unset: 0", variants("Timestamp", uint64(0)), Machine{Name: "web"}},
		{"timestamp unset: infinity", variants("Timestamp", uint64(math.MaxUint64)), Machine{Name: "web"}},
		// The name asked for wins over the property: it is what the caller
		// knows the machine by.
		{"name from the caller", variants("Name", "other"), Machine{Name: "web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decodeMachine("web", tc.props)
			if !got.Since.Equal(tc.want.Since) {
				t.Errorf("Since %v, want %v", got.Since, tc.want.Since)
			}
			got.Since, tc.want.Since = time.Time{}, time.Time{}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeUnitState(t *testing.T) {
	for _, tc := range []struct {
		name  string
		props map[string]dbus.Variant
		want  UnitState
	}{
		{
			"running service",
			variants("ActiveState", "active", "SubState", "running", "LoadState", "loaded", "Result", "success", "MainPID", uint32(812)),
			UnitState{ActiveState: "active", SubState: "running", LoadState: "loaded", Result: "success", MainPID: 812},
		},
		{
			"unknown unit",
			variants("ActiveState", "inactive", "SubState", "dead", "LoadState", "not-found", "Result", "success", "MainPID", uint32(0)),
			UnitState{ActiveState: "inactive", SubState: "dead", LoadState: "not-found", Result: "success"},
		},
		{
			"failed, no service properties",
			variants("ActiveState", "failed", "SubState", "failed", "LoadState", "loaded"),
			UnitState{ActiveState: "failed", SubState: "failed", LoadState: "loaded"},
		},
		{"none", nil, UnitState{}},
		{
			"wrong types are left out",
			variants("ActiveState", 1, "SubState", []string{"x"}, "LoadState", true, "Result", uint32(1), "MainPID", int32(812)),
			UnitState{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := decodeUnitState(tc.props); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeUnitUsage(t *testing.T) {
	const unknown = UsageUnknown
	for _, tc := range []struct {
		name  string
		props map[string]dbus.Variant
		want  UnitUsage
	}{
		{
			"accounted",
			variants("MemoryCurrent", uint64(64<<20), "TasksCurrent", uint64(17), "CPUUsageNSec", uint64(3e9), "IOReadBytes", uint64(4096), "IOWriteBytes", uint64(8192)),
			UnitUsage{MemoryCurrent: 64 << 20, TasksCurrent: 17, CPUUsageNSec: 3e9, IOReadBytes: 4096, IOWriteBytes: 8192},
		},
		{
			"systemd's unset passes through",
			variants("MemoryCurrent", uint64(math.MaxUint64), "TasksCurrent", uint64(0), "CPUUsageNSec", uint64(math.MaxUint64)),
			UnitUsage{MemoryCurrent: unknown, TasksCurrent: 0, CPUUsageNSec: unknown, IOReadBytes: unknown, IOWriteBytes: unknown},
		},
		{"none", nil, UnitUsage{unknown, unknown, unknown, unknown, unknown}},
		{
			"missing and wrongly typed are unknown",
			variants("MemoryCurrent", uint32(5), "CPUUsageNSec", int64(7)),
			UnitUsage{unknown, unknown, unknown, unknown, unknown},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := decodeUnitUsage(tc.props); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestObjectPaths(t *testing.T) {
	for _, tc := range []struct {
		name string
		want dbus.ObjectPath
		path func(string) dbus.ObjectPath
	}{
		{"web", "/org/freedesktop/machine1/machine/web", machineObjectPath},
		{"e2e-bw", "/org/freedesktop/machine1/machine/e2e_2dbw", machineObjectPath},
		{"1st", "/org/freedesktop/machine1/machine/_31st", machineObjectPath},
		{"a.b_c", "/org/freedesktop/machine1/machine/a_2eb_5fc", machineObjectPath},
		{"\t", "/org/freedesktop/machine1/machine/_09", machineObjectPath},
		{"é", "/org/freedesktop/machine1/machine/_c3_a9", machineObjectPath},
		{"", "/org/freedesktop/machine1/machine/_", machineObjectPath},
		{"nsbox-web.service", "/org/freedesktop/systemd1/unit/nsbox_2dweb_2eservice", unitObjectPath},
		{"nsbox@web.service", "/org/freedesktop/systemd1/unit/nsbox_40web_2eservice", unitObjectPath},
	} {
		got := tc.path(tc.name)
		if got != tc.want {
			t.Errorf("path of %q = %s, want %s", tc.name, got, tc.want)
		}
		if !got.IsValid() {
			t.Errorf("path of %q = %s, not a valid object path", tc.name, got)
		}
	}
}

func TestMachineSignal(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  *dbus.Signal
		want string
		ok   bool
	}{
		{"new", &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineNew", Body: []any{"web", dbus.ObjectPath("/org/freedesktop/machine1/machine/web")}}, "web", true},
		{"removed", &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineRemoved", Body: []any{"web", dbus.ObjectPath("/x")}}, "web", true},
		{"nil", nil, "", false},
		{"no body", &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineNew"}, "", false},
		{"body of another type", &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineNew", Body: []any{uint32(1)}}, "", false},
		{"another path", &dbus.Signal{Path: "/org/freedesktop/machine1/machine/web", Name: managerIface + ".MachineNew", Body: []any{"web"}}, "", false},
		// The connection is shared: systemd's signals come by too.
		{"systemd's", &dbus.Signal{Path: systemdPath, Name: jobRemovedSignal, Body: []any{uint32(1), dbus.ObjectPath("/org/freedesktop/systemd1/job/1"), "x.service", "done"}}, "", false},
		{"properties changed", &dbus.Signal{Path: machinedPath, Name: "org.freedesktop.DBus.Properties.PropertiesChanged", Body: []any{managerIface}}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := machineSignal(tc.sig)
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
