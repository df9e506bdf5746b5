package machine

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/machined"
)

func TestMergeList(t *testing.T) {
	p := Paths{RootDir: "/srv", ImagesDir: "/var/lib/machines"}
	since := time.Unix(1700000000, 0)
	got := mergeList(p, []string{"a", "b", "c"}, []Running{
		{Name: "b", RootDirectory: "/srv/b", Leader: 10, Unit: "nsbox-b.service", Since: since, Addresses: []string{"10.0.0.2"}},
		{Name: "c", RootDirectory: "/var/lib/machines/c", Leader: 11}, // started by machinectl start
		{Name: "x", RootDirectory: "/var/lib/machines/x", Leader: 12, Service: "systemd-nspawn"},
	}, "machined")
	var names, states []string
	for _, i := range got {
		names = append(names, i.Name)
		states = append(states, i.State)
	}
	if !reflect.DeepEqual(names, []string{"a", "b", "c", "x"}) || !reflect.DeepEqual(states, []string{"stopped", "running", "running", "running"}) {
		t.Fatalf("names %v states %v", names, states)
	}
	if !got[0].Managed || !got[1].Managed || !got[2].Managed || got[3].Managed {
		t.Errorf("managed flags: %+v", got)
	}
	if got[1].Leader != 10 || got[1].Since == nil || !got[1].Since.Equal(since) || got[1].Addresses[0] != "10.0.0.2" {
		t.Errorf("running fields: %+v", got[1])
	}
	if got[0].Addresses == nil || got[0].Interfaces == nil {
		t.Error("empty lists must be [] in JSON, not null")
	}
	// A machine of another tree under the same name is foreign.
	got = mergeList(p, []string{"a"}, []Running{{Name: "a", RootDirectory: "/elsewhere/a"}}, "machined")
	if len(got) != 2 || got[0].State != "stopped" || got[1].Managed {
		t.Errorf("same name, other tree: %+v", got)
	}
}

func TestInfoJSONShape(t *testing.T) {
	i := mergeList(Paths{RootDir: "/srv"}, []string{"web"}, nil, "direct")[0]
	i.OS, i.Version = "debian", "12"
	b, _ := json.Marshal(i)
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"name", "state", "os", "version", "addresses", "root", "managed", "interfaces", "backend"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	if m["state"] != "stopped" || m["root"] != "/srv/web" {
		t.Errorf("JSON values: %s", b)
	}
}

// fakeMachined is machined and systemd as the machined backend sees them.
type fakeMachined struct {
	machines map[string]dbusapi.Machine
	started  []dbusapi.ServiceSpec
	result   string
	killed   []string
	units    map[string]dbusapi.UnitState
}

func (f *fakeMachined) ListMachines() ([]dbusapi.MachineEntry, error) {
	out := []dbusapi.MachineEntry{{Name: ".host", Class: "host"}}
	for n, m := range f.machines {
		out = append(out, dbusapi.MachineEntry{Name: n, Class: m.Class, Service: m.Service})
	}
	return out, nil
}
func (f *fakeMachined) GetMachine(name string) (dbusapi.Machine, error) {
	m, ok := f.machines[name]
	if !ok {
		return m, dbusapi.ErrNoSuchMachine
	}
	return m, nil
}
func (f *fakeMachined) GetMachines(names []string) ([]dbusapi.Machine, []error) {
	return getEach(names, f.GetMachine)
}

