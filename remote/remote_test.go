package remote

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
)

// hostile are words that a shell would read as more than one word, or
// run: they must reach the remote program as they are.
var hostile = []string{
	"", " ", "a b", "'", `"`, `\`, `'\''`, "$(touch PWNED)", "`touch PWNED`", "$HOME", "${IFS}",
	"a\nb", "\n", "\t", "-rf", "--", "-", ";", "&&", "|", "*", "?", "[a]", "~", "#x", "!", "a'b\"c",
	"é ü", "\x01\x7f", "%s", "'; touch PWNED; '",
}

func TestQuoteRoundTrip(t *testing.T) {
	shells := []string{"/bin/sh"}
	for _, sh := range []string{"/bin/bash", "/bin/dash", "/usr/bin/zsh"} {
		if _, err := os.Stat(sh); err == nil {
			shells = append(shells, sh)
		}
	}
	dir := t.TempDir()
	for _, sh := range shells {
		line := "printf '%s\\0' " + strings.Join(func() []string {
			q := make([]string, len(hostile))
			for i, w := range hostile {
				q[i] = Quote(w)
			}
			return q
		}(), " ")
		cmd := exec.Command(sh, "-c", line)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", sh, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		if !reflect.DeepEqual(got, hostile) {
			t.Errorf("%s: words came back as %q, want %q", sh, got, hostile)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "PWNED")); err == nil {
		t.Error("a quoted word ran a command")
	}
}

func TestCommandLine(t *testing.T) {
	got, err := CommandLine("nsbox", 1, []string{"shell", "web", "--", "sh", "-c", "echo 'hi'"})
	if err != nil {
		t.Fatal(err)
	}
	want := `'nsbox' '__remote' '1' 'shell' 'web' '--' 'sh' '-c' 'echo '\''hi'\'''`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if _, err := CommandLine("nsbox", 1, []string{"a\x00b"}); err == nil {
		t.Error("a word with NUL was taken")
	}
}

func TestParseHost(t *testing.T) {
	good := map[string]Host{
		"web":                 {Name: "web"},
		"root@web":            {User: "root", Name: "web"},
		"web:2222":            {Name: "web", Port: 2222},
		"u.x_y@h-1.example":   {User: "u.x_y", Name: "h-1.example"},
		"10.0.0.2:22":         {Name: "10.0.0.2", Port: 22},
		"[::1]:2222":          {Name: "::1", Port: 2222},
		"root@[fe80::1%eth0]": {User: "root", Name: "fe80::1%eth0"},
		"::1":                 {Name: "::1"},
		"[::1]":               {Name: "::1"},
	}
	for in, want := range good {
		got, err := ParseHost(in)
		if err != nil || got != want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if err == nil {
			// String gives a value that parses the same.
			again, err := ParseHost(got.String())
			if err != nil || again != got {
				t.Errorf("ParseHost(%q.String() = %q) = %+v, %v", in, got.String(), again, err)
			}
		}
	}
	bad := []string{
		"", "-oProxyCommand=touch /tmp/x", "-p", "root@-oProxyCommand=x", "-root@web", "@web", "root@",
		"web:", "web:0", "web:65536", "web:22x", "web:-1", "web: 22", "web:+22", "a b", "web\n", "web\t",
		"we'b", "we\"b", "we$(x)b", "we;b", "root@web@x", "[::1", "[::1]x", "[::1]:", "[web]:22", "::1:zz:g",
		"web/x", "root:pw@web", "\x1b[31m", "wéb",
	}
	for _, in := range bad {
		if h, err := ParseHost(in); err == nil {
			t.Errorf("ParseHost(%q) = %+v, want an error", in, h)
		} else if !errors.Is(err, ErrHost) {
			t.Errorf("ParseHost(%q): %v is not ErrHost", in, err)
		}
	}
}

func TestParseHosts(t *testing.T) {
	hs, err := ParseHosts("a, root@b:2222\tc")
	if err != nil || len(hs) != 3 || hs[1] != (Host{User: "root", Name: "b", Port: 2222}) {
		t.Errorf("got %+v, %v", hs, err)
	}
	if _, err := ParseHosts("a,-oX=y"); err == nil {
		t.Error("an option among hosts was taken")
	}
}

