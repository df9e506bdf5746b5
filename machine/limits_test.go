package machine

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/machined"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512M": 512 << 20, "2G": 2 << 30, "1.5G": 3 << 29, "64k": 64 << 10, "4096": 4096} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1M", "0", "12Q", "M", "1e400", "NaN"} {
		if _, err := ParseSize(bad); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("ParseSize(%q) accepted: %v", bad, err)
		}
	}
}

func TestLimitFlags(t *testing.T) {
	l, err := LimitFlags{Memory: "512M", CPUs: "1.5", Tasks: "200"}.Apply(Limits{IOWeight: 50})
	if err != nil || l != (Limits{Memory: 512 << 20, CPUs: 1.5, Tasks: 200, IOWeight: 50}) {
		t.Fatalf("%+v %v", l, err)
	}
	props := l.Properties()
	names := []string{}
	for _, p := range props {
		names = append(names, p.Name)
	}
	if !reflect.DeepEqual(names, []string{"MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "IOWeight"}) || props[1].Value != uint64(1500000) {
		t.Errorf("properties %+v", props)
	}
	if got := strings.Join(l.UnitLines(), " "); got != "MemoryMax=536870912 CPUQuota=150% TasksMax=200 IOWeight=50" {
		t.Errorf("unit lines %q", got)
	}
	for _, bad := range []LimitFlags{{CPUs: "-1"}, {CPUWeight: "0"}, {IOWeight: "10001"}, {Tasks: "x"}, {Memory: "1X"}} {
		if _, err := bad.Apply(Limits{}); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestUnitText(t *testing.T) {
	m := &machined.Backend{}
	text, err := m.UnitFile(backend.StartSpec{Name: "web", Root: "/srv/web", Argv: []string{"systemd-nspawn", "--directory=/srv/web", "--bind=/a b:/c"},
		PostStart: []string{"/usr/bin/nsbox", "__network-up", "web"}, Limits: Limits{Memory: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStart=systemd-nspawn --directory=/srv/web \"--bind=/a b:/c\"\n",
		"ExecStartPost=-/usr/bin/nsbox __network-up web\n",
		"Type=notify\nSlice=machine.slice\nDelegate=yes\nIOAccounting=yes\nKillMode=mixed\nRestart=on-failure\n",
		"MemoryMax=1073741824\n", "WantedBy=machines.target\n", "RequiresMountsFor=/srv/web\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q:\n%s", want, text)
		}
	}
}
