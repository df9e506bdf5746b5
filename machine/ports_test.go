package machine

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/network"
)

// withOptions remembers o as machine name's options.
func withOptions(t *testing.T, m *Manager, name string, o BootOptions) {
	t.Helper()
	text, err := o.SettingsText()
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(m.SettingsDir, 0o755)
	if err := os.WriteFile(m.settingsPath(name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoopbackForwards(t *testing.T) {
	ports := []string{"8080", "tcp:18080:80", "udp:5353:53"}
	want := []network.Forward{{Proto: "tcp", Host: 8080, Machine: 8080}, {Proto: "tcp", Host: 18080, Machine: 80}, {Proto: "udp", Host: 5353, Machine: 53}}
	for _, n := range []string{"veth", "bridge:br0", "zone:z"} {
		if got := loopbackForwards(BootOptions{Network: n, Ports: ports}); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %v", n, got)
		}
	}
	for _, n := range []string{"host", "none"} {
		if got := loopbackForwards(BootOptions{Network: n, Ports: ports}); got != nil {
			t.Errorf("%s: %v, want none", n, got)
		}
	}
}

// The loopback forwards run beside the machine: under the direct
// backend's supervisor, from the machined unit's ExecStartPost= in a unit
// bound to the machine's.
func TestPortsCompanionSpec(t *testing.T) {
	self := func() (string, error) { return "/usr/bin/nsbox", nil }
	o := BootOptions{Network: "bridge:br0", PrivateUsers: true, Ports: []string{"tcp:8080:80"}}

	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done", units: map[string]dbusapi.UnitState{}}
	m, _ := newTestManager(t, f)
	m.Self = self
	spec, err := m.startSpec("web", o, Limits{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Companion != nil || !reflect.DeepEqual(spec.PostStart, []string{"/usr/bin/nsbox", "--root-dir", m.RootDir, "__network-up", "web"}) {
		t.Errorf("machined spec: companion %q, post-start %q", spec.Companion, spec.PostStart)
	}
	// Without forwards (and a veth networkd would serve) there is nothing
	// to run after the start.
	noPorts := o
	noPorts.Ports = nil
	if spec, _ := m.startSpec("web", noPorts, Limits{}, time.Minute); spec.PostStart != nil || spec.Companion != nil {
		t.Errorf("no forwards: %+v", spec)
	}

	d := &Manager{Paths: m.Paths, Pool: m.Pool, Self: self, Backend: &direct.Backend{}}
	spec, err = d.startSpec("web", o, Limits{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(spec.Companion, []string{"/usr/bin/nsbox", "--root-dir", m.RootDir, PortsCommand, "web"}) || spec.PostStart != nil {
		t.Errorf("direct spec: companion %q, post-start %q", spec.Companion, spec.PostStart)
	}
}

func TestPortsCompanionUnit(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done", units: map[string]dbusapi.UnitState{}}
	m, _ := newTestManager(t, f)
	m.Self = func() (string, error) { return "/usr/bin/nsbox", nil }
	mkMachine(t, m, "web")
	withOptions(t, m, "web", BootOptions{Network: "bridge:br0", PrivateUsers: true, Ports: []string{"tcp:8080:80", "udp:53"}})
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid(), Unit: "nsbox@web.service"}
	if err := m.NetworkUp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if len(f.started) != 1 {
		t.Fatalf("started %d units, want the companion", len(f.started))
	}
	s := f.started[0]
	if s.Name != "nsbox-ports@web.service" || strings.Join(s.ExecStart, " ") != "/usr/bin/nsbox --root-dir "+m.RootDir+" __ports web" {
		t.Errorf("companion unit %s: %q", s.Name, s.ExecStart)
	}
	if !reflect.DeepEqual(s.Properties, []dbusapi.UnitProperty{{Name: "BindsTo", Value: []string{"nsbox@web.service"}}}) || s.CollectMode != "inactive-or-failed" {
		t.Errorf("companion unit properties: %+v, collect %q", s.Properties, s.CollectMode)
	}
	// One that runs already (a reboot runs ExecStartPost= again) is kept.
	f.units["nsbox-ports@web.service"] = dbusapi.UnitState{ActiveState: "active"}
	if err := m.NetworkUp(ctx, "web"); err != nil || len(f.started) != 1 {
		t.Errorf("second NetworkUp: %v, %d starts", err, len(f.started))
	}
	// A machine in a unit that is not nsbox's gets none.
	f.units = map[string]dbusapi.UnitState{}
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid(), Unit: "systemd-nspawn@web.service"}
	_ = m.NetworkUp(ctx, "web")
	if len(f.started) != 1 {
		t.Errorf("a companion for a machine machinectl started: %+v", f.started[1:])
	}
}
