package machine

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
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

func TestAppExecArgs(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv/app:/bin/sh\nnohome:x:1001:1001:::/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/group"), []byte("app:x:1000:\nwww:x:33:app,other\nadm:x:4:other\n"), 0o644)
	r, _ := os.OpenRoot(dir)
	defer r.Close()
	ids, err := resolveAppIDs(r, "1000:1000")
	if err != nil || ids.uid != 1000 || ids.gid != 1000 || !reflect.DeepEqual(ids.groups, []int{1000, 33}) || ids.home != "/srv/app" || ids.user != "app" {
		t.Fatalf("%+v %v", ids, err)
	}
	if ids, err := resolveAppIDs(r, "nohome"); err != nil || ids.home != "/" {
		t.Errorf("no home: %+v %v", ids, err)
	}
	x := &appExec{user: "1000:1000", binds: [][2]string{{"/lib64/ld-linux-x86-64.so.2", "ld.so"}, {"/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"}, {"/var/lib/nsbox/bin/nsbox", "nsbox"}}}
	if got := strings.Join(x.args(), " "); got != "--bind-ro=/lib64/ld-linux-x86-64.so.2:/run/nsbox-app/ld.so --bind-ro=/lib/x86_64-linux-gnu/libc.so.6:/run/nsbox-app/libc.so.6 --bind-ro=/var/lib/nsbox/bin/nsbox:/run/nsbox-app/nsbox" {
		t.Errorf("binds: %s", got)
	}
	want := []string{"/run/nsbox-app/ld.so", "--library-path", "/run/nsbox-app", "/run/nsbox-app/nsbox", AppExecCommand,
		"--user=1000:1000", "--", "/app", "a b"}
	if got := x.argv([]string{"/app", "a b"}); !reflect.DeepEqual(got, want) {
		t.Errorf("argv %q", got)
	}
	// A static nsbox runs as it is.
	x.binds = x.binds[2:]
	if got := x.argv([]string{"/app"}); got[0] != "/run/nsbox-app/nsbox" {
		t.Errorf("static argv %q", got)
	}
	// The file's mounts go onto the command line with the helper's.
	o, err := ParseSettingsFile("[Exec]\nEnvironment=A=1\nBoot=no\nProcessTwo=yes\nParameters=/app\nUser=app\n[Files]\nBind=/srv/data:/data\nTemporaryFileSystem=/scratch\nBindReadOnly=/etc/x:/x\n")
	if err != nil {
		t.Fatal(err)
	}
	args := NspawnArgs(NspawnConfig{Name: "web", Root: "/srv/web", BootOptions: o, appExec: x})
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "--bind=/srv/data:/data --tmpfs=/scratch --bind-ro=/etc/x:/x --bind-ro=/var/lib/nsbox/bin/nsbox:/run/nsbox-app/nsbox --user=root -- /run/nsbox-app/nsbox") {
		t.Errorf("helper args: %s", joined)
	}
}

func TestLoadedLibraries(t *testing.T) {
	maps := filepath.Join(t.TempDir(), "maps")
	os.WriteFile(maps, []byte(`55d0 r--p 00000000 08:01 1 /usr/local/bin/nsbox
7f00 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f01 r-xp 00001000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f02 r--p 00000000 00:00 0 [vvar]
7f03 r--p 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
`), 0o644)
	got, err := loadedLibraries(maps)
	want := [][2]string{{"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "ld.so"}, {"/usr/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("%q %v", got, err)
	}
	os.WriteFile(maps, []byte("55d0 r--p 00000000 08:01 1 /usr/local/bin/nsbox\n"), 0o644)
	if got, err := loadedLibraries(maps); err != nil || len(got) != 0 {
		t.Errorf("static: %q %v", got, err)
	}
	// The test binary's own: a loader first when it has one.
	if got, err := loadedLibraries("/proc/self/maps"); err != nil || len(got) > 0 && got[0][1] != "ld.so" {
		t.Errorf("this process: %q %v", got, err)
	}
}

// TestAppExecBecomesTheUser runs AppExec in a child of the test (the test
// binary run again, as it runs in a machine) as root: the program it
// executes has the user, groups and environment it was told.
func TestAppExecBecomesTheUser(t *testing.T) {
	if args, ok := strings.CutPrefix(os.Getenv("NSBOX_TEST_APP_EXEC"), "run:"); ok {
		os.Exit(AppExec(strings.Split(args, "\x1f")))
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	run := func(args ...string) (string, error) {
		c := exec.Command(os.Args[0], "-test.run=^TestAppExecBecomesTheUser$")
		c.Env = []string{"NSBOX_TEST_APP_EXEC=run:" + strings.Join(args, "\x1f"), "PATH=/usr/bin:/bin", "HOME=/root"}
		out, err := c.CombinedOutput()
		return string(out), err
	}
	// This host's daemon user, read from its passwd as the helper reads
	// the machine's.
	r, err := os.OpenRoot("/")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := resolveAppIDs(r, "daemon")
	r.Close()
	if err != nil {
		t.Skip(err)
	}
	out, err := run("--user=daemon", "--", "sh", "-c", `echo $(id -u) $(id -g) $USER $LOGNAME $HOME`)
	if want := fmt.Sprintf("%d %d daemon daemon %s\n", ids.uid, ids.gid, ids.home); err != nil || out != want {
		t.Errorf("as the user: %q, %v; want %q", out, err, want)
	}
	for _, bad := range [][]string{
		{"--user=root", "--", "true"}, // root is not this helper's to run
		{"--user=daemon", "--", "no-such-program"},
		{"--user=no-such-user", "--", "true"},
		{"--bogus", "--", "true"},
		{"--user=daemon"},
	} {
		if out, err := run(bad...); err == nil {
			t.Errorf("%q: no failure: %s", bad, out)
		}
	}
}

// What a review found: each is refused in one line, and nothing waits.
func TestAppRefusesWhatAMachineRootPlants(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(dir, "etc/passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := os.OpenRoot(dir)
	defer r.Close()
	done := make(chan error, 1)
	go func() { _, err := resolveAppUser(r, "app"); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO for passwd: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a FIFO for passwd is waited on")
	}
	for _, bad := range []string{"a\xffb", "a\u0085b", "a\x1bb"} {
		if (&App{Argv: []string{"/app", bad}}).validate() == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := SplitCommand("/app a\xffb"); err == nil {
		t.Error("--cmd that is not UTF-8 accepted")
	}
	for _, text := range []string{
		"[Exec]\nBoot=maybe\n",
		"[Exec]\nBoot=no\nProcessTwo=perhaps\nParameters=/app\n",
		"[Exec]\nBoot=no\nProcessTwo=yes\nParameters=/app\nWorkingDirectory=/a/../../b\n",
	} {
		if _, err := ParseSettingsFile(text); err == nil {
			t.Errorf("accepted: %q", text)
		}
	}
	o, err := ParseSettingsFile("[Files]\nBind=/a:/a\nTemporaryFileSystem=\nTemporaryFileSystem=/t\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.file.mountArgs(), " "); got != "--bind=/a:/a --tmpfs=/t" {
		t.Errorf("mounts: %s", got)
	}
}