func TestSSHArgs(t *testing.T) {
	got := SSHArgs([]string{"ssh", "-F", "cfg"}, Host{User: "root", Name: "web", Port: 2222}, WantTTY, "'nsbox'")
	want := []string{"ssh", "-F", "cfg", "-t", "-p", "2222", "-l", "root", "--", "web", "'nsbox'"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	got = SSHArgs([]string{"ssh"}, Host{Name: "web"}, NoTTY, "x")
	if !reflect.DeepEqual(got, []string{"ssh", "-T", "--", "web", "x"}) {
		t.Errorf("got %q", got)
	}
	if _, err := SSHCommand("-oProxyCommand=x"); err == nil {
		t.Error("NSBOX_SSH starting with an option was taken")
	}
	if c, _ := SSHCommand(""); !reflect.DeepEqual(c, []string{"ssh"}) {
		t.Errorf("default ssh: %q", c)
	}
}

func TestHeader(t *testing.T) {
	line := FormatHeader(Header{Min: 1, Max: 2, Version: "0.1.0 (commit x)\x1b[2J"})
	if line != "nsbox-remote/1-2 0.1.0 (commit x)[2J\n" {
		t.Errorf("header line %q", line)
	}
	h, ok := ParseHeader(strings.TrimSuffix(line, "\n"))
	if !ok || h.Min != 1 || h.Max != 2 || !h.Speaks(1) || !h.Speaks(2) || h.Speaks(3) {
		t.Errorf("parsed %+v %v", h, ok)
	}
	for _, bad := range []string{"nsbox-remote/", "nsbox-remote/1", "nsbox-remote/2-1 x", "nsbox-remote/a-b x", "xnsbox-remote/1-1 x"} {
		if _, ok := ParseHeader(bad); ok {
			t.Errorf("ParseHeader(%q) took it", bad)
		}
	}
}

func TestFilter(t *testing.T) {
	hdr := "nsbox-remote/1-1 0.1.0\n"
	cases := []struct {
		name   string
		writes []string
		want   string
		found  bool
	}{
		{"header first", []string{hdr, "out\n"}, "out\n", true},
		{"ssh warning first", []string{"Warning: Permanently added x\n", hdr, "err"}, "Warning: Permanently added x\nerr", true},
		{"in pieces", []string{"nsbox-re", "mote/1-1 v\r", "\nrest"}, "rest", true},
		{"through a terminal", []string{"nsbox-remote/1-1 v\r\n\x1b[1mprompt# "}, "\x1b[1mprompt# ", true},
		{"none", []string{"bash: nsbox: command not found\n"}, "bash: nsbox: command not found\n", false},
		{"only the first", []string{hdr, hdr}, hdr, true},
		{"a partial last line", []string{"no end"}, "no end", false},
		{"a long line is passed", []string{strings.Repeat("x", maxLine+10), "\n", hdr}, strings.Repeat("x", maxLine+10) + "\n", true},
	}
	for _, c := range cases {
		var b bytes.Buffer
		f := NewFilter(&b)
		for _, w := range c.writes {
			if n, err := f.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("%s: Write = %d, %v", c.name, n, err)
			}
		}
		f.Flush()
		_, found := f.Header()
		if b.String() != c.want || found != c.found {
			t.Errorf("%s: passed %q (header %v), want %q (header %v)", c.name, b.String(), found, c.want, c.found)
		}
	}
}

func TestOutcome(t *testing.T) {
	h := Host{Name: "web"}
	ok := Header{Min: 1, Max: 1, Version: "0.1.0"}
	cases := []struct {
		name string
		r    Result
		code int
		msg  string
	}{
		{"the command's status", Result{Status: 3, Header: ok, Seen: true}, 3, ""},
		{"the command's own 255", Result{Status: 255, Header: ok, Seen: true}, 255, ""},
		{"cannot connect", Result{Status: 255}, ExitConnect, "ssh could not connect"},
		{"no nsbox", Result{Status: 127}, ExitMissing, "nsbox is not installed on web"},
		{"too old, no header", Result{Status: 2}, ExitProtocol, "did not answer in the remote protocol"},
		{"too old", Result{Status: 126, Header: Header{Min: 0, Max: 0, Version: "0.0.1"}, Seen: true}, ExitProtocol, "speaks remote protocol 0 (nsbox 0.0.1), this one speaks 1 (nsbox here-v): upgrade nsbox on web"},
		{"too new", Result{Status: 126, Header: Header{Min: 2, Max: 3, Version: "0.9"}, Seen: true}, ExitProtocol, "speaks remote protocol 2 to 3 (nsbox 0.9), this one speaks 1 (nsbox here-v): upgrade nsbox here"},
	}
	for _, c := range cases {
		code, err := Outcome(h, c.r, "here-v")
		if code != c.code {
			t.Errorf("%s: exit %d, want %d", c.name, code, c.code)
		}
		switch {
		case c.msg == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.msg != "" && (err == nil || !strings.Contains(err.Error(), c.msg)):
			t.Errorf("%s: error %v, want one with %q", c.name, err, c.msg)
		}
	}
}

