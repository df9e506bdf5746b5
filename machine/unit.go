package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Autostart is what a backend that can start machines with the host does:
// installing a unit file. Only the machined backend implements it.
type Autostart interface {
	UnitText(spec StartSpec) string
	Install(ctx context.Context, spec StartSpec) error
	Uninstall(ctx context.Context, name string) error
	UnitFileState(ctx context.Context, name string) string
	// Forget removes every trace of the machine's unit (nsbox remove).
	Forget(ctx context.Context, name string)
}

// quoteExec quotes one command line word for a unit file.
func quoteExec(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	s = strings.ReplaceAll(s, "$", "$$")
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func execLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = quoteExec(a)
	}
	return strings.Join(q, " ")
}

// UnitText renders the machine's service as a unit file: the same settings
// as the transient unit nsbox boot starts, plus what autostart needs.
func (m *Machined) UnitText(spec StartSpec) string {
	s := ServiceSpec(spec)
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by nsbox enable %s; nsbox rewrites it when the machine's options change.\n", spec.Name)
	fmt.Fprintf(&b, "[Unit]\nDescription=%s\nDocumentation=man:systemd-nspawn(1)\n", s.Description)
	b.WriteString("PartOf=machines.target\nBefore=machines.target\nAfter=network.target systemd-resolved.service modprobe@tun.service modprobe@loop.service\n")
	fmt.Fprintf(&b, "RequiresMountsFor=%s\n", spec.Root)
	b.WriteString("\n[Service]\n")
	fmt.Fprintf(&b, "ExecStart=%s\n", execLine(s.ExecStart))
	if len(s.ExecStartPost) > 0 {
		fmt.Fprintf(&b, "ExecStartPost=-%s\n", execLine(s.ExecStartPost))
	}
	fmt.Fprintf(&b, "Type=%s\nSlice=%s\nDelegate=yes\nKillMode=%s\nRestart=on-failure\n", s.Type, s.Slice, s.KillMode)
	b.WriteString("RestartForceExitStatus=133\nSuccessExitStatus=133\nWatchdogSec=3min\nTimeoutStartSec=" + fmt.Sprint(spec.Timeout.Seconds()) + "\n")
	fmt.Fprintf(&b, "DevicePolicy=%s\n", s.DevicePolicy)
	for _, d := range s.DeviceAllow {
		fmt.Fprintf(&b, "DeviceAllow=%s %s\n", d[0], d[1])
	}
	for _, l := range spec.Limits.UnitLines() {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n[Install]\nWantedBy=machines.target\n")
	return b.String()
}

// unitPath is where an enabled machine's unit file lives.
func (m *Machined) unitPath(name string) string {
	dir := m.UnitDir
	if dir == "" {
		dir = "/etc/systemd/system"
	}
	return filepath.Join(dir, AutostartUnitName(name))
}

// hasUnitFile reports whether the machine is enabled (has a unit file).
func (m *Machined) hasUnitFile(name string) bool {
	_, err := os.Stat(m.unitPath(name))
	return err == nil
}

// writeUnit writes the unit file when its text changed, and reloads.
func (m *Machined) writeUnit(ctx context.Context, spec StartSpec) error {
	text := m.UnitText(spec)
	if cur, err := os.ReadFile(m.unitPath(spec.Name)); err == nil && string(cur) == text {
		return nil
	}
	if err := writeFileAtomic(m.unitPath(spec.Name), []byte(text), 0o644); err != nil {
		return err
	}
	return m.Systemd.Reload(ctx)
}

// wantsLink is the link that enables a machine's unit: what systemctl
// enable makes from WantedBy=machines.target.
func (m *Machined) wantsLink(name string) string {
	return filepath.Join(filepath.Dir(m.unitPath(name)), "machines.target.wants", AutostartUnitName(name))
}

// Install implements Autostart: the unit file, linked into
// machines.target, which is itself enabled in multi-user.target. A machine
// running now keeps running; the unit file serves from its next start.
func (m *Machined) Install(ctx context.Context, spec StartSpec) error {
	if err := m.writeUnit(ctx, spec); err != nil {
		return err
	}
	link := m.wantsLink(spec.Name)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	if cur, err := os.Readlink(link); err != nil || cur != m.unitPath(spec.Name) {
		_ = os.Remove(link)
		if err := os.Symlink(m.unitPath(spec.Name), link); err != nil {
			return fmt.Errorf("enable %s: %w", AutostartUnitName(spec.Name), err)
		}
	}
	if err := m.Systemd.EnableUnitFiles(ctx, []string{"machines.target"}); err != nil {
		return fmt.Errorf("enable machines.target: %w", err)
	}
	return m.Systemd.Reload(ctx)
}

// Uninstall implements Autostart: the machine no longer starts with the
// host. A machine running from the unit keeps its unit file until it
// stops, so that a reboot inside it still restarts it; the next stop or
// boot drops the file (dropDisabledUnit).
func (m *Machined) Uninstall(ctx context.Context, name string) error {
	if err := os.Remove(m.wantsLink(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if dropped, err := m.dropDisabledUnit(ctx, name); err != nil || dropped {
		return err
	}
	return m.Systemd.Reload(ctx)
}

// dropDisabledUnit removes the unit file of a disabled machine once the
// unit is down, so that a disabled machine boots as one never enabled:
// from a transient unit, without the unit file's Restart=on-failure.
// When it removed the file, it has reloaded systemd and reports true.
func (m *Machined) dropDisabledUnit(ctx context.Context, name string) (bool, error) {
	if !m.hasUnitFile(name) {
		return false, nil
	}
	if _, err := os.Lstat(m.wantsLink(name)); err == nil {
		return false, nil // enabled
	}
	st, err := m.Systemd.GetUnitState(ctx, AutostartUnitName(name))
	if err != nil {
		return false, err // systemd answers for a unit it has not loaded: this is a real failure
	}
	if st.ActiveState != "inactive" && st.ActiveState != "failed" && st.ActiveState != "" {
		return false, nil // still running from the file
	}
	if err := os.Remove(m.unitPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, m.Systemd.Reload(ctx)
}

// Forget implements Autostart: the unit file goes with the machine.
func (m *Machined) Forget(ctx context.Context, name string) {
	_ = os.Remove(m.wantsLink(name))
	if err := os.Remove(m.unitPath(name)); err == nil {
		_ = m.Systemd.Reload(ctx)
	}
}

// UnitFileState implements Autostart.
func (m *Machined) UnitFileState(ctx context.Context, name string) string {
	if _, err := os.Lstat(m.wantsLink(name)); err == nil && m.hasUnitFile(name) {
		return "enabled"
	}
	return "disabled"
}

var _ Autostart = (*Machined)(nil)
