package machine

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestQuoteWordsReadsBack(t *testing.T) {
	for _, argv := range [][]string{
		{"nginx", "-g", "daemon off;"},
		{"sh", "-c", `echo "$HOME" 'x' \n`},
		{"it's", `back\slash\`, "", "pct%n", "dollar$X", "a\tb", `"`, `'`, "ünï"},
	} {
		line := quoteWords(argv)
		got, err := splitWords(line)
		if err != nil || !reflect.DeepEqual(got, argv) {
			t.Errorf("%q -> %s -> %q, %v", argv, line, got, err)
		}
	}
	// What nspawn 252 was seen to read (see the settings written by hand
	// in the commit that brought app machines).
	got, err := splitWords(`'i'"'"'j' e\f "a b" p\q ''`)
	if want := []string{"i'j", `e\f`, "a b", `p\q`, ""}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{`"a\"b"`, `k\ l`, `x\"y"`, `'open`, `"open`} {
		if _, err := splitWords(bad); err == nil {
			t.Errorf("splitWords(%s): no error", bad)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		`nginx -g "daemon off;"`:       {"nginx", "-g", "daemon off;"},
		`sh -c 'echo $HOME'`:           {"sh", "-c", "echo $HOME"},
		`a\ b "c\"d" 'e\f' "g\h$"`:     {"a b", `c"d`, `e\f`, `g\h$`},
		"  python3   -m\thttp.server ": {"python3", "-m", "http.server"},
		`""`:                           {""},
	} {
		got, err := SplitCommand(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("SplitCommand(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "   ", `'x`, `"x`, `x\`} {
		if _, err := SplitCommand(bad); err == nil {
			t.Errorf("SplitCommand(%q): no error", bad)
		}
	}
}

func TestAppSettingsRoundTrip(t *testing.T) {
	o := DefaultBootOptions()
	o.App = &App{Argv: []string{"/app", "--greeting", "hello world", "it's"}, Workdir: "/data", User: "app"}
	text, err := o.SettingsText()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"Boot=no", "ProcessTwo=yes", `Parameters=/app --greeting 'hello world' 'it'"'"'s'`, "WorkingDirectory=/data", "User=app"} {
		if !strings.Contains(text, l+"\n") {
			t.Errorf("no %q in\n%s", l, text)
		}
	}
	back, err := ParseSettingsFile(text)
	if err != nil || !reflect.DeepEqual(back.App, o.App) {
		t.Fatalf("read back %+v, %v", back.App, err)
	}
	// Booting again drops every app key.
	back.App = nil
	text, err = back.SettingsText()
	if err != nil || strings.Contains(text, "Parameters") || strings.Contains(text, "ProcessTwo") || !strings.Contains(text, "Boot=yes") {
		t.Errorf("after --boot: %v\n%s", err, text)
	}
	// Environment= stays the user's.
	o, err = ParseSettingsFile("[Exec]\nEnvironment=PATH=/opt/bin:/bin 'GREETING=hi there'\nBoot=no\nProcessTwo=yes\nParameters=app\n")
	if err != nil || o.App == nil || o.file.env("PATH") != "/opt/bin:/bin" || o.file.env("GREETING") != "hi there" {
		t.Fatalf("%+v %v", o.App, err)
	}
	if args := NspawnArgs(NspawnConfig{Name: "web", Root: "/srv/web", BootOptions: o}); !slices.Contains(args, "--settings=yes") {
		t.Errorf("Environment= unread: %q", args)
	}
	for _, bad := range []string{
		"[Exec]\nBoot=no\nParameters=app\n", // no ProcessTwo
		"[Exec]\nBoot=no\nProcessTwo=yes\nParameters='app\n",
		"[Exec]\nBoot=no\nProcessTwo=yes\nWorkingDirectory=data\n",
		"[Exec]\nBoot=no\nProcessTwo=yes\nUser=a b\n",
	} {
		if _, err := ParseSettingsFile(bad); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestNspawnArgsApp(t *testing.T) {
	o := DefaultBootOptions()
	o.App = &App{Argv: []string{"/app", "-x"}, Workdir: "/data", User: "app"}
	args := NspawnArgs(NspawnConfig{Name: "web", Root: "/srv/web", BootOptions: o})
	for _, a := range []string{"--boot", "--notify-ready=yes", "--console=read-only"} {
		if slices.Contains(args, a) {
			t.Errorf("%s in %q", a, args)
		}
	}
	for _, a := range []string{"--as-pid2", "--notify-ready=no", "--console=pipe", "--chdir=/data", "--user=app"} {
		if !slices.Contains(args, a) {
			t.Errorf("no %s in %q", a, args)
		}
	}
	if tail := args[len(args)-3:]; !reflect.DeepEqual(tail, []string{"--", "/app", "-x"}) {
		t.Errorf("command not last: %q", args)
	}
}

func TestAppTreeChecks(t *testing.T) {
	dir := t.TempDir()
	for p, text := range map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/home/app:/bin/sh\n",
		"etc/group":    "root:x:0:\napp:x:1000:\nother:x:2000:\n",
		"opt/bin/tool": "#!/bin/sh\n",
		"usr/bin/data": "not a program",
	} {
		mode := os.FileMode(0o644)
		if strings.Contains(p, "bin/tool") {
			mode = 0o755
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
	// A link out of the tree is resolved inside it.
	if err := os.Symlink("/bin/sh", filepath.Join(dir, "opt/bin/sh")); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if p, err := findCommand(r, "tool", "/usr/bin:/opt/bin"); err != nil || p != "/opt/bin/tool" {
		t.Errorf("tool: %q, %v", p, err)
	}
	for _, bad := range []string{"data", "sh", "/opt/bin/sh", "bin/tool", "missing"} {
		if p, err := findCommand(r, bad, "/usr/bin:/opt/bin"); err == nil {
			t.Errorf("findCommand(%s) = %q", bad, p)
		}
	}
	for in, want := range map[string]string{"": "root", "0": "root", "app": "app", "1000": "app", "1000:1000": "app", "app:app": "app"} {
		if got, err := resolveAppUser(r, in); err != nil || got != want {
			t.Errorf("resolveAppUser(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"nobody", "1234", "1000:2000", "app:other", "0:1000"} {
		if got, err := resolveAppUser(r, bad); err == nil {
			t.Errorf("resolveAppUser(%q) = %q", bad, got)
		}
	}
}
