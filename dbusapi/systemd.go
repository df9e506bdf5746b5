package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

const (
	systemdDest      = "org.freedesktop.systemd1"
	systemdPath      = "/org/freedesktop/systemd1"
	unitPathPrefix   = "/org/freedesktop/systemd1/unit/"
	systemdManager   = "org.freedesktop.systemd1.Manager"
	unitIface        = "org.freedesktop.systemd1.Unit"
	serviceIface     = "org.freedesktop.systemd1.Service"
	errLoadFailed    = "org.freedesktop.systemd1.LoadFailed"
	jobRemovedSignal = systemdManager + ".JobRemoved"
)

// Systemd is the client of the systemd manager (org.freedesktop.systemd1).
// It is safe for concurrent use.
type Systemd struct {
	conn    *dbus.Conn
	manager dbus.BusObject
	jobs    *jobs
}

// ServiceSpec describes a transient service: each field is the unit
// setting of its name (systemd.service(5), systemd.resource-control(5)), and
// a zero field leaves systemd's default.
type ServiceSpec struct {
	Name        string // the unit name, "nsbox-web.service"
	Description string // Description=
	// ExecStart is the command and its arguments, argv[0] included. Its
	// failure (an exit status but 0 and SuccessExitStatus, or death by a
	// signal) fails the service, as in systemd-nspawn@.service.
	ExecStart []string
	Type      string // "notify", "simple", ...
	Slice     string // Slice=, "machine.slice"
	Delegate  bool   // Delegate=yes: the service manages its cgroup subtree
	// IOAccounting=yes: systemd counts the service's block I/O.
	IOAccounting bool
	KillMode     string // "mixed", "control-group", ...
	// RestartForceExitStatus restarts the service when its main process
	// exits with one of these (nspawn's 133 means "the container rebooted").
	RestartForceExitStatus []int32
	// SuccessExitStatus are exit statuses that count as success besides 0.
	SuccessExitStatus []int32
	DevicePolicy      string      // "closed", "strict", "auto"
	DeviceAllow       [][2]string // path or class, permissions ("rwm")
	// TimeoutStart bounds the start job (TimeoutStartSec=).
	TimeoutStart time.Duration
	// ExecStartPost runs once the service has started; its failure fails
	// the start (sent without "ignore failure").
	ExecStartPost []string
	// ExecStartPre runs before ExecStart; its failure fails the start.
	ExecStartPre []string
	// ExecStopPost runs once the service has stopped, after a failed
	// start too; its failure is ignored.
	ExecStopPost []string
	// CollectMode "inactive-or-failed" unloads the unit as soon as it
	// stops, failed or not (systemd-run --collect).
	CollectMode string
	// Properties are further unit settings (resource limits), as name and
	// value; values are uint64 or string.
	Properties []UnitProperty
}

// UnitProperty is one unit setting by its D-Bus name ("MemoryMax").
type UnitProperty struct {
	Name  string
	Value any // of the D-Bus type systemd expects: uint64 for "t", string for "s"
}

// property is a unit setting as systemd's methods take it, (sv).
type property struct {
	Name  string
	Value dbus.Variant
}

func prop(name string, v any) property { return property{Name: name, Value: dbus.MakeVariant(v)} }

// execCommand is one command of ExecStart= and the like, (sasb). The
// boolean is systemd's "ignore failure", the "-" prefix of a unit file
// (go-systemd calls it UncleanIsFailure, which it is not).
type execCommand struct {
	Path          string
	Argv          []string
	IgnoreFailure bool
}

// exitStatusSet is RestartForceExitStatus= and SuccessExitStatus=, (aiai).
type exitStatusSet struct {
	Status  []int32
	Signals []int32
}

// deviceAllow is one DeviceAllow= entry, (ss).
type deviceAllow struct {
	Path  string
	Perms string
}

// auxUnit is an auxiliary unit of StartTransientUnit, (sa(sv)); nsbox
// sends none.
type auxUnit struct {
	Name       string
	Properties []property
}

