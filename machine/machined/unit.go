package machined

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// escapeSpecifiers writes "%" as "%%", so that systemd, which expands
// specifiers such as %n in most settings of a unit file, reads the text as
// it is.
func escapeSpecifiers(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// quoteExec quotes one command line word for ExecStart= and its kin, by
// the rules of systemd.service(5) and systemd.syntax(7): specifiers are
// expanded on the whole line first ("%" is written "%%"), environment
// variables when the command runs ("$" is written "$$"), and the line is
// then split into words with quotes and C escapes. A word with a space,
// quote, backslash, semicolon or control character is double-quoted, with
// backslash and double quote escaped and control characters written as
// \xNN, so no value can end the line or start a word of its own.
// go-systemd's unit package writes values as they are: this is what it
// lacks.
func quoteExec(s string) string {
	s = escapeSpecifiers(s)
	s = strings.ReplaceAll(s, "$", "$$")
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return strings.ContainsRune(" \t\"'\\;", r) || r < 0x20 || r == 0x7f
	}) {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// execLine is argv as the value of ExecStart= and its kin, each word
// quoted (quoteExec).
func execLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = quoteExec(a)
	}
	return strings.Join(q, " ")
}

// quotePath quotes a path for a directive that takes a list of paths with
// quotes and specifiers (RequiresMountsFor=): "%" is doubled, and a path
// with a space, quote or backslash is double-quoted with the last two
// escaped (systemd unquotes these without C escapes).
func quotePath(p string) string {
	p = escapeSpecifiers(p)
	if !strings.ContainsAny(p, " \"'\\") {
		return p
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(p) + `"`
}

// checkStartSpec refuses a spec that a unit file cannot carry: a name
// that is not a machine name, or a control character in the root or any
// word of the commands (a newline there would be a line of its own, such
// as ExecStartPre=).
func checkStartSpec(spec backend.StartSpec) error {
	if err := backend.ValidateName(spec.Name); err != nil {
		return err
	}
	if err := backend.ValidateText("root directory", spec.Root); err != nil {
		return err
	}
	for _, argv := range [][]string{spec.Argv, spec.PostStart, spec.PreStart, spec.StopPost} {
		for _, a := range argv {
			if err := backend.ValidateText("argument", a); err != nil {
				return err
			}
		}
	}
	for _, argv := range [][]string{spec.Argv, spec.PostStart, spec.PreStart, spec.StopPost} {
		// systemd reads these as prefixes of the program (+ runs it with
		// full privileges, @ sets its argv[0]).
		if len(argv) > 0 && (argv[0] == "" || strings.ContainsRune("-@+!:|", rune(argv[0][0]))) {
			return fmt.Errorf("%w: program %q", backend.ErrInvalidOption, argv[0])
		}
	}
	if len(spec.Argv) == 0 {
		return fmt.Errorf("%w: no command to start", backend.ErrInvalidOption)
	}
	return nil
}

// UnitFile implements Autostart: the machine's service as a unit file,
// the same settings as the transient unit nsbox boot starts, plus what
// autostart needs. A spec with a control character anywhere is refused
// and nothing is rendered.
func (m *Backend) UnitFile(spec backend.StartSpec) (string, error) {
	if err := checkStartSpec(spec); err != nil {
		return "", fmt.Errorf("unit of %q: %w", spec.Name, err)
	}
	opts := unitOptions(spec)
	if err := backend.CheckUnitOptions(opts); err != nil {
		return "", fmt.Errorf("unit of %q: %w", spec.Name, err)
	}
	body, err := io.ReadAll(unit.Serialize(opts))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("# Written by nsbox enable %s; nsbox rewrites it when the machine's options change.\n", spec.Name) + string(body), nil
}

// unitOptions are the settings of spec's unit file, in the order written;
// every value is quoted or escaped for the directive it is in.
func unitOptions(spec backend.StartSpec) []*unit.UnitOption {
	s := ServiceSpec(spec)
	opt := unit.NewUnitOption
	opts := []*unit.UnitOption{
		opt("Unit", "Description", escapeSpecifiers(s.Description)),
		opt("Unit", "Documentation", "man:systemd-nspawn(1)"),
		opt("Unit", "PartOf", "machines.target"),
		opt("Unit", "Before", "machines.target"),
		opt("Unit", "After", "network.target systemd-resolved.service modprobe@tun.service modprobe@loop.service"),
		opt("Unit", "RequiresMountsFor", quotePath(spec.Root)),
		// The commands as nsbox runs them, quoted here for a unit file (not
		// ServiceSpec's, which are for a transient unit).
		opt("Service", "ExecStart", execLine(spec.Argv)),
	}
	if len(spec.PreStart) > 0 {
		opts = append(opts, opt("Service", "ExecStartPre", execLine(spec.PreStart)))
	}
	if len(spec.PostStart) > 0 {
		opts = append(opts, opt("Service", "ExecStartPost", "-"+execLine(spec.PostStart)))
	}
	if len(spec.StopPost) > 0 {
		opts = append(opts, opt("Service", "ExecStopPost", "-"+execLine(spec.StopPost)))
	}
	opts = append(opts,
		opt("Service", "Type", s.Type),
		opt("Service", "Slice", s.Slice),
		opt("Service", "Delegate", "yes"),
		opt("Service", "IOAccounting", "yes"),
		opt("Service", "KillMode", s.KillMode),
		opt("Service", "Restart", "on-failure"),
		opt("Service", "RestartForceExitStatus", "133"),
		opt("Service", "SuccessExitStatus", "133"),
		opt("Service", "WatchdogSec", "3min"),
		opt("Service", "TimeoutStartSec", fmt.Sprint(spec.Timeout.Seconds())),
		opt("Service", "DevicePolicy", s.DevicePolicy),
	)
	for _, d := range s.DeviceAllow {
		opts = append(opts, opt("Service", "DeviceAllow", d[0]+" "+d[1]))
	}
	opts = append(opts, spec.Limits.UnitOptions("Service")...)
	return append(opts, opt("Install", "WantedBy", "machines.target"))
}

// unitPath is where an enabled machine's unit file lives.
func (m *Backend) unitPath(name string) string {
	return filepath.Join(m.unitDir(), AutostartUnitName(name))
}

// HasUnitFile reports whether the machine is enabled (has a unit file).
func (m *Backend) HasUnitFile(name string) bool {
	_, err := os.Stat(m.unitPath(name))
	return err == nil
}

// writeUnit writes the unit file when its text changed, and reloads.
func (m *Backend) writeUnit(ctx context.Context, spec backend.StartSpec) error {
	text, err := m.UnitFile(spec)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(m.unitPath(spec.Name)); err == nil && string(cur) == text {
		return nil
	}
	if err := host.WriteFileAtomic(m.unitPath(spec.Name), []byte(text), 0o644); err != nil {
		return err
	}
	return m.Systemd.Reload(ctx)
}

// WantsLink is the link that enables a machine's unit: what systemctl
// enable makes from WantedBy=machines.target.
func (m *Backend) WantsLink(name string) string {
	return filepath.Join(filepath.Dir(m.unitPath(name)), "machines.target.wants", AutostartUnitName(name))
}

// Install implements Autostart: the unit file, linked into
// machines.target, which is itself enabled in multi-user.target. A machine
// running now keeps running; the unit file serves from its next start.
func (m *Backend) Install(ctx context.Context, spec backend.StartSpec) error {
	if err := m.writeUnit(ctx, spec); err != nil {
		return err
	}
	link := m.WantsLink(spec.Name)
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
func (m *Backend) Uninstall(ctx context.Context, name string) error {
	if err := os.Remove(m.WantsLink(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
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
func (m *Backend) dropDisabledUnit(ctx context.Context, name string) (bool, error) {
	if !m.HasUnitFile(name) {
		return false, nil
	}
	if _, err := os.Lstat(m.WantsLink(name)); err == nil {
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
func (m *Backend) Forget(ctx context.Context, name string) {
	_ = os.Remove(m.WantsLink(name))
	if err := os.Remove(m.unitPath(name)); err == nil {
		_ = m.Systemd.Reload(ctx)
	}
}

// UnitFileState implements Autostart.
func (m *Backend) UnitFileState(ctx context.Context, name string) string {
	if _, err := os.Lstat(m.WantsLink(name)); err == nil && m.HasUnitFile(name) {
		return "enabled"
	}
	return "disabled"
}

var _ backend.Autostart = (*Backend)(nil)

// dropInPath is nsbox's drop-in for the machine's systemd-nspawn@.service,
// the unit machinectl start runs.
func (m *Backend) dropInPath(name string) string {
	return filepath.Join(m.unitDir(), "systemd-nspawn@"+name+".service.d", "nsbox-storage.conf")
}

// SetStartHooks implements backend.StartHooks with a drop-in for
// systemd-nspawn@NAME.service: machinectl start of an overlay machine
// mounts its tree first and unmounts it after the stop, as nsbox boot and
// its own units do. The file is written only when its text changes.
func (m *Backend) SetStartHooks(ctx context.Context, name string, pre, post []string) error {
	path := m.dropInPath(name)
	if len(pre) == 0 && len(post) == 0 {
		if err := os.Remove(path); err != nil {
			return nil
		}
		_ = os.Remove(filepath.Dir(path))
		return m.Systemd.Reload(ctx)
	}
	spec := backend.StartSpec{Name: name, Root: "/", Argv: []string{"true"}, PreStart: pre, StopPost: post}
	if err := checkStartSpec(spec); err != nil {
		return err
	}
	opts := []*unit.UnitOption{
		unit.NewUnitOption("Service", "ExecStartPre", execLine(pre)),
		unit.NewUnitOption("Service", "ExecStopPost", "-"+execLine(post)),
	}
	body, err := io.ReadAll(unit.Serialize(opts))
	if err != nil {
		return err
	}
	text := "# Written by nsbox: " + name + " is an overlay machine, mounted around its start.\n" + string(body)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == text {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := host.WriteFileAtomic(path, []byte(text), 0o644); err != nil {
		return err
	}
	return m.Systemd.Reload(ctx)
}
