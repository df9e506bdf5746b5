package machine

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/network"
)

// A boot that fails remembers none of its options or limits: the settings
// file is as it was, byte for byte (nspawn read the boot's own while it
// started), and the limits stay the old ones. Its log tail is asked for
// this boot's lines only (journalctl --since the boot's start).
func TestFailedBootRemembersNothing(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "failed"}
	m, runner := newTestManager(t, f)
	mkMachine(t, m, "web")
	before := "# mine\n[Exec]\nBoot=yes\nPrivateUsers=pick\n\n[Network]\nVirtualEthernet=yes\nPort=tcp:18080:80\n"
	os.MkdirAll(m.SettingsDir, 0o755)
	if err := os.WriteFile(m.settingsPath("web"), []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetLimits(ctx, "web", LimitFlags{Memory: "1G"}); err != nil {
		t.Fatal(err)
	}
	err := m.Boot(ctx, "web", BootRequest{Network: "none", PortsSet: true, Limits: LimitFlags{IOWeight: "50", Memory: NoLimit}, Timeout: time.Second})
	if !errors.Is(err, ErrBootFailed) {
		t.Fatalf("boot with a failing start job: %v", err)
	}
	if b, _ := os.ReadFile(m.settingsPath("web")); string(b) != before {
		t.Errorf("settings after a failed boot:\n%s\nwant them as they were:\n%s", b, before)
	}
	if l, _ := m.Limits("web"); l != (Limits{Memory: 1 << 30}) {
		t.Errorf("limits after a failed boot: %+v", l)
	}
	since := false
	for _, c := range runner.ran {
		if strings.HasPrefix(c, "journalctl") && strings.Contains(c, "--since=@") {
			since = true
		}
	}
	if !since {
		t.Errorf("the log tail of a failed boot is not limited to the boot: %q", runner.ran)
	}

	// Without a settings file before, none is left.
	mkMachine(t, m, "db")
	if err := m.Boot(ctx, "db", BootRequest{Network: "none", Timeout: time.Second}); !errors.Is(err, ErrBootFailed) {
		t.Fatalf("boot db: %v", err)
	}
	if _, err := os.Stat(m.settingsPath("db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed first boot left settings: %v", err)
	}
}

// An earlier nsbox left D-Bus's machine id a copy of the base's: the
// first boot of this nsbox makes it a link and gives the machine an id of
// its own, before the machine starts.
func TestBootUnsharesTheMachineID(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "failed"}
	m, _ := newTestManager(t, f)
	id := "41e810596f0b4bfda8a11cf2422810b8\n"
	for _, n := range []string{"a", "b"} {
		mkMachine(t, m, n)
		os.MkdirAll(filepath.Join(m.Dir(n), "var/lib/dbus"), 0o755)
		os.WriteFile(filepath.Join(m.Dir(n), "etc/machine-id"), []byte(id), 0o444)
		os.WriteFile(filepath.Join(m.Dir(n), bootstrap.DBusMachineID), []byte(id), 0o644)
	}
	shared, pending := m.MachineIDSharers()
	if len(shared) != 1 || strings.Join(shared[0], ",") != "a,b" || strings.Join(pending, ",") != "a,b" {
		t.Errorf("sharers before: %v pending %v", shared, pending)
	}
	_ = m.Boot(ctx, "a", BootRequest{Timeout: time.Second})
	if b, _ := os.ReadFile(filepath.Join(m.Dir("a"), "etc/machine-id")); len(b) != 0 {
		t.Errorf("a's /etc/machine-id still %q", b)
	}
	if cur, err := os.Readlink(filepath.Join(m.Dir("a"), bootstrap.DBusMachineID)); err != nil || cur != "/etc/machine-id" {
		t.Errorf("a's D-Bus machine id: %q %v", cur, err)
	}
	shared, pending = m.MachineIDSharers()
	if len(shared) != 0 || strings.Join(pending, ",") != "b" {
		t.Errorf("sharers after: %v pending %v", shared, pending)
	}
}