// transientProperties turns spec into StartTransientUnit's properties.
func transientProperties(spec ServiceSpec) []property {
	props := []property{prop("Description", spec.Description)}
	if len(spec.ExecStart) > 0 {
		// Without "ignore failure", as the unit file of nsbox enable and
		// systemd-nspawn@.service have it. (Through go-systemd's
		// PropExecStart(cmd, true), whose flag is "ignore failure" though
		// it is named uncleanIsFailure, nsbox sent it with "ignore
		// failure" before.)
		props = append(props, prop("ExecStart", []execCommand{{spec.ExecStart[0], spec.ExecStart, false}}))
	}
	if spec.Type != "" {
		props = append(props, prop("Type", spec.Type))
	}
	if spec.Slice != "" {
		props = append(props, prop("Slice", spec.Slice))
	}
	if spec.Delegate {
		props = append(props, prop("Delegate", true))
	}
	if spec.IOAccounting {
		props = append(props, prop("IOAccounting", true))
	}
	if spec.KillMode != "" {
		props = append(props, prop("KillMode", spec.KillMode))
	}
	if len(spec.RestartForceExitStatus) > 0 {
		props = append(props, prop("RestartForceExitStatus", exitStatusSet{spec.RestartForceExitStatus, []int32{}}))
	}
	if len(spec.SuccessExitStatus) > 0 {
		props = append(props, prop("SuccessExitStatus", exitStatusSet{spec.SuccessExitStatus, []int32{}}))
	}
	if spec.DevicePolicy != "" {
		props = append(props, prop("DevicePolicy", spec.DevicePolicy))
	}
	if len(spec.DeviceAllow) > 0 {
		allow := make([]deviceAllow, 0, len(spec.DeviceAllow))
		for _, d := range spec.DeviceAllow {
			allow = append(allow, deviceAllow{d[0], d[1]})
		}
		props = append(props, prop("DeviceAllow", allow))
	}
	if spec.TimeoutStart > 0 {
		props = append(props, prop("TimeoutStartUSec", uint64(spec.TimeoutStart/time.Microsecond)))
	}
	if spec.CollectMode != "" {
		props = append(props, prop("CollectMode", spec.CollectMode))
	}
	if len(spec.ExecStartPre) > 0 {
		props = append(props, prop("ExecStartPre", []execCommand{{spec.ExecStartPre[0], spec.ExecStartPre, false}}))
	}
	if len(spec.ExecStartPost) > 0 {
		props = append(props, prop("ExecStartPost", []execCommand{{spec.ExecStartPost[0], spec.ExecStartPost, false}}))
	}
	if len(spec.ExecStopPost) > 0 {
		props = append(props, prop("ExecStopPost", []execCommand{{spec.ExecStopPost[0], spec.ExecStopPost, true}}))
	}
	return append(props, unitProperties(spec.Properties)...)
}

func unitProperties(ps []UnitProperty) []property {
	out := make([]property, 0, len(ps))
	for _, p := range ps {
		out = append(out, prop(p.Name, p.Value))
	}
	return out
}

// StartTransientUnit starts spec and waits for its start job to finish. It
// returns the job result ("done", "failed", "timeout", ...).
func (s *Systemd) StartTransientUnit(ctx context.Context, spec ServiceSpec) (string, error) {
	r, err := s.jobs.run(ctx, func() (dbus.ObjectPath, error) {
		var job dbus.ObjectPath
		err := s.manager.CallWithContext(ctx, systemdManager+".StartTransientUnit", 0,
			spec.Name, "fail", transientProperties(spec), []auxUnit{}).Store(&job)
		return job, err
	})
	if err != nil {
		return "", fmt.Errorf("start %s: %w", spec.Name, mapSystemdErr(err))
	}
	return r, nil
}

// StartUnit starts a unit from its file and waits for the job; it
// returns the job result.
func (s *Systemd) StartUnit(ctx context.Context, name string) (string, error) {
	r, err := s.jobs.run(ctx, func() (dbus.ObjectPath, error) {
		var job dbus.ObjectPath
		err := s.manager.CallWithContext(ctx, systemdManager+".StartUnit", 0, name, "fail").Store(&job)
		return job, err
	})
	if err != nil {
		return "", fmt.Errorf("start %s: %w", name, mapSystemdErr(err))
	}
	return r, nil
}

// StopUnit stops a unit and waits for the stop job. A unit systemd has not
// loaded is stopped already.
func (s *Systemd) StopUnit(ctx context.Context, name string) error {
	_, err := s.jobs.run(ctx, func() (dbus.ObjectPath, error) {
		var job dbus.ObjectPath
		err := s.manager.CallWithContext(ctx, systemdManager+".StopUnit", 0, name, "replace").Store(&job)
		return job, err
	})
	err = mapSystemdErr(err)
	if errors.Is(err, ErrNoSuchUnit) {
		return nil
	}
	return err
}

// ResetFailedUnit forgets a failed unit so its name can be used again. A
// unit systemd has not loaded, or could not load, has nothing to forget.
func (s *Systemd) ResetFailedUnit(ctx context.Context, name string) error {
	err := mapSystemdErr(s.manager.CallWithContext(ctx, systemdManager+".ResetFailedUnit", 0, name).Err)
	if errors.Is(err, ErrNoSuchUnit) || dbusErrorName(err) == errLoadFailed {
		return nil
	}
	return err
}

