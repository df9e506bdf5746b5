package machine

import (
	"errors"
	"os"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// stageSettings writes the settings file of a boot and returns what puts
// the previous one back (or removes it, where there was none), for a boot
// that fails: options are remembered only with the boot that succeeded.
func (m *Manager) stageSettings(name, text string) (restore func(), err error) {
	path := m.settingsPath(name)
	prev, err := os.ReadFile(path)
	had := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := host.WriteFileAtomic(path, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return func() {
		var err error
		if had {
			err = host.WriteFileAtomic(path, prev, 0o644)
		} else if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		if err != nil {
			logrus.Warnf("%s: could not put back the options of its last boot in %s: %v", name, path, err)
		}
	}, nil
}
