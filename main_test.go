package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
