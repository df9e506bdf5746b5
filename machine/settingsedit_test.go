package machine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/machined"
)

func TestCheckSettings(t *testing.T) {
	const good = "# mine\n[Exec]\nBoot=yes\nPrivateUsers=pick\nEnvironment=FOO=bar \"B=x y\"\n; also mine\n" +
		"[Files]\nPrivateUsersOwnership=auto\nBind=/srv/data:/data\nBindReadOnly=/etc/ssl:/etc/ssl:norbind\nVolatile=state\n" +
		"[Network]\nVirtualEthernet=on\nPort=tcp:8080:80\n"
	for _, tc := range []struct {
		what, text string
		line       int    // of the one problem; -1 for none
		says       string // in it
	}{
		{"good", good, -1, ""},
		{"empty", "", -1, ""},
		{"nsbox's defaults", func() string { s, _ := DefaultBootOptions().SettingsText(); return s }(), -1, ""},
		{"unknown section", "[Exec]\nBoot=yes\n[Service]\nExecStart=/bin/true\n", 3, "unknown section [Service]"},
		{"unknown key", "[Exec]\nBoot=yes\nFrobnicate=1\n", 3, "unknown key Frobnicate= in [Exec]"},
		{"key of another section", "[Exec]\nPort=80\n", 2, "it belongs in [Network]"},
		{"key in the wrong case", "[Network]\nport=80\n", 2, "case-sensitive: Port="},
		{"bad port", "[Network]\nVirtualEthernet=yes\nPort=99999\n", 3, "ports 1-65535"},
		{"port word", "[Network]\nPort=http\n", 2, "[tcp|udp:]HOST[:MACHINE]"},
		{"relative bind", "[Files]\nBind=data:/data\n", 2, "absolute"},
		{"bind options", "[Files]\nBind=/a:/b:rbind;rm\n", 2, "comma-separated words"},
		{"empty bind", "[Files]\nBind=/a\nBind=\n", 3, "drops the binds above it"},
		{"bad bridge", "[Network]\nBridge=a-name-far-too-long\n", 2, "bridge name must be 1-15 characters"},
		{"boot off", "[Exec]\nBoot=no\n", 2, "always boots"},
		{"private users range", "[Exec]\nPrivateUsers=1000:65536\n", 2, "pick or no"},
		{"ownership", "[Files]\nPrivateUsersOwnership=chown\n", 2, "writes auto"},
		{"not a boolean", "[Exec]\nNoNewPrivileges=maybe\n", 2, "not a boolean"},
		{"bad mode", "[Exec]\nTimezone=utc\n", 2, "use one of off, copy"},
		{"bad machine ID", "[Exec]\nMachineID=1234\n", 2, "not a machine ID"},
		{"bad environment", "[Exec]\nEnvironment=FOO\n", 2, "not NAME=VALUE"},
		{"environment quote", "[Exec]\nEnvironment=\"FOO=bar\n", 2, "is not closed"},
		{"outside a section", "Boot=yes\n[Exec]\n", 1, "outside any section"},
		{"control character", "[Exec]\nHostname=a\x1bb\n", 2, "control character"},
		{"not a line", "[Exec]\njunk\n", 2, "not KEY=VALUE"},
		{"not a header", "[Exec\n", 1, "not a section header"},
		{"port without a network", "[Network]\nPrivate=no\nVirtualEthernet=no\nPort=80\n", 4, "needs a network of the machine's own"},
	} {
		problems, _ := CheckSettings(tc.text)
		if tc.line < 0 {
			if len(problems) != 0 {
				t.Errorf("%s: %v", tc.what, problems)
			}
			continue
		}
		if len(problems) != 1 || problems[0].Line != tc.line || !strings.Contains(problems[0].Why, tc.says) {
			t.Errorf("%s: got %v, want one problem at line %d saying %q", tc.what, problems, tc.line, tc.says)
		}
	}
	// Every problem is said, each at its line.
	problems, _ := CheckSettings("[Exec]\nFoo=1\n[Network]\nPort=0\n[Bogus]\nX=1\n")
	var lines []int
	for _, p := range problems {
		lines = append(lines, p.Line)
	}
	if !reflect.DeepEqual(lines, []int{2, 4, 5}) {
		t.Errorf("problems %v, want at lines 2, 4 and 5", problems)
	}
	// A key nsbox's command line overrides is a note, not a problem.
	problems, notes := CheckSettings("[Exec]\nLinkJournal=host\n")
	if len(problems) != 0 || len(notes) != 1 || notes[0].Line != 2 || !strings.Contains(notes[0].Why, "--link-journal=no") {
		t.Errorf("LinkJournal=host: problems %v notes %v", problems, notes)
	}
}

