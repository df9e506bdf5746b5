package machine

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
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
	if err := writeFileAtomic(path, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return func() {
		var err error
		if had {
			err = writeFileAtomic(path, prev, 0o644)
		} else if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		if err != nil {
			logrus.Warnf("%s: could not put back the options of its last boot in %s: %v", name, path, err)
		}
	}, nil
}

// bootStartKey is the context key of the time a boot began.
type bootStartKey struct{}

// withBootStart tells Backend.LogTail, through ctx, when the boot whose
// log it reads began: lines older than that are a previous run's.
func withBootStart(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, bootStartKey{}, t)
}

// bootStartOf is the time withBootStart put in ctx.
func bootStartOf(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(bootStartKey{}).(time.Time)
	return t, ok
}

// bootClock is the time now as the kernel stamps files: its coarse clock,
// which may be a tick behind the precise one. A file written after this
// call never looks older than the value returned.
func bootClock() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts); err != nil {
		return time.Now().Add(-10 * time.Millisecond)
	}
	return time.Unix(ts.Unix())
}
