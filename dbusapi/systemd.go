package dbusapi

import (
	"context"
	"errors"
	"fmt"

	sd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Systemd is a connection to the systemd manager.
type Systemd struct {
	c *sd.Conn
}

// NewSystemd connects to systemd on the system bus.
func NewSystemd(ctx context.Context) (*Systemd, error) {
	c, err := sd.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("systemd: %w", err)
	}
	return &Systemd{c: c}, nil
}

// Close drops the connection.
func (s *Systemd) Close() { s.c.Close() }

// ServiceSpec describes a transient service.
type ServiceSpec struct {
	Name        string
	Description string
	ExecStart   []string
	Type        string // "notify", "simple", ...
	Slice       string
	Delegate    bool
	KillMode    string
	// RestartForceExitStatus restarts the service when its main process
	// exits with one of these (nspawn's 133 means "the container rebooted").
	RestartForceExitStatus []int32
	SuccessExitStatus      []int32
	DevicePolicy           string
	DeviceAllow            [][2]string // path or class, permissions
	TimeoutStartSec        uint64      // microseconds; 0 keeps the default
	ExecStartPost          []string
	Restart                string
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
	Value any
}

// StartTransientUnit starts spec and waits for its start job to finish. It
// returns the job result ("done", "failed", "timeout", ...).
func (s *Systemd) StartTransientUnit(ctx context.Context, spec ServiceSpec) (string, error) {
	props := []sd.Property{
		sd.PropDescription(spec.Description),
		sd.PropExecStart(spec.ExecStart, true),
	}
	if spec.Type != "" {
		props = append(props, sd.PropType(spec.Type))
	}
	if spec.Slice != "" {
		props = append(props, sd.PropSlice(spec.Slice))
	}
	if spec.Delegate {
		props = append(props, prop("Delegate", true))
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
		var allow []deviceAllow
		for _, d := range spec.DeviceAllow {
			allow = append(allow, deviceAllow{d[0], d[1]})
		}
		props = append(props, prop("DeviceAllow", allow))
	}
	if spec.TimeoutStartSec > 0 {
		props = append(props, prop("TimeoutStartUSec", spec.TimeoutStartSec))
	}
	if spec.CollectMode != "" {
		props = append(props, prop("CollectMode", spec.CollectMode))
	}
	if len(spec.ExecStartPost) > 0 {
		p := sd.PropExecStart(spec.ExecStartPost, false)
		p.Name = "ExecStartPost"
		props = append(props, p)
	}
	for _, p := range spec.Properties {
		props = append(props, prop(p.Name, p.Value))
	}
	ch := make(chan string, 1)
	if _, err := s.c.StartTransientUnitContext(ctx, spec.Name, "fail", props, ch); err != nil {
		return "", fmt.Errorf("start %s: %w", spec.Name, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

type exitStatusSet struct {
	Status  []int32
	Signals []int32
}

type deviceAllow struct {
	Path  string
	Perms string
}

func prop(name string, v any) sd.Property {
	return sd.Property{Name: name, Value: dbus.MakeVariant(v)}
}

// UnitState is the part of a unit's state nsbox acts on.
type UnitState struct {
	ActiveState string // "active", "activating", "failed", "inactive", ...
	SubState    string
	Result      string // services: "success", "exit-code", "timeout", ...
	MainPID     int
	LoadState   string // "loaded", "not-found", ...
}

// GetUnitState reads a unit's state; a unit systemd does not know is
// reported with LoadState "not-found".
func (s *Systemd) GetUnitState(ctx context.Context, name string) (UnitState, error) {
	p, err := s.c.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return UnitState{}, err
	}
	st := UnitState{}
	st.ActiveState, _ = p["ActiveState"].(string)
	st.SubState, _ = p["SubState"].(string)
	st.LoadState, _ = p["LoadState"].(string)
	if sp, err := s.c.GetServicePropertyContext(ctx, name, "Result"); err == nil {
		st.Result, _ = sp.Value.Value().(string)
	}
	if sp, err := s.c.GetServicePropertyContext(ctx, name, "MainPID"); err == nil {
		if pid, ok := sp.Value.Value().(uint32); ok {
			st.MainPID = int(pid)
		}
	}
	return st, nil
}

// StopUnit stops a unit and waits for the stop job.
func (s *Systemd) StopUnit(ctx context.Context, name string) error {
	ch := make(chan string, 1)
	if _, err := s.c.StopUnitContext(ctx, name, "replace", ch); err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil
		}
		return err
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ResetFailedUnit forgets a failed unit so its name can be used again.
func (s *Systemd) ResetFailedUnit(ctx context.Context, name string) error {
	err := s.c.ResetFailedUnitContext(ctx, name)
	var de dbus.Error
	if errors.As(err, &de) && (de.Name == "org.freedesktop.systemd1.NoSuchUnit" || de.Name == "org.freedesktop.systemd1.LoadFailed") {
		return nil
	}
	return err
}

// KillUnit sends sig to the unit's processes ("main" or "all").
func (s *Systemd) KillUnit(ctx context.Context, name, who string, sig int32) error {
	return s.c.KillUnitWithTarget(ctx, name, sd.Who(who), sig)
}

// StartUnit starts a unit from its file and waits for the job; it
// returns the job result.
func (s *Systemd) StartUnit(ctx context.Context, name string) (string, error) {
	ch := make(chan string, 1)
	if _, err := s.c.StartUnitContext(ctx, name, "fail", ch); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Reload makes systemd read unit files again (daemon-reload).
func (s *Systemd) Reload(ctx context.Context) error { return s.c.ReloadContext(ctx) }

// EnableUnitFiles enables units as their [Install] sections say.
func (s *Systemd) EnableUnitFiles(ctx context.Context, names []string) error {
	_, _, err := s.c.EnableUnitFilesContext(ctx, names, false, true)
	return err
}

// DisableUnitFiles undoes EnableUnitFiles.
func (s *Systemd) DisableUnitFiles(ctx context.Context, names []string) error {
	_, err := s.c.DisableUnitFilesContext(ctx, names, false)
	return err
}

// GetUnitFileState is "enabled", "disabled", ... or "" for no unit file.
func (s *Systemd) GetUnitFileState(ctx context.Context, name string) string {
	p, err := s.c.GetUnitPropertyContext(ctx, name, "UnitFileState")
	if err != nil {
		return ""
	}
	v, _ := p.Value.Value().(string)
	return v
}

// SetUnitProperties changes properties of a running unit, for now
// (runtime) or also in the unit's drop-ins.
func (s *Systemd) SetUnitProperties(ctx context.Context, name string, runtime bool, props []UnitProperty) error {
	var ps []sd.Property
	for _, p := range props {
		ps = append(ps, prop(p.Name, p.Value))
	}
	return s.c.SetUnitPropertiesContext(ctx, name, runtime, ps...)
}

// UnitUsage is what a unit uses now.
type UnitUsage struct {
	MemoryCurrent uint64 // bytes; max uint64 when unknown
	TasksCurrent  uint64
	CPUUsageNSec  uint64
}

// GetUnitUsage reads a service's current resource use.
func (s *Systemd) GetUnitUsage(ctx context.Context, name string) (UnitUsage, error) {
	var u UnitUsage
	p, err := s.c.GetUnitTypePropertiesContext(ctx, name, "Service")
	if err != nil {
		return u, err
	}
	u.MemoryCurrent, _ = p["MemoryCurrent"].(uint64)
	u.TasksCurrent, _ = p["TasksCurrent"].(uint64)
	u.CPUUsageNSec, _ = p["CPUUsageNSec"].(uint64)
	return u, nil
}