func TestParseSettingsFileBooleans(t *testing.T) {
	for _, tc := range []struct {
		text    string
		network string
		private bool
	}{
		{"[Exec]\nPrivateUsers=off\n", "veth", false},
		{"[Exec]\nPrivateUsers=N\n", "veth", false},
		{"[Exec]\nPrivateUsers=on\n", "veth", true},
		{"[Exec]\nPrivateUsers=identity\n", "veth", true},
		{"[Network]\nPrivate=on\nVirtualEthernet=off\n", "none", true},
		{"[Network]\nPrivate=off\nVirtualEthernet=off\n", "host", true},
		{"[Network]\nVirtualEthernet=TRUE\n", "veth", true},
	} {
		o, err := ParseSettingsFile(tc.text)
		if err != nil || o.Network != tc.network || o.PrivateUsers != tc.private {
			t.Errorf("%q: network %q private users %v (%v), want %q %v", tc.text, o.Network, o.PrivateUsers, err, tc.network, tc.private)
		}
	}
}

func TestEditor(t *testing.T) {
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	installed := func(names ...string) func(string) (string, error) {
		return func(n string) (string, error) {
			for _, i := range names {
				if i == n {
					return "/usr/bin/" + n, nil
				}
			}
			return "", exec.ErrNotFound
		}
	}
	for _, tc := range []struct {
		vars      map[string]string
		installed []string
		want      []string
	}{
		{map[string]string{"SYSTEMD_EDITOR": "ed", "EDITOR": "vim", "VISUAL": "code"}, nil, []string{"ed"}},
		{map[string]string{"EDITOR": "emacs -nw", "VISUAL": "code"}, nil, []string{"emacs", "-nw"}},
		{map[string]string{"EDITOR": " ", "VISUAL": "code --wait"}, nil, []string{"code", "--wait"}},
		{nil, []string{"vi", "nano"}, []string{"/usr/bin/nano"}},
		{nil, []string{"vi", "editor"}, []string{"/usr/bin/editor"}},
		{nil, nil, nil},
	} {
		got, err := Editor(env(tc.vars), installed(tc.installed...))
		if !reflect.DeepEqual(got, tc.want) || (tc.want == nil) != (err != nil) {
			t.Errorf("%v, installed %v: %q (%v), want %q", tc.vars, tc.installed, got, err, tc.want)
		}
	}
	if _, err := Editor(env(map[string]string{"EDITOR": "vi\x1b"}), installed()); err == nil {
		t.Error("an editor with a control character was taken")
	}
}

// editScript writes an editor: a shell script with body, run with the
// file as $1.
func editScript(t *testing.T, body string) []string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "editor")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{p}
}