// Reload makes systemd read unit files again (daemon-reload); it returns
// once systemd has.
func (s *Systemd) Reload(ctx context.Context) error {
	return mapSystemdErr(s.manager.CallWithContext(ctx, systemdManager+".Reload", 0).Err)
}

// EnableUnitFiles enables units as their [Install] sections say, in /etc,
// replacing links in the way.
func (s *Systemd) EnableUnitFiles(ctx context.Context, names []string) error {
	const runtime, force = false, true
	return mapSystemdErr(s.manager.CallWithContext(ctx, systemdManager+".EnableUnitFiles", 0, names, runtime, force).Err)
}

// SetUnitProperties changes properties of a running unit, for now
// (runtime) or also in the unit's drop-ins.
func (s *Systemd) SetUnitProperties(ctx context.Context, name string, runtime bool, props []UnitProperty) error {
	return mapSystemdErr(s.manager.CallWithContext(ctx, systemdManager+".SetUnitProperties", 0, name, runtime, unitProperties(props)).Err)
}

// UnitState is the part of a unit's state nsbox acts on.
type UnitState struct {
	ActiveState string // "active", "activating", "failed", "inactive", ...
	SubState    string
	Result      string // services: "success", "exit-code", "timeout", ...
	MainPID     int    // 0 for none
	LoadState   string // "loaded", "not-found", ...
}

// unitStateProperties are the properties GetUnitState reads; the unit's
// must all answer, the service's may not (a unit of another type).
var unitStateProperties = []struct {
	iface, name string
	optional    bool
}{
	{unitIface, "ActiveState", false},
	{unitIface, "SubState", false},
	{unitIface, "LoadState", false},
	{serviceIface, "Result", true},
	{serviceIface, "MainPID", true},
}

// GetUnitState reads a unit's state, in one round trip; a unit systemd
// does not know is reported with LoadState "not-found".
func (s *Systemd) GetUnitState(ctx context.Context, name string) (UnitState, error) {
	calls := make([]batchCall, len(unitStateProperties))
	unit := s.conn.Object(systemdDest, unitObjectPath(name))
	for i, p := range unitStateProperties {
		calls[i] = batchCall{obj: unit, method: propertiesIface + ".Get", args: []any{p.iface, p.name}}
	}
	props := map[string]dbus.Variant{}
	for i, call := range callAll(ctx, calls) {
		var v dbus.Variant
		if err := call.Store(&v); err != nil {
			if unitStateProperties[i].optional {
				continue
			}
			return UnitState{}, fmt.Errorf("unit %s: %w", name, mapSystemdErr(err))
		}
		props[unitStateProperties[i].name] = v
	}
	return decodeUnitState(props), nil
}

// decodeUnitState turns unit and service properties into a UnitState. A
// property missing or of another type than systemd's is left at its zero
// value.
func decodeUnitState(props map[string]dbus.Variant) UnitState {
	var st UnitState
	st.ActiveState, _ = props["ActiveState"].Value().(string)
	st.SubState, _ = props["SubState"].Value().(string)
	st.LoadState, _ = props["LoadState"].Value().(string)
	st.Result, _ = props["Result"].Value().(string)
	if pid, ok := props["MainPID"].Value().(uint32); ok {
		st.MainPID = int(pid)
	}
	return st
}

// UsageUnknown is a UnitUsage figure systemd does not know: accounting off,
// or the unit not running. It is systemd's own "unset".
const UsageUnknown = uint64(math.MaxUint64)

// UnitUsage is what a unit uses now; a figure is UsageUnknown when systemd
// does not know it.
type UnitUsage struct {
	MemoryCurrent uint64 // bytes
	TasksCurrent  uint64
	CPUUsageNSec  uint64 // nanoseconds of CPU time, all CPUs
	IOReadBytes   uint64 // bytes read from block devices (IOAccounting=)
	IOWriteBytes  uint64 // bytes written to them
}

// unitUsageProperties are the service properties GetUnitUsage reads.
var unitUsageProperties = []string{"MemoryCurrent", "TasksCurrent", "CPUUsageNSec", "IOReadBytes", "IOWriteBytes"}

// GetUnitUsage reads a service's current resource use, in one round trip.
// It fails only if systemd answers none of the figures.
func (s *Systemd) GetUnitUsage(ctx context.Context, name string) (UnitUsage, error) {
	calls := make([]batchCall, len(unitUsageProperties))
	unit := s.conn.Object(systemdDest, unitObjectPath(name))
	for i, p := range unitUsageProperties {
		calls[i] = batchCall{obj: unit, method: propertiesIface + ".Get", args: []any{serviceIface, p}}
	}
	props := map[string]dbus.Variant{}
	var first error
	for i, call := range callAll(ctx, calls) {
		var v dbus.Variant
		if err := call.Store(&v); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		props[unitUsageProperties[i]] = v
	}
	if len(props) == 0 && first != nil {
		return UnitUsage{}, fmt.Errorf("unit %s: %w", name, mapSystemdErr(first))
	}
	return decodeUnitUsage(props), nil
}