// Port forwards that cannot work are refused before anything starts,
// naming who holds the port.
func TestBootRefusesTakenPorts(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done"}
	m, _ := newTestManager(t, f)
	mkMachine(t, m, "web")
	mkMachine(t, m, "other")
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	err = m.Boot(ctx, "web", BootRequest{Ports: []string{"tcp:" + itoa(port) + ":80"}, PortsSet: true})
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "in use on this host by") || !strings.Contains(err.Error(), "pid "+itoa(os.Getpid())) {
		t.Errorf("boot onto a port a host process listens on: %v", err)
	}

	// "other" runs and forwards a port.
	o := DefaultBootOptions()
	o.Ports = []string{"udp:18093:53"}
	text, _ := o.SettingsText()
	os.MkdirAll(m.SettingsDir, 0o755)
	os.WriteFile(m.settingsPath("other"), []byte(text), 0o644)
	f.machines["other"] = dbusapi.Machine{Name: "other", Class: "container", RootDirectory: m.Dir("other"), Leader: os.Getpid()}
	err = m.Boot(ctx, "web", BootRequest{Ports: []string{"udp:18093"}, PortsSet: true})
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "forwarded to machine other") {
		t.Errorf("boot onto a port another machine forwards: %v", err)
	}
	err = m.Boot(ctx, "web", BootRequest{Ports: []string{"18094:80", "tcp:18094:81"}, PortsSet: true})
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "twice") {
		t.Errorf("one host port twice: %v", err)
	}
	if len(f.started) != 0 {
		t.Errorf("refused boots started %d units", len(f.started))
	}
	if _, err := os.Stat(m.settingsPath("web")); err == nil {
		t.Error("a refused boot left settings")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestLimitsClear(t *testing.T) {
	cur := Limits{Memory: 1 << 30, IOWeight: 50, Tasks: 10}
	l, err := (LimitFlags{IOWeight: NoLimit, Memory: NoLimit, CPUs: "2"}).Apply(cur)
	if err != nil || l != (Limits{Tasks: 10, CPUs: 2}) {
		t.Fatalf("apply none: %+v %v", l, err)
	}
	c := cur.Cleared(l)
	if c != (Limits{Memory: 1 << 30, IOWeight: 50}) {
		t.Errorf("Cleared %+v", c)
	}
	var names []string
	for _, p := range c.ClearProperties() {
		names = append(names, p.Name)
		if p.Value != ^uint64(0) {
			t.Errorf("%s = %v, want infinity", p.Name, p.Value)
		}
	}
	if strings.Join(names, ",") != "MemoryMax,IOWeight" {
		t.Errorf("properties %v", names)
	}
	if _, err := (LimitFlags{IOWeight: "0"}).Apply(cur); err == nil || !strings.Contains(err.Error(), "or none") {
		t.Errorf("io-weight 0: %v", err)
	}
}

// Every address pool in use keeps its masquerading: the table covers this
// boot's pool and the subnets machines got from other pools.
func TestPoolsInUse(t *testing.T) {
	m := &Manager{Paths: Paths{StateDir: t.TempDir()}, Pool: "10.77.0.0/24"}
	os.MkdirAll(filepath.Dir(m.linkPath("a")), 0o755)
	os.WriteFile(m.linkPath("a"), []byte("10.89.0.0/30\n"), 0o644)
	os.WriteFile(m.linkPath("b"), []byte("10.77.0.4/30\n"), 0o644)
	os.WriteFile(filepath.Join(filepath.Dir(m.linkPath("a")), ".lck"), nil, 0o644)
	rules := network.NftRules(m.poolsInUse(), false)
	if !strings.Contains(rules, "ip saddr { 10.77.0.0/24, 10.89.0.0/30 } ip daddr != { 10.77.0.0/24, 10.89.0.0/30 } masquerade") {
		t.Errorf("rules do not masquerade both pools:\n%s", rules)
	}
	for _, bad := range []string{"bogus", "10.0.0.0/31", "fd00::/64", ""} {
		if err := ValidatePool(bad); err == nil {
			t.Errorf("pool %q accepted", bad)
		}
	}
	if err := ValidatePool("10.89.0.0/16"); err != nil {
		t.Error(err)
	}
}

func TestBootErrorIsOneLine(t *testing.T) {
	e := &BootError{Name: "web", Why: "system state \"x\x1b[2J\"\nnsbox: all is well"}
	if msg := e.Error(); strings.ContainsAny(msg, "\n\x1b") || !strings.Contains(msg, `\x1b[2J`) {
		t.Errorf("Error() = %q", msg)
	}
}