func TestEditSettings(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	ctx := context.Background()
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	m.Runner = host.ExecRunner{}
	mkMachine(t, m, "web")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	path := m.settingsPath("web")
	const before = "# my comment\n[Exec]\nBoot=yes\nPrivateUsers=pick\n\n[Network]\nVirtualEthernet=yes\nPort=8080:80\n"
	if err := host.WriteFileAtomic(path, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	edit := func(script string) (EditResult, error) {
		t.Helper()
		return m.EditSettings(ctx, "web", EditRequest{Editor: editScript(t, script), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	}
	unchanged := func(what string) {
		t.Helper()
		if b, err := os.ReadFile(path); err != nil || string(b) != before {
			t.Errorf("%s: the file became %q (%v)", what, b, err)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Errorf("%s: left in the temporary directory: %v", what, ents)
		}
		if ents, _ := os.ReadDir(m.SettingsDir); len(ents) != 1 {
			t.Errorf("%s: the settings directory holds %v", what, ents)
		}
	}

	// Refused edits leave the file as it was, byte for byte.
	var se *SettingsError
	_, err := edit(`printf '[Exec]\nFrobnicate=1\n[Network]\nPort=99999\n' >> "$1"`)
	if !errors.As(err, &se) || len(se.Problems) != 2 || se.Problems[0].Line != 10 || se.Problems[1].Line != 12 ||
		!errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "left as it was") {
		t.Errorf("bad edit: %v", err)
	} else if lines := se.Lines(); !strings.HasPrefix(lines[0], "web.nspawn:10: unknown key Frobnicate=") {
		t.Errorf("problem lines: %q", lines)
	}
	unchanged("bad edit")
	_, err = edit(`printf '\001\377garbage\n' > "$1"`)
	if !errors.As(err, &se) || se.Problems[0].Line != 1 {
		t.Errorf("garbage: %v", err)
	}
	unchanged("garbage")
	if _, err = edit(`exit 3`); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("failing editor: %v", err)
	}
	unchanged("failing editor")
	if _, err = m.EditSettings(ctx, "web", EditRequest{Editor: []string{filepath.Join(tmp, "no-such-editor")}}); err == nil {
		t.Error("a missing editor was run")
	}
	unchanged("missing editor")
	if res, err := edit(`touch "$1"`); err != nil || res.Changed {
		t.Errorf("unchanged: %+v, %v", res, err)
	}
	unchanged("no change")
	// Another writer while the editor is open: refused, theirs kept.
	_, err = edit(`echo '# mine' >> "$1"; echo '# theirs' >> ` + path)
	if !errors.Is(err, ErrChanged) {
		t.Errorf("changed meanwhile: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != before+"# theirs\n" {
		t.Errorf("changed meanwhile: the file became %q", b)
	}
	os.WriteFile(path, []byte(before), 0o644)

	// Asked again after a refusal, the copy keeps the first edit.
	asked := 0
	state := filepath.Join(tmp, "..", filepath.Base(tmp)+".state")
	defer os.Remove(state)
	res, err := m.EditSettings(ctx, "web", EditRequest{
		Editor: editScript(t, `if [ -e `+state+` ]; then sed -i 's/^Frobnicate=1$/Environment=A=b/' "$1"; else touch `+state+`; printf '[Exec]\nFrobnicate=1\n' >> "$1"; fi`),
		Again:  func(error) bool { asked++; return asked < 3 }, Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{},
	})
	if err != nil || asked != 1 || !res.Changed {
		t.Fatalf("edit again: asked %d times, %+v, %v", asked, res, err)
	}
	if b, _ := os.ReadFile(path); string(b) != before+"[Exec]\nEnvironment=A=b\n" {
		t.Errorf("edit again: %q", b)
	}

	// A good edit: comments kept, installed whole, 0644, nothing left.
	os.WriteFile(path, []byte(before), 0o644)
	res, err = edit(`sed -i 's/^Port=8080:80$/Port=tcp:9090:90/' "$1" && printf '[Files]\nBindReadOnly=/etc/ssl\n' >> "$1"`)
	if err != nil || !res.Changed || res.Created || res.Running || len(res.Notes) != 0 {
		t.Fatalf("good edit: %+v, %v", res, err)
	}
	want := strings.Replace(before, "Port=8080:80", "Port=tcp:9090:90", 1) + "[Files]\nBindReadOnly=/etc/ssl\n"
	if b, _ := os.ReadFile(path); string(b) != want {
		t.Errorf("good edit: %q, want %q", b, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode: %v %v", fi.Mode(), err)
	}
	if o, err := m.Options("web"); err != nil || !reflect.DeepEqual(o.Ports, []string{"tcp:9090:90"}) || len(o.Binds) != 1 {
		t.Errorf("what a boot reads: %+v, %v", o, err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in the temporary directory: %v", ents)
	}

	// A bind the next boot would refuse is installed, with a note.
	res, err = edit(`printf 'Bind=/nonexistent-nsbox-test:/x\n' >> "$1"`)
	if err != nil || len(res.Notes) != 1 || !strings.Contains(res.Notes[0].Why, "refuses this bind without --force-binds: bind source /nonexistent-nsbox-test does not exist") {
		t.Errorf("a bind boot refuses: %+v, %v", res, err)
	}

	// A running machine: the file applies at its next boot.
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}
	if res, err := edit(`echo '# more' >> "$1"`); err != nil || !res.Running || res.Enabled {
		t.Errorf("running: %+v, %v", res, err)
	}
	delete(f.machines, "web")
	// An enabled machine's unit has the options of its enable.
	b := m.Backend.(*machined.Backend)
	os.MkdirAll(filepath.Dir(b.WantsLink("web")), 0o755)
	os.WriteFile(filepath.Join(b.UnitDir, machined.AutostartUnitName("web")), nil, 0o644)
	os.Symlink("../"+machined.AutostartUnitName("web"), b.WantsLink("web"))
	if res, err := edit(`echo '# more' >> "$1"`); err != nil || res.Running || !res.Enabled {
		t.Errorf("enabled: %+v, %v", res, err)
	}

	// A machine without a file starts from nsbox's defaults.
	mkMachine(t, m, "db")
	res, err = m.EditSettings(ctx, "db", EditRequest{Editor: editScript(t, `sed -i 's/^\[Exec\]$/[Exec]\nEnvironment=X=1/' "$1"`)})
	if err != nil || !res.Created {
		t.Fatalf("new file: %+v, %v", res, err)
	}
	if o, err := m.Options("db"); err != nil || !o.PrivateUsers || o.Network != "veth" || !o.file.userKeys() {
		t.Errorf("new file reads as %+v, %v", o, err)
	}

	// Names: unknown, invalid; a link where the file is.
	if _, err := edit(`true`); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"nope", "../etc/passwd", "a/b"} {
		if _, err := m.EditSettings(ctx, n, EditRequest{Editor: []string{"true"}}); err == nil {
			t.Errorf("edit %q: no error", n)
		}
	}
	target := filepath.Join(tmp, "..", filepath.Base(tmp)+".target")
	os.WriteFile(target, []byte("[Exec]\n"), 0o644)
	defer os.Remove(target)
	os.Remove(path)
	os.Symlink(target, path)
	if _, err := edit(`echo '# x' >> "$1"`); !errors.Is(err, ErrNotRegular) {
		t.Errorf("a link: %v", err)
	}
	if _, err := m.Settings(ctx, "web"); !errors.Is(err, ErrNotRegular) {
		t.Errorf("cat of a link: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "[Exec]\n" {
		t.Errorf("written through the link: %q", b)
	}
}

func TestSettings(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkMachine(t, m, "web")
	s, err := m.Settings(ctx, "web")
	if err != nil || s.Exists || s.Text != "" || !s.BootOptions.PrivateUsers || s.Entries == nil || s.Problems == nil || s.BootOptions.Ports == nil {
		t.Fatalf("no file: %+v, %v", s, err)
	}
	text := "# c\n[Exec]\nBoot=yes\nFoo=1\n[Network]\nPort=80\n"
	host.WriteFileAtomic(m.settingsPath("web"), []byte(text), 0o644)
	s, err = m.Settings(ctx, "web")
	if err != nil || !s.Exists || s.Text != text || !reflect.DeepEqual(s.BootOptions.Ports, []string{"80"}) {
		t.Fatalf("file: %+v, %v", s, err)
	}
	want := []SettingsEntry{{"Exec", "Boot", "yes", 3}, {"Exec", "Foo", "1", 4}, {"Network", "Port", "80", 6}}
	if !reflect.DeepEqual(s.Entries, want) || len(s.Problems) != 1 || s.Problems[0].Line != 4 {
		t.Errorf("entries %v problems %v", s.Entries, s.Problems)
	}
	if _, err := m.Settings(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown machine: %v", err)
	}
}
