package main

import (
	"errors"
	"testing"
)

func TestParseDestination(t *testing.T) {
	for _, tc := range []struct {
		in, host, name string
		port           int
	}{
		{"web2", "web2", "web", 0},
		{"root@web2", "root@web2", "web", 0},
		{"root@web2:copy", "root@web2", "copy", 0},
		{"web2:copy.v2", "web2", "copy.v2", 0},
		{"root@[2001:db8::7]", "root@[2001:db8::7]", "web", 0},
		{"root@[2001:db8::7]:copy", "root@[2001:db8::7]:2222", "copy", 2222},
		{"[::1]:copy", "[::1]", "copy", 0},
		{"h:copy", "h:2222", "copy", 2222},
	} {
		h, name, err := parseDestination(tc.in, "web", tc.port)
		if err != nil || h.String() != tc.host || name != tc.name {
			t.Errorf("%q: %v %q %v, want %q %q", tc.in, h, name, err, tc.host, tc.name)
		}
	}
	for _, bad := range []string{
		"", "h:", "-oProxyCommand=x", "h:../etc", "h:a/b", "h:a;b", "h:$(id)", "h:a b", "h:-rf",
		"2001:db8::7", "root@[::1]x", "h:copy:2222", "user@@h", "h\n:x", "h: x",
	} {
		_, _, err := parseDestination(bad, "web", 0)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
	if _, _, err := parseDestination("h", "web", 70000); err == nil {
		t.Errorf("--port 70000 taken")
	}
}
