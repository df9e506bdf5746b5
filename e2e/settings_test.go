//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// settingsScenario is nsbox cat and edit on machine name, which runs:
// cat shows the settings file; an edit in an editor (a script, through
// $EDITOR) is installed and takes effect at the next boot; a refused edit
// (unknown key, bad port), a failing editor and an unknown or invalid
// name change nothing, byte for byte, and leave no copy behind. It leaves
// the machine running with the file as it found it.
func settingsScenario(t *testing.T, e *env, name string) {
	file := "/etc/systemd/nspawn/" + name + ".nspawn"
	work := "/var/tmp/e2e-edit-" + e.name
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work+"/tmp")
	defer e.sh(t, "rm -rf "+work)
	editor := func(n, body string) string {
		p := work + "/" + n
		e.writeFile(t, p, []byte("#!/bin/sh\n"+body+"\n"))
		e.mustSh(t, "chmod 755 "+p)
		return p
	}
	good := editor("good", `sed -i 's/^\[Exec\]$/[Exec]\nEnvironment=E2E_EDIT=applied/' "$1"`)
	bad := editor("bad", `printf '[Exec]\nFrobnicate=1\n[Network]\nPort=99999\n' >> "$1"`)
	undo := editor("undo", `sed -i '/^Environment=E2E_EDIT=applied$/d' "$1"`)
	// The copies go under work/tmp, to be seen there if left.
	edit := func(ed string, args ...string) result {
		return e.sh(t, "TMPDIR="+work+"/tmp EDITOR="+ed+" "+e.cmdline(append([]string{"edit"}, args...)...))
	}
	sum := func() string { return e.mustSh(t, "sha256sum "+file) }
	noCopies := func(what string) {
		t.Helper()
		if out := e.query(t, "ls -A "+work+"/tmp; ls -A /etc/systemd/nspawn | grep '^\\.#'"); out != "" {
			t.Errorf("%s: left behind: %s", what, out)
		}
	}

	// cat: the file, its name first.
	disk := e.mustSh(t, "cat "+file)
	if r := e.mustNsb(t, "cat", name); r.stdout != "# "+file+"\n"+disk {
		t.Errorf("cat:\n%s\nthe file:\n%s", r.stdout, disk)
	}
	var s struct {
		Exists  bool   `json:"exists"`
		Text    string `json:"text"`
		Options struct {
			Network string `json:"network"`
		} `json:"boot_options"`
		Entries []struct {
			Section, Key string
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(e.mustNsb(t, "cat", name, "-o", "json").stdout), &s); err != nil || !s.Exists || s.Text != disk || s.Options.Network != "veth" || len(s.Entries) == 0 {
		t.Errorf("cat -o json: %+v (%v)", s, err)
	}

	// Refused: each problem at its line, then one summary; the file as
	// it was, byte for byte.
	before := sum()
	r := edit(bad, name)
	wantFail(t, r, 1, "left as it was")
	if !strings.Contains(r.stderr, name+".nspawn:") || !strings.Contains(r.stderr, "unknown key Frobnicate= in [Exec]") || !strings.Contains(r.stderr, "Port=99999") {
		t.Errorf("bad edit: the problems are not said:\n%s", r)
	}
	wantFail(t, edit("false", name), 1, "the editor (false) failed")
	wantFail(t, edit(good, "e2e-nope"), exitNotFound, "no such machine")
	wantFail(t, edit(good, "../etc"), 1, "invalid machine name")
	wantFail(t, e.nsb(t, "cat", "e2e-nope"), exitNotFound, "no such machine")
	if after := sum(); after != before {
		t.Errorf("refused edits changed %s: %s, was %s", file, after, before)
	}
	if r := edit("true", name); r.code != 0 || !strings.Contains(r.stderr, "nothing changed") || sum() != before {
		t.Errorf("an unchanged copy:\n%s", r)
	}
	noCopies("refused edits")

	// Installed while the machine runs; applies at its next boot.
	r = edit(good, name)
	if r.code != 0 || !strings.Contains(r.stderr, "is running: the new settings apply when it next boots") {
		t.Errorf("good edit:\n%s", r)
	}
	e.mustSh(t, "grep -qx 'Environment=E2E_EDIT=applied' "+file+" && test \"$(stat -c '%a %u' "+file+")\" = '644 0'")
	noCopies("good edit")
	e.mustNsb(t, "stop", name)
	e.mustNsb(t, "boot", name)
	if env := e.mustNsb(t, "shell", name, "--", "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ").stdout; !strings.Contains(env, "\nE2E_EDIT=applied\n") && !strings.HasPrefix(env, "E2E_EDIT=applied\n") {
		t.Errorf("the machine's init has no E2E_EDIT=applied:\n%s", env)
	}
	// The boot rewrote nsbox's keys and kept the line.
	e.mustSh(t, "grep -qx 'Environment=E2E_EDIT=applied' "+file)
	if r := edit(undo, name); r.code != 0 {
		t.Errorf("undo:\n%s", r)
	}
	e.mustSh(t, "! grep -q E2E_EDIT "+file)
}
