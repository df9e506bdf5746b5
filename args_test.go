package main

import (
	"reflect"
	"testing"
)

func TestHoistFlags(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"nsbox", "create", "web", "--release", "trixie"}, []string{"nsbox", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "--root-dir", "/x", "boot", "web", "--bind", "/a:/b", "--console"}, []string{"nsbox", "--root-dir", "/x", "boot", "--bind", "/a:/b", "--console", "web"}},
		{[]string{"nsbox", "shell", "web", "--uid", "u", "--", "ls", "-l"}, []string{"nsbox", "shell", "--uid", "u", "web", "--", "ls", "-l"}},
		{[]string{"nsbox", "shell", "web", "--", "sh", "--version"}, []string{"nsbox", "shell", "web", "--", "sh", "--version"}},
		{[]string{"nsbox", "list", "--output=json"}, []string{"nsbox", "list", "--output=json"}},
		{[]string{"nsbox", "-v"}, []string{"nsbox", "-v"}},
		{[]string{"nsbox", "cache", "list", "--output", "json"}, []string{"nsbox", "cache", "list", "--output", "json"}},
		{[]string{"nsbox", "cache", "remove", "bookworm", "-q"}, []string{"nsbox", "-q", "cache", "remove", "bookworm"}},
		{[]string{"nsbox", "create", "web", "-q", "--release", "trixie", "--root-dir", "/x"}, []string{"nsbox", "-q", "--root-dir", "/x", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "-v", "list", "--output", "json", "--debug"}, []string{"nsbox", "-v", "--debug", "list", "--output", "json"}},
	} {
		if got := hoistFlags(app, tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("hoistFlags(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"TERM": 15, "SIGKILL": 9, "15": 15, "RTMIN+4": 38, "SIGRTMIN+3": 37, "int": 2} {
		got, err := parseSignal(in)
		if err != nil || int(got) != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"NOPE", "0", "99", "RTMIN+40"} {
		if _, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) accepted", bad)
		}
	}
}
