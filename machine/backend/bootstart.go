package backend

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// bootStartKey is the context key of the time a boot began.
type bootStartKey struct{}

// WithBootStart tells Backend.LogTail, through ctx, when the boot whose
// log it reads began: lines older than that are a previous run's.
func WithBootStart(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, bootStartKey{}, t)
}

// BootStartOf is the time WithBootStart put in ctx.
func BootStartOf(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(bootStartKey{}).(time.Time)
	return t, ok
}

// BootClock is the time now as the kernel stamps files: its coarse clock,
// which may be a tick behind the precise one. A file written after this
// call never looks older than the value returned.
func BootClock() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts); err != nil {
		return time.Now().Add(-10 * time.Millisecond)
	}
	return time.Unix(ts.Unix())
}