// getEach answers a batch call of the fakes one name after another.
func getEach[T any](names []string, get func(string) (T, error)) ([]T, []error) {
	out, errs := make([]T, len(names)), make([]error, len(names))
	for i, n := range names {
		out[i], errs[i] = get(n)
	}
	return out, errs
}
func (f *fakeMachined) KillMachine(name, who string, sig syscall.Signal) error {
	if _, ok := f.machines[name]; !ok {
		return dbusapi.ErrNoSuchMachine
	}
	f.killed = append(f.killed, who+":"+sig.String())
	if sig == sigPoweroff {
		delete(f.machines, name)
	}
	return nil
}
func (f *fakeMachined) TerminateMachine(name string) error {
	delete(f.machines, name)
	return nil
}
func (f *fakeMachined) OpenMachineShell(name, user string, env []string) (*os.File, error) {
	return nil, errors.New("not in tests")
}
func (f *fakeMachined) StartTransientUnit(ctx context.Context, spec dbusapi.ServiceSpec) (string, error) {
	f.started = append(f.started, spec)
	return f.result, nil
}
func (f *fakeMachined) GetUnitState(ctx context.Context, name string) (dbusapi.UnitState, error) {
	return f.units[name], nil
}
func (f *fakeMachined) StopUnit(ctx context.Context, name string) error        { return nil }
func (f *fakeMachined) ResetFailedUnit(ctx context.Context, name string) error { return nil }

// noRunner fails every program: these tests must not run any.
type noRunner struct{ ran []string }

func (n *noRunner) Run(ctx context.Context, c *host.Cmd) error {
	n.ran = append(n.ran, c.String())
	return &host.ExitError{Cmd: c.Path, Status: 1}
}

func newTestManager(t *testing.T, f *fakeMachined) (*Manager, *noRunner) {
	t.Helper()
	dir := t.TempDir()
	p := Paths{RootDir: filepath.Join(dir, "srv"), SettingsDir: filepath.Join(dir, "nspawn"), ImagesDir: filepath.Join(dir, "machines"),
		RunDir: filepath.Join(dir, "run"), LogDir: filepath.Join(dir, "log"), CacheDir: filepath.Join(dir, "cache"), StateDir: filepath.Join(dir, "state")}
	os.MkdirAll(p.RootDir, 0o700)
	r := &noRunner{}
	return &Manager{Paths: p, Runner: r, Pool: "10.89.0.0/16", Backend: &machined.Backend{Machines: f, Systemd: f, Runner: r, UnitDir: filepath.Join(dir, "units")}}, r
}

func mkMachine(t *testing.T, m *Manager, name string) {
	t.Helper()
	os.MkdirAll(filepath.Join(m.Dir(name), "etc"), 0o755)
	os.MkdirAll(filepath.Join(m.Dir(name), "usr", "lib", "systemd"), 0o755)
	os.WriteFile(filepath.Join(m.Dir(name), "etc", "os-release"), []byte("ID=debian\nVERSION_ID=\"12\"\n"), 0o644)
	os.WriteFile(filepath.Join(m.Dir(name), "usr", "lib", "systemd", "systemd"), []byte("#!/bin/sh\n"), 0o755)
}

func TestErrorPathsThroughFakeMachined(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done"}
	m, runner := newTestManager(t, f)
	mkMachine(t, m, "web")
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}

	for _, tc := range []struct {
		what string
		err  error
		want error
	}{
		{"boot unknown", m.Boot(ctx, "nope", BootRequest{}), ErrNotFound},
		{"boot running", m.Boot(ctx, "web", BootRequest{}), ErrRunning},
		{"boot invalid", m.Boot(ctx, "../etc", BootRequest{}), ErrInvalidName},
		{"remove running", m.Remove(ctx, "web", false), ErrRunning},
		{"stop unknown", m.Stop(ctx, "nope", time.Second), ErrNotFound},
		{"reboot unknown", m.Reboot(ctx, "nope"), ErrNotFound},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, tc.err, tc.want)
		}
	}
	if _, err := os.Stat(m.Dir("web")); err != nil {
		t.Errorf("refused remove touched the tree: %v", err)
	}
	if len(f.started) != 0 || len(runner.ran) != 0 {
		t.Errorf("refused commands started something: %v %v", f.started, runner.ran)
	}

	// Stop sends SIGRTMIN+4 to the leader and waits for machined to drop it.
	if err := m.Stop(ctx, "web", time.Second); err != nil {
		t.Fatal(err)
	}
	if len(f.killed) != 1 || !strings.HasPrefix(f.killed[0], "leader:") {
		t.Errorf("stop killed %v", f.killed)
	}
	wantErr := m.Stop(ctx, "web", time.Second)
	if !errors.Is(wantErr, ErrNotRunning) {
		t.Errorf("stop of a stopped machine: %v", wantErr)
	}

	// A failed start job is a boot failure; its options are not remembered.
	f.result = "failed"
	err := m.Boot(ctx, "web", BootRequest{Network: "none", Timeout: time.Second})
	var be *BootError
	if !errors.As(err, &be) || !errors.Is(err, ErrBootFailed) {
		t.Fatalf("failed start job: %v", err)
	}
	spec := f.started[0]
	if spec.Name != "nsbox-web.service" || !spec.Delegate || spec.KillMode != "mixed" || spec.Type != "notify" || spec.ExecStart[0] != "systemd-nspawn" {
		t.Errorf("unit: %+v", spec)
	}
	if !strings.Contains(strings.Join(spec.ExecStart, " "), "--private-network") {
		t.Errorf("--network none not applied: %q", spec.ExecStart)
	}
	if o, _ := m.Options("web"); o.Network != "veth" {
		t.Errorf("options of a failed boot remembered: %+v", o)
	}
}

