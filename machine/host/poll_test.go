package host

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	ctx := context.Background()
	n := 0
	var waits []time.Duration
	err := Poll(ctx, func(e time.Duration) time.Duration { waits = append(waits, e); return time.Millisecond }, func() (bool, error) {
		n++
		return n == 3, nil
	})
	if err != nil || n != 3 || len(waits) != 2 || waits[1] < waits[0] {
		t.Errorf("done on the third call: err %v, %d calls, waits %v", err, n, waits)
	}
	boom := errors.New("boom")
	if err := Poll(ctx, Every(time.Millisecond), func() (bool, error) { return false, boom }); err != boom {
		t.Errorf("a failing check: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Poll(short, Every(time.Hour), func() (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Errorf("the context's end: %v after %v", err, time.Since(start))
	}
}
