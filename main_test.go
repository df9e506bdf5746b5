package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine"
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
	out, _ := capture(t, "--root-dir", root, "boot", "--generate-bash-completion")
	if got := strings.Fields(out); strings.Join(got, " ") != "db web" {
		t.Errorf("machine names offered: %q", out)
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
			if !strings.Contains(out, df.GetUsage()) {
				t.Errorf("man page lacks %s --%s as --help has it: %q", c.Name, f.Names()[0], df.GetUsage())
			}
		}
	}
}

// enable names the unit it installs as the README does.
func TestEnableNamesItsUnit(t *testing.T) {
	for _, c := range newApp().Commands {
		if c.Name == "enable" && !strings.Contains(c.Usage, machine.AutostartUnitName("NAME")) {
			t.Errorf("enable --help: %q, want %s", c.Usage, machine.AutostartUnitName("NAME"))
		}
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
