package machine

import (
	"syscall"
	"testing"
)

func TestParseSignal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want syscall.Signal
		ok   bool
	}{
		{"TERM", syscall.SIGTERM, true},
		{"SIGKILL", syscall.SIGKILL, true},
		{"int", syscall.SIGINT, true},
		{"sigwinch", syscall.SIGWINCH, true},
		{"15", syscall.SIGTERM, true},
		{"1", syscall.SIGHUP, true},
		{"64", 64, true},
		{"RTMIN+0", 34, true},
		{"RTMIN+4", 38, true},
		{"SIGRTMIN+3", 37, true},
		{"rtmin+30", 64, true},
		{"NOPE", 0, false},
		{"", 0, false},
		{"0", 0, false},
		{"-9", 0, false},
		{"65", 0, false},
		{"99", 0, false},
		{"RTMIN+31", 0, false},
		{"RTMIN+40", 0, false},
		{"RTMIN+-1", 0, false},
		{"RTMIN", 0, false},
		{"SIG", 0, false},
	} {
		got, err := ParseSignal(tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if !tc.ok && err == nil {
			t.Errorf("ParseSignal(%q) = %d, accepted", tc.in, got)
		}
	}
}