// fakeSSH puts an ssh on PATH that records its arguments and runs the
// remote command line with sh, as sshd's login shell would (or fails as
// ssh does with FAKE_SSH=refuse), and a fake nsbox that prints its
// header (FAKE_HEADER), its arguments one a line, and exits
// FAKE_STATUS.
func fakeSSH(t *testing.T) (dir string) {
	dir = t.TempDir()
	ssh := `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_DIR/ssh-args"
if [ "$FAKE_SSH" = refuse ]; then
	echo "ssh: connect to host web port 22: Connection refused" >&2
	exit 255
fi
for last; do :; done
exec sh -c "$last"
`
	nsbox := `#!/bin/sh
if [ "$1" = --version ]; then echo "nsbox 0.0.9 (commit old)"; exit 0; fi
[ -n "$FAKE_HEADER" ] && printf '%s\n' "$FAKE_HEADER" >&2
shift 1
for a; do printf '[%s]' "$a"; done
echo
echo "to stderr" >&2
exit "${FAKE_STATUS:-0}"
`
	for name, text := range map[string]string{"ssh": ssh, "nsbox": nsbox} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_DIR", dir)
	return dir
}

func TestRunWithFakeSSH(t *testing.T) {
	dir := fakeSSH(t)
	run := func(args ...string) (Result, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		res, err := Run(context.Background(), Spec{SSH: []string{"ssh"}, Host: Host{User: "root", Name: "web", Port: 2222},
			Program: filepath.Join(dir, "nsbox"), Args: args, Stdout: &out, Stderr: &errb})
		if err != nil {
			t.Fatal(err)
		}
		return res, out.String(), errb.String()
	}
	t.Setenv("FAKE_HEADER", "nsbox-remote/1-1 0.1.0")
	t.Setenv("FAKE_STATUS", "3")
	res, out, errText := run("shell", "web", "--", "a b", "$(touch PWNED)", "'", "-x", "l1\nl2")
	if want := "[1][shell][web][--][a b][$(touch PWNED)]['][-x][l1\nl2]\n"; out != want {
		t.Errorf("the remote got %q, want %q", out, want)
	}
	if errText != "to stderr\n" || !res.Seen || res.Status != 3 {
		t.Errorf("stderr %q, result %+v", errText, res)
	}
	if code, err := Outcome(Host{Name: "web"}, res, "v"); code != 3 || err != nil {
		t.Errorf("outcome %d, %v", code, err)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "ssh-args"))
	if !strings.HasPrefix(string(args), "-T\n-p\n2222\n-l\nroot\n--\nweb\n") {
		t.Errorf("ssh was run with %q", args)
	}

	t.Setenv("FAKE_SSH", "refuse")
	res, _, errText = run("list")
	if code, err := Outcome(Host{Name: "web"}, res, "v"); code != ExitConnect || err == nil || !strings.Contains(errText, "Connection refused") {
		t.Errorf("refused: %d, %v, stderr %q", code, err, errText)
	}
	t.Setenv("FAKE_SSH", "")

	// No nsbox there: the shell's 127.
	var errb bytes.Buffer
	res, err := Run(context.Background(), Spec{SSH: []string{"ssh"}, Host: Host{Name: "web"}, Program: filepath.Join(dir, "missing"),
		Stdout: &bytes.Buffer{}, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := Outcome(Host{Name: "web"}, res, "v"); code != ExitMissing || err == nil {
		t.Errorf("missing: %d, %v (%q)", code, err, errb.String())
	}

	// A newer remote.
	t.Setenv("FAKE_HEADER", "nsbox-remote/2-2 0.9.0")
	t.Setenv("FAKE_STATUS", "126")
	res, _, _ = run("list")
	if code, err := Outcome(Host{Name: "web"}, res, "v"); code != ExitProtocol || err == nil || !strings.Contains(err.Error(), "upgrade nsbox here") {
		t.Errorf("newer: %d, %v", code, err)
	}

	// An older nsbox without the protocol: no header.
	t.Setenv("FAKE_HEADER", "")
	t.Setenv("FAKE_STATUS", "2")
	res, _, _ = run("list")
	if code, err := Outcome(Host{Name: "web"}, res, "v"); code != ExitProtocol || err == nil {
		t.Errorf("older: %d, %v", code, err)
	}
	// Explain asks it for its version.
	spec := Spec{SSH: []string{"ssh"}, Host: Host{Name: "web"}, Program: filepath.Join(dir, "nsbox")}
	if code, err := Explain(context.Background(), spec, res, "0.1.0"); code != ExitProtocol || err == nil ||
		!strings.Contains(err.Error(), "nsbox there (nsbox 0.0.9 (commit old)) does not speak the remote protocol; this one speaks 1 (nsbox 0.1.0): upgrade nsbox on web") {
		t.Errorf("older, explained: %d, %v", code, err)
	}
	// A host that is not nsbox's answers no version: the plain message.
	spec.Program = "/bin/false"
	if _, err := Explain(context.Background(), spec, res, "0.1.0"); err == nil || !strings.Contains(err.Error(), "did not answer in the remote protocol") {
		t.Errorf("no version: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PWNED")); err == nil {
		t.Error("a word ran a command on the remote side")
	}
}

func TestRunWithoutSSH(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Run(context.Background(), Spec{SSH: []string{"ssh"}, Host: Host{Name: "web"}, Program: "nsbox",
		Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), "openssh-client") {
		t.Errorf("got %v", err)
	}
}
