package machine

import (
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/machined"
)

// UnitForReview renders the unit file that nsbox enable installs on a
// systemd host, on any host: printing text needs no systemd. Where the
// backend cannot start machines with the host (the direct backend), the
// unit is rendered as the machined backend would install it, with the
// same remembered options and limits.
func (m *Manager) UnitForReview(name string) (string, error) {
	if _, ok := m.Backend.(backend.Autostart); ok {
		return m.Unit(name)
	}
	sd := &Manager{Paths: m.Paths, Backend: &machined.Backend{Runner: m.Runner}, Why: m.Why, Runner: m.Runner, Pool: m.Pool, Self: m.Self}
	return sd.Unit(name)
}