func TestResolveRelease(t *testing.T) {
	if r, err := ResolveRelease("jammy", CreateOptions{}); err != nil || r.Distro.Name != "ubuntu" {
		t.Errorf("jammy: %+v %v", r, err)
	}
	if r, err := ResolveRelease("web", CreateOptions{Release: "trixie"}); err != nil || r.Name != "trixie" {
		t.Errorf("web --release trixie: %+v %v", r, err)
	}
	if _, err := ResolveRelease("web", CreateOptions{}); err == nil || !strings.Contains(err.Error(), "--release") {
		t.Errorf("web without --release: %v", err)
	}
}

func (f *fakeMachined) StartUnit(ctx context.Context, name string) (string, error) {
	return f.result, nil
}
func (f *fakeMachined) Reload(ctx context.Context) error                          { return nil }
func (f *fakeMachined) EnableUnitFiles(ctx context.Context, names []string) error { return nil }
func (f *fakeMachined) SetUnitProperties(ctx context.Context, name string, runtime bool, props []dbusapi.UnitProperty) error {
	return nil
}
func (f *fakeMachined) GetUnitUsage(ctx context.Context, name string) (dbusapi.UnitUsage, error) {
	return dbusapi.UnitUsage{}, nil
}

func TestSweepStaging(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	left := filepath.Join(m.RootDir, ".#web.123456")
	os.MkdirAll(filepath.Join(left, "etc"), 0o755)
	os.WriteFile(filepath.Join(left, "etc", "x"), []byte("x"), 0o644)
	other := filepath.Join(m.RootDir, ".#webber.1")
	os.MkdirAll(other, 0o755)
	lock := filepath.Join(m.RootDir, ".#web.lck")
	os.WriteFile(lock, nil, 0o600)
	m.sweepStaging("web")
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Error("stale staging tree kept")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("another machine's staging tree was swept")
	}
	if _, err := os.Stat(lock); err != nil {
		t.Error("the lock file was swept")
	}
}

