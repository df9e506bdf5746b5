package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/machine/argv"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
)

// capture runs nsbox with args and returns what it printed on stdout.
func capture(t *testing.T, args ...string) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	code := run(append([]string{"nsbox"}, args...))
	w.Close()
	os.Stdout = old
	out, _ := io.ReadAll(r)
	return string(out), code
}

func TestCompletionOffersMachinesAndCommands(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"web", "db"} {
		os.MkdirAll(filepath.Join(root, n, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, n, "etc", "os-release"), []byte("ID=debian\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "notamachine"), 0o755)
	os.MkdirAll(filepath.Join(root, ".#web.123"), 0o755)
	// A machine in the store: ROOT/NAME links to .nsbox/NAME, which
	// completion need not be able to read.
	os.Symlink(".nsbox/app", filepath.Join(root, "app"))
	os.Symlink("/etc", filepath.Join(root, "etc-link"))
	for _, cmd := range []string{"boot", "cat", "edit"} {
		out, _ := capture(t, "--root-dir", root, cmd, "--generate-bash-completion")
		if got := strings.Fields(out); strings.Join(got, " ") != "app db web" {
			t.Errorf("%s: machine names offered: %q", cmd, out)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out, code := capture(t, "completion", shell); code != 0 || !strings.Contains(out, "--generate-bash-completion") {
			t.Errorf("completion %s: %d %q", shell, code, out)
		}
	}
	if _, code := capture(t, "completion", "tcsh"); code != exitUsage {
		t.Errorf("completion tcsh exit %d", code)
	}
	if out, code := capture(t, "man"); code != 0 || !strings.Contains(out, ".TH nsbox") || !strings.Contains(out, "create") {
		t.Errorf("man: %d", code)
	}
}

func TestSeveralNamesUsage(t *testing.T) {
	for _, args := range [][]string{{"stop"}, {"remove", "web", "web"}, {"kill", "a", "b", "a"}} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestKillFlagsCheckedOnce(t *testing.T) {
	for _, args := range [][]string{{"kill", "a", "b", "--signal", "FOO"}, {"kill", "a", "--kill-whom", "everyone"}} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// The man page is section 1 (where the README installs it) and shows the
// flag texts of --help: "[...] (...)" is no Markdown link there.
func TestManPageAgreesWithHelp(t *testing.T) {
	out, code := capture(t, "man")
	if code != 0 || !strings.Contains(out, ".TH nsbox 1\n") {
		t.Fatalf("man: exit %d, header %q", code, strings.SplitN(out, "\n", 3))
	}
	if strings.Contains(out, `\[la]`) || strings.Contains(out, `\[ra]`) {
		t.Errorf("man page has a link (a stray <...> line):\n%s", out)
	}
	for _, c := range newApp().Commands {
		for _, f := range c.Flags {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok || !strings.ContainsAny(df.GetUsage(), "[]") {
				continue
			}
			// --help shows a `PLACEHOLDER` without its quotes.
			if _, usage := unquoteUsage(df.GetUsage()); !strings.Contains(out, usage) {
				t.Errorf("man page lacks %s --%s as --help has it: %q", c.Name, f.Names()[0], usage)
			}
		}
	}
}

// enable names the unit it installs as the README does, in the list of
// commands and in its own --help.
func TestEnableNamesItsUnit(t *testing.T) {
	unit := machine.AutostartUnitName("NAME")
	if unit != "nsbox@NAME.service" {
		t.Errorf("enable installs %s, the README says nsbox@NAME.service", unit)
	}
	enable := newApp().Command("enable")
	if enable == nil {
		t.Fatal("no enable command")
	}
	if !strings.Contains(enable.Usage, unit) {
		t.Errorf("enable's usage: %q, want %s", enable.Usage, unit)
	}
	if out, code := capture(t, "enable", "--help"); code != 0 || !strings.Contains(out, unit) {
		t.Errorf("enable --help: exit %d, lacks %s:\n%s", code, unit, out)
	}
}

// Warnings are one line in nsbox's style, not logrus's key=value text.
func TestWarningsInNsboxStyle(t *testing.T) {
	var b strings.Builder
	l := logrus.New()
	l.SetOutput(&b)
	l.SetFormatter(lineFormatter{})
	l.Warnf("base %s is %d days old", "bookworm", 40)
	l.Info("copying base")
	l.WithField("machine", "web").Warn("odd\x1b[2J")
	want := "nsbox: warning: base bookworm is 40 days old\ncopying base\nnsbox: warning: odd\\x1b[2J machine=web\n"
	if b.String() != want {
		t.Errorf("got %q\nwant %q", b.String(), want)
	}
	b.Reset()
	l.SetFormatter(lineFormatter{timestamps: true})
	l.Warn("x")
	if !strings.HasSuffix(b.String(), " nsbox: warning: x\n") || strings.HasPrefix(b.String(), "nsbox") {
		t.Errorf("with timestamps: %q", b.String())
	}
}

// nsbox's own command lines, hoisted with its flags: a global flag after
// the command goes before it, a command's flags before its names.
func TestHoistNsboxFlags(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"nsbox", "create", "web", "--release", "trixie"}, []string{"nsbox", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "--root-dir", "/x", "boot", "web", "--bind", "/a:/b", "--console"}, []string{"nsbox", "--root-dir", "/x", "boot", "--bind", "/a:/b", "--console", "web"}},
		{[]string{"nsbox", "shell", "web", "--uid", "u", "--", "ls", "-l"}, []string{"nsbox", "shell", "--uid", "u", "web", "--", "ls", "-l"}},
		{[]string{"nsbox", "cache", "remove", "bookworm", "-q"}, []string{"nsbox", "-q", "cache", "remove", "bookworm"}},
		{[]string{"nsbox", "create", "web", "-q", "--release", "trixie", "--root-dir", "/x"}, []string{"nsbox", "-q", "--root-dir", "/x", "create", "--release", "trixie", "web"}},
		{[]string{"nsbox", "-v", "list", "--output", "json", "--debug"}, []string{"nsbox", "-v", "--debug", "list", "--output", "json"}},
		{[]string{"nsbox", "kill", "web", "--signal", "-9"}, []string{"nsbox", "kill", "--signal", "-9", "web"}},
	} {
		if got, err := argv.Hoist(app, tc.in); err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Hoist(%q)\n got %q, %v\nwant %q", tc.in, got, err, tc.want)
		}
	}
}

// A value-taking flag with nothing after it is one line and exit status
// 2: "kill web --signal" is "--signal needs a value", not "unknown signal
// web".
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
}

