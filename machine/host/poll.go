package host

import (
	"context"
	"time"
)

// Poll calls check until it reports done or fails, waiting between calls
// as wait says for the time since the first call, and gives up with
// ctx.Err() once ctx ends: the one way nsbox waits for a state it cannot
// be told about (a machine's boot, a veth, a lock). A deadline is a ctx
// with a timeout.
func Poll(ctx context.Context, wait func(elapsed time.Duration) time.Duration, check func() (done bool, err error)) error {
	start := time.Now()
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		t := time.NewTimer(wait(time.Since(start)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Every waits d between the calls of Poll.
func Every(d time.Duration) func(time.Duration) time.Duration {
	return func(time.Duration) time.Duration { return d }
}