// decodeUnitUsage turns service properties into a UnitUsage; a figure
// missing or of another type than systemd's is UsageUnknown.
func decodeUnitUsage(props map[string]dbus.Variant) UnitUsage {
	figure := func(name string) uint64 {
		if v, ok := props[name].Value().(uint64); ok {
			return v
		}
		return UsageUnknown
	}
	return UnitUsage{
		MemoryCurrent: figure("MemoryCurrent"),
		TasksCurrent:  figure("TasksCurrent"),
		CPUUsageNSec:  figure("CPUUsageNSec"),
		IOReadBytes:   figure("IOReadBytes"),
		IOWriteBytes:  figure("IOWriteBytes"),
	}
}

// unitObjectPath is the object path systemd gives the unit name; systemd
// loads the unit on a call to it, so a unit it does not know answers as
// "not-found", not with an error.
func unitObjectPath(name string) dbus.ObjectPath {
	return dbus.ObjectPath(unitPathPrefix + escapeLabel(name))
}

// jobs waits for the end of the systemd jobs this process queues. systemd
// announces it with the JobRemoved signal, which it sends to every client
// that queued a job, subscribed or not.
type jobs struct {
	conn *dbus.Conn
	// mu is held from a job's call to the registration of its waiter, so
	// that the JobRemoved of a job that ends at once is not handled
	// before: godbus hands replies and signals to different goroutines.
	mu       sync.Mutex
	watching bool
	closed   bool
	waiting  map[dbus.ObjectPath]chan string
}

func newJobs(conn *dbus.Conn) *jobs {
	return &jobs{conn: conn, waiting: map[dbus.ObjectPath]chan string{}}
}

var (
	// errJobLost is the answer for a job whose end the connection did not
	// live to see.
	errJobLost = errors.New("system bus connection closed before the job ended")
	// errClosed is the answer for a job asked for after the connection
	// closed.
	errClosed = errors.New("system bus connection closed")
)

// run queues a job with call and waits for its result.
func (j *jobs) run(ctx context.Context, call func() (dbus.ObjectPath, error)) (string, error) {
	j.mu.Lock()
	if err := j.watch(ctx); err != nil {
		j.mu.Unlock()
		return "", err
	}
	path, err := call()
	if err != nil {
		j.mu.Unlock()
		return "", err
	}
	done := make(chan string, 1)
	j.waiting[path] = done
	j.mu.Unlock()
	select {
	case r, ok := <-done:
		if !ok {
			return "", errJobLost
		}
		return r, nil
	case <-ctx.Done():
		j.mu.Lock()
		delete(j.waiting, path)
		j.mu.Unlock()
		return "", ctx.Err()
	}
}

// watch asks the bus for JobRemoved, once; j.mu is held.
func (j *jobs) watch(ctx context.Context) error {
	if j.closed {
		return errClosed
	}
	if j.watching {
		return nil
	}
	sigs := make(chan *dbus.Signal, 16)
	j.conn.Signal(sigs)
	err := j.conn.AddMatchSignalContext(ctx,
		dbus.WithMatchObjectPath(systemdPath),
		dbus.WithMatchInterface(systemdManager),
		dbus.WithMatchMember("JobRemoved"))
	if err != nil {
		j.conn.RemoveSignal(sigs)
		return err
	}
	j.watching = true
	go j.dispatch(sigs)
	return nil
}

// dispatch hands each job's result to its waiter until the connection
// closes, then tells the waiters left that their jobs are lost.
func (j *jobs) dispatch(sigs <-chan *dbus.Signal) {
	for s := range sigs {
		path, result, ok := jobRemoved(s)
		if !ok {
			continue
		}
		j.mu.Lock()
		if done, ok := j.waiting[path]; ok {
			done <- result
			delete(j.waiting, path)
		}
		j.mu.Unlock()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closed = true
	for path, done := range j.waiting {
		close(done)
		delete(j.waiting, path)
	}
}

// jobRemoved reads a JobRemoved signal (u id, o job, s unit, s result).
func jobRemoved(s *dbus.Signal) (dbus.ObjectPath, string, bool) {
	if s == nil || s.Name != jobRemovedSignal || s.Path != systemdPath || len(s.Body) != 4 {
		return "", "", false
	}
	path, ok1 := s.Body[1].(dbus.ObjectPath)
	result, ok2 := s.Body[3].(string)
	if !ok1 || !ok2 {
		return "", "", false
	}
	return path, result, true
}
