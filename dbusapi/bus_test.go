package dbusapi

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// slowObject answers every call from a goroutine of its own after a while,
// as a bus does, and counts the calls waiting for a reply at once.
type slowObject struct {
	dbus.BusObject // the methods callAll does not use
	mu             sync.Mutex
	waiting, most  int
}

func (o *slowObject) GoWithContext(ctx context.Context, method string, flags dbus.Flags, ch chan *dbus.Call, args ...any) *dbus.Call {
	o.mu.Lock()
	o.waiting++
	o.most = max(o.most, o.waiting)
	o.mu.Unlock()
	call := &dbus.Call{Method: method, Args: args, Done: ch}
	go func() {
		time.Sleep(time.Millisecond)
		if n := args[0].(int); n%5 == 0 {
			call.Err = dbus.Error{Name: "org.freedesktop.machine1.NoSuchMachine"}
		} else {
			call.Body = []any{fmt.Sprint("answer ", n)}
		}
		o.mu.Lock()
		o.waiting--
		o.mu.Unlock()
		ch <- call
	}()
	return call
}

func TestCallAll(t *testing.T) {
	for _, n := range []int{0, 1, maxInFlight, 3*maxInFlight + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			obj := &slowObject{}
			calls := make([]batchCall, n)
			for i := range calls {
				calls[i] = batchCall{obj: obj, method: "m", args: []any{i}}
			}
			got := callAll(context.Background(), calls)
			if len(got) != n {
				t.Fatalf("%d calls back, want %d", len(got), n)
			}
			for i, c := range got {
				var s string
				err := c.Store(&s)
				if i%5 == 0 {
					if dbusErrorName(err) != "org.freedesktop.machine1.NoSuchMachine" {
						t.Errorf("call %d: %q, %v; want its error", i, s, err)
					}
				} else if err != nil || s != fmt.Sprint("answer ", i) {
					t.Errorf("call %d: %q, %v; want its own answer", i, s, err)
				}
			}
			if obj.waiting != 0 {
				t.Errorf("%d calls still waiting", obj.waiting)
			}
			if obj.most > maxInFlight {
				t.Errorf("%d calls waited at once, more than %d", obj.most, maxInFlight)
			}
			if n >= maxInFlight && obj.most < 2 {
				t.Errorf("calls went one at a time")
			}
		})
	}
}
