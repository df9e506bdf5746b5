package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine"
)

func TestReportSettingsError(t *testing.T) {
	err := &machine.SettingsError{File: "web.nspawn", Path: "/etc/systemd/nspawn/web.nspawn",
		Problems: []machine.SettingsProblem{{Line: 3, Why: "unknown key Foo= in [Exec]"}, {Line: 0, Why: "a\x1b[2Jb"}}}
	var w bytes.Buffer
	if code := reportTo(&w, err); code != exitError {
		t.Errorf("exit %d", code)
	}
	want := "web.nspawn:3: unknown key Foo= in [Exec]\nweb.nspawn: a\\x1b[2Jb\n" +
		"nsbox: the edited web.nspawn has 2 problems (above); /etc/systemd/nspawn/web.nspawn is left as it was\n"
	if w.String() != want {
		t.Errorf("got\n%s\nwant\n%s", w.String(), want)
	}
	// Shown on the way (edit asked to edit again): the summary only.
	err.Shown = true
	w.Reset()
	reportTo(&w, err)
	if strings.Count(w.String(), "\n") != 1 {
		t.Errorf("shown problems printed again:\n%s", w.String())
	}
}

func TestEditAgain(t *testing.T) {
	err := &machine.SettingsError{File: "web.nspawn", Problems: []machine.SettingsProblem{{Line: 2, Why: "bad"}}}
	for in, want := range map[string]bool{"\n": true, "y\n": true, "Yes\n": true, "n\n": false, "No\n": false, "": false} {
		var out bytes.Buffer
		if got := editAgain(context.Background(), strings.NewReader(in), &out, err); got != want {
			t.Errorf("answer %q: %v, want %v", in, got, want)
		}
		if !strings.HasPrefix(out.String(), "web.nspawn:2: bad\nEdit again? [Y/n] ") {
			t.Errorf("answer %q: printed %q", in, out.String())
		}
	}
}

func TestWriteSettings(t *testing.T) {
	var w bytes.Buffer
	writeSettings(&w, machine.Settings{Name: "web", Path: "/etc/systemd/nspawn/web.nspawn", Exists: true, Text: "[Exec]\nBoot=yes"})
	if w.String() != "# /etc/systemd/nspawn/web.nspawn\n[Exec]\nBoot=yes\n" {
		t.Errorf("a file: %q", w.String())
	}
	w.Reset()
	writeSettings(&w, machine.Settings{Name: "web", Path: "/etc/systemd/nspawn/web.nspawn", BootOptions: machine.DefaultBootOptions()})
	for _, l := range strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n") {
		if !strings.HasPrefix(l, "#") {
			t.Errorf("no file: a line that is not a comment: %q", l)
		}
	}
	if !strings.Contains(w.String(), "does not exist") || !strings.Contains(w.String(), "\n# VirtualEthernet=yes\n") {
		t.Errorf("no file:\n%s", w.String())
	}
}