// Usage errors exit 2, as the README promises: unknown commands and
// subcommands at any level, help on an unknown topic, a bad --backend,
// flag values that do not parse, an unknown signal.
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
		{"kill", "web", "--signal", "NOPE"},
	} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	// Help is no unknown command. (Checked without running it: urfave/cli
	// keeps its help command in a global that running help changes.)
	app := newApp()
	for _, args := range [][]string{{"cache", "--help"}, {"help", "cache"}, {"cache", "list", "--help"}, {"cache", "help"}, {"cache"}, {"-q", "cache", "list"}} {
		if name, unknown := argv.UnknownCommand(app, append([]string{"nsbox"}, args...)); unknown {
			t.Errorf("%q: %q taken for an unknown command", args, name)
		}
	}
}

func TestCreateFromURLUsage(t *testing.T) {
	url := "https://example.org/r.tar.zst"
	for _, args := range [][]string{
		{"create", "x", "--verify", "no"},
		{"create", "x", "--keyring", "k.gpg"},
		{"create", "x", "--from", url, "--verify", "maybe"},
		{"create", "x", "--from", url, "--keyring", "k.gpg"},
		{"create", "x", "--from", url, "--verify", "checksum", "--keyring", "k.gpg"},
		{"create", "x", "--from", url, "--platform", "linux/amd64"},
		{"create", "x", "--from", url, "--arch", "arm64"},
		{"create", "x", "--from", url, "--release", "bookworm"},
		{"create", "x", "--from", "docker://debian", "--verify", "no"},
		{"create", "x", "--from", "ftp://example.org/r.tar"},
	} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	out, code := capture(t, "create", "x", "--from", url, "--verify", "--generate-bash-completion")
	if code != 0 || strings.Join(strings.Fields(out), " ") != "checksum signature no" {
		t.Errorf("--verify completion: %d %q", code, out)
	}
}