func TestValidateRoot(t *testing.T) {
	dir := t.TempDir()
	if err := validateRoot(dir); err == nil || !strings.Contains(err.Error(), "os-release") {
		t.Errorf("empty tree: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "os-release"), []byte("ID=debian\n"), 0o644)
	if err := validateRoot(dir); err == nil || !strings.Contains(err.Error(), "/usr") {
		t.Errorf("tree without /usr: %v", err)
	}
	os.Mkdir(filepath.Join(dir, "usr"), 0o755)
	if err := validateRoot(dir); err != nil {
		t.Errorf("good tree: %v", err)
	}
}

func TestCheckBinds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind sources must be root's: the test's own files are not")
	}
	m, _ := newTestManager(t, &fakeMachined{})
	// open is reachable by every host user: 0755 all the way down from /
	// (/tmp lets everyone through); data is behind a 0700 directory.
	open := t.TempDir()
	for _, d := range []string{filepath.Dir(open), open} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(open, "private", "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(data), 0o700); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(open, "users")
	if err := os.Mkdir(users, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(users, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		b            Bind
		privateUsers bool
		force        bool
		ok           bool
	}{
		{Bind{Source: data, Dest: "/data"}, false, false, true},
		{Bind{Source: data, Dest: "/data"}, true, false, true},
		{Bind{Source: "/nonexistent-nsbox", Dest: "/x"}, false, true, false},
		{Bind{Source: "/", Dest: "/host"}, false, false, false},
		{Bind{Source: "/", Dest: "/host"}, false, true, true},
		{Bind{Source: m.RootDir, Dest: "/machines"}, false, false, false},
		// Writable and idmapped where host users reach it: refused.
		{Bind{Source: open, Dest: "/o"}, true, false, false},
		{Bind{Source: open, Dest: "/o", Options: "idmap"}, true, false, false},
		{Bind{Source: open, Dest: "/o"}, true, true, true},
		{Bind{Source: open, Dest: "/o", ReadOnly: true}, true, false, true},
		{Bind{Source: open, Dest: "/o", Options: "noidmap"}, true, false, true},
		{Bind{Source: open, Dest: "/o"}, false, false, true},
		{Bind{Source: users, Dest: "/u"}, true, false, false},
	} {
		if err := m.checkBinds([]Bind{tc.b}, tc.privateUsers, tc.force); (err == nil) != tc.ok {
			t.Errorf("%+v private-users=%v force=%v: %v", tc.b, tc.privateUsers, tc.force, err)
		}
	}
}

func TestStaleMachinedRegistration(t *testing.T) {
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	// A leader PID that cannot exist.
	f.machines["web"] = dbusapi.Machine{Name: "web", Leader: 1 << 30}
	if _, err := m.Backend.Get(context.Background(), "web"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("stale registration reported as %v", err)
	}
	if _, ok := f.machines["web"]; ok {
		t.Error("stale registration not terminated")
	}
	f.machines["live"] = dbusapi.Machine{Name: "live", Leader: os.Getpid()}
	if _, err := m.Backend.Get(context.Background(), "live"); err != nil {
		t.Errorf("live machine: %v", err)
	}
}

// A machine disabled while it ran from its unit file keeps the file until
// the unit is down; then it boots as one never enabled, from a transient
// unit (without the file's Restart=on-failure).
func TestDisabledUnitFileGoesWhenDown(t *testing.T) {
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}, result: "done", units: map[string]dbusapi.UnitState{}}
	m, _ := newTestManager(t, f)
	md := m.Backend.(*machined.Backend)
	spec := backend.StartSpec{Name: "web", Argv: []string{"systemd-nspawn"}}
	if err := md.Install(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if md.UnitFileState(ctx, "web") != "enabled" {
		t.Fatal("not enabled after Install")
	}
	f.units[machined.AutostartUnitName("web")] = dbusapi.UnitState{ActiveState: "active"}
	if err := md.Uninstall(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if !md.HasUnitFile("web") {
		t.Fatal("unit file removed under a running unit")
	}
	if md.UnitFileState(ctx, "web") != "disabled" {
		t.Error("still enabled after Uninstall")
	}
	f.units[machined.AutostartUnitName("web")] = dbusapi.UnitState{ActiveState: "inactive"}
	if err := md.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if md.HasUnitFile("web") {
		t.Error("unit file of a disabled, stopped machine kept")
	}
	if len(f.started) != 1 || f.started[0].Name != machined.UnitName("web") || f.started[0].CollectMode != "inactive-or-failed" {
		t.Errorf("disabled machine not started as a transient unit: %+v", f.started)
	}

	// Cleanup after a stop drops it too.
	if err := md.Install(ctx, spec); err != nil {
		t.Fatal(err)
	}
	os.Remove(md.WantsLink("web"))
	md.Cleanup(ctx, "web")
	if md.HasUnitFile("web") {
		t.Error("Cleanup kept the unit file of a disabled machine")
	}
}

// A machine moved from nsbox's veth to a bridge loses the static host0
// address of its veth boots; a link planted in its place is removed, not
// followed.
func TestPrepareNetworkDropsHost0FileOffVeth(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	file := filepath.Join(m.Dir("web"), machineNetworkFile)
	os.MkdirAll(filepath.Dir(file), 0o755)
	os.WriteFile(file, []byte("[Network]\nAddress=10.89.0.2/30\n"), 0o644)
	if l, err := m.prepareNetwork(context.Background(), "web", BootOptions{Network: "bridge:br0"}); err != nil || l != nil {
		t.Fatalf("prepareNetwork: %v %v", l, err)
	}
	if _, err := os.Lstat(file); !os.IsNotExist(err) {
		t.Errorf("host0 file kept on a bridge: %v", err)
	}
	outside := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(outside, []byte("x"), 0o644)
	os.Symlink(outside, file)
	if _, err := m.prepareNetwork(context.Background(), "web", BootOptions{Network: "zone:z"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("removal followed a planted link: %v", err)
	}
	if _, err := os.Lstat(file); !os.IsNotExist(err) {
		t.Errorf("planted link kept: %v", err)
	}
	// Twice is fine: nothing there.
	if _, err := m.prepareNetwork(context.Background(), "web", BootOptions{Network: "zone:z"}); err != nil {
		t.Error(err)
	}
	// With networkd in the machine, a bridge enables it (host0 asks for
	// DHCP), and writes no static address.
	svc := filepath.Join(m.Dir("web"), "lib/systemd/system/systemd-networkd.service")
	os.MkdirAll(filepath.Dir(svc), 0o755)
	os.WriteFile(svc, nil, 0o644)
	if _, err := m.prepareNetwork(context.Background(), "web", BootOptions{Network: "bridge:br0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(m.Dir("web"), "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")); err != nil {
		t.Errorf("networkd not enabled in a bridged machine: %v", err)
	}
	if _, err := os.Lstat(file); !os.IsNotExist(err) {
		t.Errorf("static host0 file written on a bridge: %v", err)
	}
}

func TestBootErrorHint(t *testing.T) {
	e := &BootError{Name: "web", Log: []string{"Failed to create control group inotify object: Too many open files"}}
	if !strings.Contains(e.Hint(), "max_user_instances") {
		t.Errorf("hint for inotify exhaustion: %q", e.Hint())
	}
	if h := (&BootError{Log: []string{"Failed to mount /proc"}}).Hint(); h != "" {
		t.Errorf("hint without a known cause: %q", h)
	}
}

func TestStablePath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	base := t.TempDir() // /tmp/TestStablePathNNN/001, root's, in sticky /tmp
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(p string, mode os.FileMode, uid int) string {
		t.Helper()
		p = filepath.Join(base, p)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	data := mk("data", 0o755, 0)
	user := mk("user", 0o755, 1000)
	open := mk("open", 0o777, 0)
	sticky := mk("sticky", os.ModeSticky|0o777, 0)
	inSticky := mk("sticky/root", 0o755, 0)
	usersInSticky := mk("sticky/users", 0o755, 1000)
	link := func(name, target string, uid int) string {
		t.Helper()
		p := filepath.Join(base, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootLink := link("rootlink", "data", 0)
	userLink := link("userlink", "/root", 1000)
	underUser := filepath.Join(user, "sub")
	if err := os.Mkdir(underUser, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string
		ok         bool
	}{
		{data, data, true},
		{user, user, true}, // its owner cannot replace it: the parent is root's
		{rootLink, data, true},
		{userLink, "", false},
		{underUser, "", false}, // the user can swap sub for a link
		{filepath.Join(open, "x"), "", false},
		{inSticky, inSticky, true},
		{usersInSticky, "", false},
		{sticky, sticky, true},
		{"relative", "", false},
	} {
		if tc.path == filepath.Join(open, "x") {
			_ = os.Mkdir(tc.path, 0o755)
		}
		got, err := host.StablePath(tc.path)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("StablePath(%s) = %q, %v; want %q ok=%v", tc.path, got, err, tc.want, tc.ok)
		}
	}
}
