package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nsbox/nsbox/machine"
)

// Text a machine controls, as a hostile machine root writes it.
const (
	osc52     = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2gK\x07" // write the clipboard
	c1CSI     = "\u009b2J"                               // clear the screen, C1 form
	eraseLine = "\r\x1b[2K"                              // go back and erase what was printed
	bel       = "\a"
	title     = "\x1b]0;pwned\x1b\\" // set the window title, ST-terminated
)

// rawControls returns the control characters in printed output other
// than newline: what would reach the terminal unescaped.
func rawControls(s string) []string {
	var bad []string
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r != '\n' && (r < 0x20 || r >= 0x7f && r <= 0x9f) {
			bad = append(bad, s[i:i+size])
		}
		i += size
	}
	return bad
}

func hostileInfo() machine.Info {
	return machine.Info{
		Name: "web", State: "running", Managed: true,
		OS:         "debian" + osc52,
		Version:    "12" + eraseLine + "99",
		Root:       "/srv/web" + c1CSI + bel,
		Unit:       "nsbox-web.service" + title,
		Addresses:  []string{"10.0.0.2\n10.0.0.3"},
		Interfaces: []string{"ve-web\tx"},
		Options: &machine.BootOptions{Network: "veth", Binds: []machine.Bind{{Source: "/data" + "\x1b[8m", Dest: "/d"}},
			Ports: []string{"80" + "\u0085"}},
	}
}

func TestWriteTableEscapesMachineText(t *testing.T) {
	var b bytes.Buffer
	writeTable(&b, []machine.Info{hostileInfo()}, nil, true, true)
	out := b.String()
	if bad := rawControls(out); len(bad) > 0 {
		t.Errorf("table carries raw control characters %q:\n%s", bad, out)
	}
	if lines := strings.Count(out, "\n"); lines != 2 {
		t.Errorf("a machine's newline or tab broke the table into %d lines:\n%s", lines, out)
	}
	for _, want := range []string{`debian\x1b]52;c;`, `12\r\x1b[2K99`, `/srv/web\u009b2J\x07`, `10.0.0.2\n10.0.0.3`} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %s:\n%s", want, out)
		}
	}
}

func TestWriteStatusEscapesMachineText(t *testing.T) {
	var b bytes.Buffer
	writeStatus(&b, hostileInfo())
	out := b.String()
	if bad := rawControls(out); len(bad) > 0 {
		t.Errorf("status carries raw control characters %q:\n%s", bad, out)
	}
	for _, want := range []string{`debian\x1b]52;c;`, `nsbox-web.service\x1b]0;pwned\x1b\`, `ve-web\tx`, `Port: 80\u0085`} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}
}

// JSON stays exact: the escapes decode to the very strings the machine
// wrote, and no raw control character is printed.
func TestWriteJSONExactAndInert(t *testing.T) {
	in := hostileInfo()
	in.OS += "\u202e\x7f"
	var b bytes.Buffer
	if err := writeJSON(&b, in); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if bad := rawControls(out); len(bad) > 0 {
		t.Errorf("JSON carries raw control characters %q:\n%s", bad, out)
	}
	if strings.ContainsRune(out, 0x202e) {
		t.Error("JSON carries a raw bidirectional override")
	}
	var back machine.Info
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.OS != in.OS || back.Version != in.Version || back.Root != in.Root || back.Unit != in.Unit ||
		back.Options.Ports[0] != in.Options.Ports[0] || back.Addresses[0] != in.Addresses[0] {
		t.Errorf("JSON is not exact:\n got %+v\nwant %+v", back, in)
	}
}

// The error printed on failure stays one line, and a failed boot's log
// tail is printed inert.
func TestReportEscapesMachineText(t *testing.T) {
	err := errors.Join(errors.New("boot web"), &machine.BootError{
		Name: "web",
		Why:  "system state \"starting\x1b[2J\"\nnsbox: everything is fine",
		Log:  []string{"Welcome to " + osc52 + "Debian", c1CSI + "cleared", "progress 50%" + eraseLine + "done", bel + title},
	})
	var b bytes.Buffer
	if code := reportTo(&b, err); code != exitError {
		t.Errorf("exit %d", code)
	}
	out := b.String()
	if bad := rawControls(out); len(bad) > 0 {
		t.Errorf("report carries raw control characters %q:\n%s", bad, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "nsbox: boot web") || !strings.Contains(lines[0], `\nnsbox: everything is fine`) {
		t.Errorf("first line %q: the message must stay one line", lines[0])
	}
	if len(lines) != 1+1+4 {
		t.Errorf("%d lines, want the message, a heading and 4 log lines:\n%s", len(lines), out)
	}
}

// stderr runs nsbox with args and returns its exit status and what it
// printed on stderr.
func stderr(t *testing.T, args ...string) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	code := run(append([]string{"nsbox"}, args...))
	w.Close()
	os.Stderr = old
	out, _ := io.ReadAll(r)
	return code, string(out)
}

// Every flag value that reaches a settings file, a unit or a command line
// is refused with a control character in it, in one line that shows it
// escaped, before anything is touched.
func TestFlagsRefuseControlCharacters(t *testing.T) {
	root := t.TempDir()
	for _, h := range []string{"\nPrivateUsers=no", "\n[Files]\nBind=/:/host", "\t", "\x1b[2J", "\x00", "\u0085", "\xff"} {
		for _, args := range [][]string{
			{"boot", "web", "--bind", "/srv/data" + h},
			{"boot", "web", "--bind", "/srv/data:/data" + h},
			{"boot", "web", "--bind-ro", "/srv/data:/data:idmap" + h},
			{"boot", "web", "--network", "bridge:br0" + h},
			{"boot", "web", "--network", "zone:lab" + h},
			{"boot", "web", "--port", "8080" + h},
			{"boot", "web", "--memory", "1G" + h},
			{"boot", "web", "--cpus", "1" + h},
			{"bind", "web", "/srv/data" + h, "/data"},
			{"bind", "web", "/srv/data", "/data" + h},
		} {
			code, out := stderr(t, append([]string{"--root-dir", root}, args...)...)
			if code != exitUsage {
				t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, out)
			}
			if strings.Count(out, "\n") != 1 || len(rawControls(out)) > 0 || !strings.Contains(out, "invalid option") {
				t.Errorf("%q: want one escaped line, got %q", args, out)
			}
		}
	}
	// Not a number is no limit either (ParseFloat reads "NaN").
	for _, args := range [][]string{{"boot", "web", "--cpus", "NaN"}, {"boot", "web", "--cpus", "nan"}} {
		if code, out := stderr(t, append([]string{"--root-dir", root}, args...)...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, out)
		}
	}
}
