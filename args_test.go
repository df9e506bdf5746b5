package main

import (
	"io"
	"os"
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
		if got, err := hoistFlags(app, tc.in); err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("hoistFlags(%q)\n got %q, %v\nwant %q", tc.in, got, err, tc.want)
		}
	}
}

// A value-taking flag with nothing after it must not take the machine
// name as its value: "kill web --signal" is "--signal needs a value", not
// "unknown signal web".
func TestFlagWithoutValue(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"kill", "web", "--signal"}, "--signal"},
		{[]string{"logs", "web", "-n"}, "-n"},
		{[]string{"create", "web", "--release"}, "--release"},
		{[]string{"boot", "web", "--bind"}, "--bind"},
		{[]string{"boot", "web", "--port"}, "--port"},
		{[]string{"shell", "web", "--uid", "--", "id"}, "--uid"},
		{[]string{"logs", "web", "-n", "-f"}, "-n"},
		{[]string{"list", "--output"}, "--output"},
		{[]string{"list", "--root-dir"}, "--root-dir"},
		{[]string{"--root-dir"}, "--root-dir"},
		{[]string{"cache", "list", "-o"}, "-o"},
	} {
		r, w, _ := os.Pipe()
		old := os.Stderr
		os.Stderr = w
		code := run(append([]string{"nsbox"}, tc.args...))
		w.Close()
		os.Stderr = old
		msg, _ := io.ReadAll(r)
		want := "nsbox: flag " + tc.flag + " needs a value\n"
		if code != exitUsage || string(msg) != want {
			t.Errorf("%q: exit %d, %q; want %d, %q", tc.args, code, msg, exitUsage, want)
		}
	}
	// Values that look like flags but are none are values.
	app := newApp()
	for _, args := range [][]string{
		{"nsbox", "kill", "web", "--signal", "-9"},
		{"nsbox", "shell", "web", "--", "ls", "--color"},
		{"nsbox", "shell", "web", "--", "sh", "-c"},
		{"nsbox", "logs", "web", "--since=-1h"},
	} {
		if _, err := hoistFlags(app, args); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// Usage errors exit 2, as the README promises: unknown commands and
// subcommands at any level, help on an unknown topic, a bad --backend.
func TestUsageErrorsExit2(t *testing.T) {
	root := t.TempDir()
	for _, args := range [][]string{
		{"bogus"},
		{"cache", "lst"},
		{"cache", "-q", "lst"},
		{"help", "bogus"},
		{"--root-dir", root, "--backend", "bogus", "list"},
		{"--root-dir", root, "list", "--backend", "bogus"},
		{"stop", "web", "--timeout", "soon"},
		{"logs", "web", "-n", "many"},
		{"list", "-o", "yaml"},
	} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	// Help is no unknown command. (Checked without running it: urfave/cli
	// keeps its help command in a global that running help changes.)
	app := newApp()
	for _, args := range [][]string{{"cache", "--help"}, {"help", "cache"}, {"cache", "list", "--help"}, {"cache", "help"}, {"cache"}, {"-q", "cache", "list"}} {
		if name, unknown := unknownCommand(app, append([]string{"nsbox"}, args...)); unknown {
			t.Errorf("%q: %q taken for an unknown command", args, name)
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
