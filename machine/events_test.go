package machine

import (
	"fmt"
	"testing"
	"time"
)

func TestDiffEvents(t *testing.T) {
	at := time.Unix(0, 0)
	before := map[string]seen{
		"a": {"stopped", true}, "b": {"running", true}, "gone": {"running", true}, "f": {"running", false},
	}
	now := map[string]seen{
		"a": {"running", true}, "b": {"stopped", true}, "new": {"stopped", true}, "g": {"running", false},
	}
	var got []string
	for _, e := range diffEvents(before, now, at) {
		got = append(got, fmt.Sprintf("%s:%s:%v", e.Machine, e.Event, e.Managed))
	}
	want := []string{"a:started:true", "b:stopped:true", "f:stopped:false", "g:started:false", "gone:stopped:true", "gone:removed:true", "new:created:true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	if len(diffEvents(now, now, at)) != 0 {
		t.Error("events without a change")
	}
}
