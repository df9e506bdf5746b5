package machine

import (
	"context"
	"sort"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
)

// Event is a change in the machines: one appears (created), starts, stops
// or disappears (removed). The JSON shape is documented in docs/json.md.
type Event struct {
	Time    time.Time `json:"time"`
	Machine string    `json:"machine"`
	Event   string    `json:"event"` // "created", "started", "stopped", "removed"
	State   string    `json:"state"` // the machine's state after it
	Managed bool      `json:"managed"`
}

type seen struct {
	state   string
	managed bool
}

// snapshot reads every machine's state, without the costly parts of list
// (disk usage, addresses).
func (m *Manager) snapshot(ctx context.Context) (map[string]seen, error) {
	running, err := m.Backend.List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]seen{}
	for _, i := range mergeList(m.Paths, m.onDisk(), running, m.Backend.Name()) {
		out[i.Name] = seen{state: i.State, managed: i.Managed}
	}
	return out, nil
}

// diffEvents lists what changed from before to now, in name order.
func diffEvents(before, now map[string]seen, at time.Time) []Event {
	var out []Event
	for name, n := range now {
		b, had := before[name]
		switch {
		case !had && n.managed:
			out = append(out, Event{at, name, "created", n.state, true})
			if n.state == "running" {
				out = append(out, Event{at, name, "started", n.state, true})
			}
		case !had:
			out = append(out, Event{at, name, "started", n.state, false})
		case b.state != n.state && n.state == "running":
			out = append(out, Event{at, name, "started", n.state, n.managed})
		case b.state != n.state:
			out = append(out, Event{at, name, "stopped", n.state, n.managed})
		}
	}
	for name, b := range before {
		if _, ok := now[name]; ok {
			continue
		}
		if b.state == "running" {
			out = append(out, Event{at, name, "stopped", "stopped", b.managed})
		}
		if b.managed {
			out = append(out, Event{at, name, "removed", "gone", true})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Machine < out[j].Machine })
	return out
}

// Events reports changes as they happen until ctx ends. The backend's
// own notifications (machined's MachineNew and MachineRemoved) wake it at
// once; otherwise it looks every interval.
func (m *Manager) Events(ctx context.Context, interval time.Duration, emit func(Event)) error {
	before, err := m.snapshot(ctx)
	if err != nil {
		return err
	}
	var wake <-chan struct{}
	if w, ok := m.Backend.(backend.Watcher); ok {
		wake = w.Changes(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(interval):
		}
		now, err := m.snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, e := range diffEvents(before, now, time.Now()) {
			emit(e)
		}
		before = now
	}
}
