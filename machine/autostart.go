package machine

import (
	"context"
	"fmt"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// autostart returns the backend's Autostart, or an error saying why this
// host cannot start machines with itself.
func (m *Manager) autostart() (backend.Autostart, error) {
	a, ok := m.Backend.(backend.Autostart)
	if !ok {
		return nil, fmt.Errorf("%w: starting machines with the host needs systemd as PID 1 (this host: %s)", ErrNoBackend, m.Why)
	}
	return a, nil
}

// enabledSpec is the unit of machine name with its remembered options.
func (m *Manager) enabledSpec(name string) (backend.StartSpec, error) {
	opts, err := m.Options(name)
	if err != nil {
		return backend.StartSpec{}, err
	}
	limits, err := m.Limits(name)
	if err != nil {
		return backend.StartSpec{}, err
	}
	return m.startSpec(name, opts, limits, 2*time.Minute)
}

// Unit renders the unit file that enable installs, for review.
func (m *Manager) Unit(name string) (string, error) {
	if err := m.checkName(name, true); err != nil {
		return "", err
	}
	a, err := m.autostart()
	if err != nil {
		return "", err
	}
	spec, err := m.enabledSpec(name)
	if err != nil {
		return "", err
	}
	return a.UnitFile(spec)
}

// Enable installs and enables a unit so the machine boots with the host,
// with its remembered options and limits.
func (m *Manager) Enable(ctx context.Context, name string) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	a, err := m.autostart()
	if err != nil {
		return err
	}
	opts, err := m.Options(name)
	if err != nil {
		return err
	}
	// The settings file is what machinectl reads too: make sure it exists.
	text, err := opts.SettingsText()
	if err != nil {
		return err
	}
	if err := host.WriteFileAtomic(m.settingsPath(name), []byte(text), 0o644); err != nil {
		return err
	}
	if _, err := m.prepareNetwork(ctx, name, opts); err != nil {
		return err
	}
	m.linkImage(name)
	spec, err := m.enabledSpec(name)
	if err != nil {
		return err
	}
	return a.Install(ctx, spec)
}

// Disable undoes Enable; a running machine keeps running.
func (m *Manager) Disable(ctx context.Context, name string) error {
	if err := m.checkRootAndName(name, true); err != nil {
		return err
	}
	a, err := m.autostart()
	if err != nil {
		return err
	}
	// Its sockets go too: each would boot it on a connection.
	if err := m.removeSockets(ctx, name); err != nil {
		return err
	}
	return a.Uninstall(ctx, name)
}

// AutostartState reports whether machine name boots with the host:
// "enabled" or "disabled" ("" where the host cannot start machines).
func (m *Manager) AutostartState(ctx context.Context, name string) string {
	a, err := m.autostart()
	if err != nil {
		return ""
	}
	return a.UnitFileState(ctx, name)
}

// SetLimits changes a machine's resource limits: remembered for the next
// boot, and applied now when it runs (a Cleared limit, NoLimit, is lifted
// too). Limits this host cannot apply are refused whether the machine
// runs or not, so a stopped machine is not left unable to boot.
func (m *Manager) SetLimits(ctx context.Context, name string, f LimitFlags) (backend.Limits, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return backend.Limits{}, err
	}
	// No boot meanwhile: it would start with the limits being changed.
	booting, err := m.bootLock(name)
	if err != nil {
		return backend.Limits{}, err
	}
	defer booting.Unlock()
	cur, err := m.Limits(name)
	if err != nil {
		return cur, err
	}
	l, err := f.Apply(cur)
	if err != nil {
		return cur, err
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		if err := m.Backend.SetLimits(ctx, name, l); err != nil {
			return cur, err
		}
		if err := m.liftLimits(ctx, name, cur.Cleared(l)); err != nil {
			return cur, err
		}
	} else if !stopped(err) {
		return cur, err
	} else if err := m.checkLimitsFit(l); err != nil {
		return cur, err
	}
	return l, m.saveLimits(name, l)
}

// NetworkUp configures the host end of a running machine's veth and the
// pool's masquerading, and starts its loopback forwards; the machine's
// units run it once the machine is up (a failure there is logged, and the
// machine keeps running). A veth that is not the pair nspawn made for the
// machine is refused.
func (m *Manager) NetworkUp(ctx context.Context, name string) error {
	if err := m.running(ctx, name); err != nil {
		return err
	}
	opts, err := m.Options(name)
	if err != nil {
		return err
	}
	if err := m.startPortsCompanion(ctx, name, opts); err != nil {
		logrus.Warnf("%s: the forwarded ports do not answer on 127.0.0.1 and ::1: %v", name, err)
	}
	if !m.ownVeth(opts) {
		return nil
	}
	l, err := m.machineLink(ctx, name)
	if err != nil {
		return err
	}
	// The caller names the machine (nsbox: __network-up web: ...).
	if err := m.hostEndUp(ctx, name, l, opts.App != nil); err != nil {
		return err
	}
	m.masquerade(ctx)
	m.publishName(ctx, name)
	return nil
}
