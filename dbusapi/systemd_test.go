package dbusapi

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

func TestTransientProperties(t *testing.T) {
	spec := ServiceSpec{
		Name:                   "nsbox-web.service",
		Description:            "nsbox machine web",
		ExecStart:              []string{"/usr/bin/systemd-nspawn", "--boot", "-M", "web"},
		Type:                   "notify",
		Slice:                  "machine.slice",
		Delegate:               true,
		KillMode:               "mixed",
		RestartForceExitStatus: []int32{133},
		SuccessExitStatus:      []int32{133},
		DevicePolicy:           "closed",
		DeviceAllow:            [][2]string{{"/dev/net/tun", "rwm"}, {"char-pts", "rw"}},
		TimeoutStart:           90 * time.Second,
		ExecStartPost:          []string{"/var/lib/nsbox/bin/nsbox", "__network-up", "web"},
		CollectMode:            "inactive-or-failed",
		Properties:             []UnitProperty{{"MemoryMax", uint64(1 << 30)}, {"CPUWeight", uint64(50)}},
	}
	// name, D-Bus signature and value of every property, in order.
	want := []struct {
		name, sig string
		value     any
	}{
		{"Description", "s", "nsbox machine web"},
		{"ExecStart", "a(sasb)", []execCommand{{"/usr/bin/systemd-nspawn", []string{"/usr/bin/systemd-nspawn", "--boot", "-M", "web"}, false}}},
		{"Type", "s", "notify"},
		{"Slice", "s", "machine.slice"},
		{"Delegate", "b", true},
		{"KillMode", "s", "mixed"},
		{"RestartForceExitStatus", "(aiai)", exitStatusSet{[]int32{133}, []int32{}}},
		{"SuccessExitStatus", "(aiai)", exitStatusSet{[]int32{133}, []int32{}}},
		{"DevicePolicy", "s", "closed"},
		{"DeviceAllow", "a(ss)", []deviceAllow{{"/dev/net/tun", "rwm"}, {"char-pts", "rw"}}},
		{"TimeoutStartUSec", "t", uint64(90e6)},
		{"CollectMode", "s", "inactive-or-failed"},
		{"ExecStartPost", "a(sasb)", []execCommand{{"/var/lib/nsbox/bin/nsbox", []string{"/var/lib/nsbox/bin/nsbox", "__network-up", "web"}, false}}},
		{"MemoryMax", "t", uint64(1 << 30)},
		{"CPUWeight", "t", uint64(50)},
	}
	got := transientProperties(spec)
	if len(got) != len(want) {
		t.Fatalf("%d properties, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.name || g.Value.Signature().String() != w.sig || !reflect.DeepEqual(g.Value.Value(), w.value) {
			t.Errorf("property %d: %s %s %#v; want %s %s %#v", i, g.Name, g.Value.Signature(), g.Value.Value(), w.name, w.sig, w.value)
		}
	}
	// What StartTransientUnit sends must have systemd's signature.
	if sig := dbus.SignatureOf(spec.Name, "fail", got, []auxUnit{}).String(); sig != "ssa(sv)a(sa(sv))" {
		t.Errorf("StartTransientUnit signature %s", sig)
	}

	// A bare spec sends the description only; unset settings stay systemd's.
	bare := transientProperties(ServiceSpec{Name: "x.service"})
	if len(bare) != 1 || bare[0].Name != "Description" {
		t.Errorf("bare spec: %v", bare)
	}
}

func TestUnitPropertiesSignature(t *testing.T) {
	props := unitProperties([]UnitProperty{{"MemoryMax", uint64(5)}, {"CPUQuotaPerSecUSec", uint64(1e6)}, {"IOWeight", "100"}})
	if sig := dbus.SignatureOf("nsbox-web.service", true, props).String(); sig != "sba(sv)" {
		t.Errorf("SetUnitProperties signature %s", sig)
	}
	if sig := dbus.SignatureOf("x.service", true, unitProperties(nil)).String(); sig != "sba(sv)" {
		t.Errorf("SetUnitProperties signature without properties %s", sig)
	}
}

func jobSignal(path, result string) *dbus.Signal {
	return &dbus.Signal{
		Path: systemdPath, Name: jobRemovedSignal,
		Body: []any{uint32(7), dbus.ObjectPath(path), "nsbox-web.service", result},
	}
}

func TestJobRemoved(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sig    *dbus.Signal
		path   dbus.ObjectPath
		result string
		ok     bool
	}{
		{"done", jobSignal("/org/freedesktop/systemd1/job/7", "done"), "/org/freedesktop/systemd1/job/7", "done", true},
		{"failed", jobSignal("/org/freedesktop/systemd1/job/8", "failed"), "/org/freedesktop/systemd1/job/8", "failed", true},
		{"nil", nil, "", "", false},
		{"machined's", &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineNew", Body: []any{"web", dbus.ObjectPath("/x")}}, "", "", false},
		{"short body", &dbus.Signal{Path: systemdPath, Name: jobRemovedSignal, Body: []any{uint32(7), dbus.ObjectPath("/j")}}, "", "", false},
		{"job as a string", &dbus.Signal{Path: systemdPath, Name: jobRemovedSignal, Body: []any{uint32(7), "/j", "u", "done"}}, "", "", false},
		{"another path", &dbus.Signal{Path: "/org/freedesktop/systemd1/unit/x", Name: jobRemovedSignal, Body: []any{uint32(7), dbus.ObjectPath("/j"), "u", "done"}}, "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, result, ok := jobRemoved(tc.sig)
			if path != tc.path || result != tc.result || ok != tc.ok {
				t.Errorf("got %q %q %v; want %q %q %v", path, result, ok, tc.path, tc.result, tc.ok)
			}
		})
	}
}

// TestJobsDispatch drives the waiter side of jobs with signals made here:
// each job gets its own result, whatever else the connection carries, and
// a job still waited for when the connection closes is lost, not hung.
func TestJobsDispatch(t *testing.T) {
	j := newJobs(nil)
	j.watching = true // the match is the bus's business; the signals come from here
	sigs := make(chan *dbus.Signal)
	dispatched := make(chan struct{})
	go func() {
		j.dispatch(sigs)
		close(dispatched)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type answer struct {
		result string
		err    error
	}
	start := func(path string) <-chan answer {
		called := make(chan struct{})
		out := make(chan answer, 1)
		go func() {
			r, err := j.run(ctx, func() (dbus.ObjectPath, error) {
				close(called)
				return dbus.ObjectPath(path), nil
			})
			out <- answer{r, err}
		}()
		<-called
		return out
	}

	a := start("/org/freedesktop/systemd1/job/1")
	b := start("/org/freedesktop/systemd1/job/2")
	sigs <- &dbus.Signal{Path: machinedPath, Name: managerIface + ".MachineNew", Body: []any{"web", dbus.ObjectPath("/x")}}
	sigs <- jobSignal("/org/freedesktop/systemd1/job/99", "done") // another client's job
	sigs <- jobSignal("/org/freedesktop/systemd1/job/2", "failed")
	sigs <- jobSignal("/org/freedesktop/systemd1/job/1", "done")
	if got := <-a; got != (answer{"done", nil}) {
		t.Errorf("job 1: %+v", got)
	}
	if got := <-b; got != (answer{"failed", nil}) {
		t.Errorf("job 2: %+v", got)
	}

	lost := start("/org/freedesktop/systemd1/job/3")
	close(sigs) // the connection closed
	if got := <-lost; !errors.Is(got.err, errJobLost) {
		t.Errorf("job 3 after close: %+v", got)
	}
	<-dispatched
	if _, err := j.run(ctx, func() (dbus.ObjectPath, error) {
		t.Error("a job queued after the connection closed")
		return "", nil
	}); !errors.Is(err, errClosed) {
		t.Errorf("run after close: %v", err)
	}
	if len(j.waiting) != 0 {
		t.Errorf("waiters left: %v", j.waiting)
	}
}

// TestJobsCancel: a caller that stops waiting leaves no waiter behind.
func TestJobsCancel(t *testing.T) {
	j := newJobs(nil)
	j.watching = true
	ctx, cancel := context.WithCancel(context.Background())
	_, err := j.run(ctx, func() (dbus.ObjectPath, error) {
		cancel()
		return "/org/freedesktop/systemd1/job/5", nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v", err)
	}
	if len(j.waiting) != 0 {
		t.Errorf("waiters left: %v", j.waiting)
	}
	// A job whose call fails leaves none either.
	boom := errors.New("boom")
	if _, err := j.run(context.Background(), func() (dbus.ObjectPath, error) { return "", boom }); !errors.Is(err, boom) {
		t.Errorf("err %v", err)
	}
	if len(j.waiting) != 0 {
		t.Errorf("waiters left: %v", j.waiting)
	}
}
