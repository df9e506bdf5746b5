package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/remote"
)

func TestSplitHosts(t *testing.T) {
	app := newApp()
	cases := []struct {
		in, hosts, rest []string
	}{
		{[]string{"nsbox", "-H", "a", "list"}, []string{"a"}, []string{"nsbox", "list"}},
		{[]string{"nsbox", "--host", "a", "-q", "--host=b", "-H=c", "list", "-o", "json"}, []string{"a", "b", "c"}, []string{"nsbox", "-q", "list", "-o", "json"}},
		// The command's own words are not -H: logs --host, and what
		// follows the machine name or "--".
		{[]string{"nsbox", "logs", "web", "--host"}, nil, []string{"nsbox", "logs", "web", "--host"}},
		{[]string{"nsbox", "shell", "web", "--", "cmd", "-H", "x"}, nil, []string{"nsbox", "shell", "web", "--", "cmd", "-H", "x"}},
		{[]string{"nsbox", "list"}, nil, []string{"nsbox", "list"}},
	}
	for _, c := range cases {
		hosts, rest, err := splitHosts(app, c.in)
		if err != nil || !reflect.DeepEqual(hosts, c.hosts) || !reflect.DeepEqual(rest, c.rest) {
			t.Errorf("splitHosts(%q) = %q, %q, %v; want %q, %q", c.in, hosts, rest, err, c.hosts, c.rest)
		}
	}
}

// noSSH puts an ssh on PATH that leaves a mark when it runs.
func noSSH(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ssh"), []byte("#!/bin/sh\ntouch \"$0.ran\"\nexit 99\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	t.Setenv("NSBOX_SSH", "")
	return filepath.Join(dir, "ssh.ran")
}

func TestRemoteRefusedBeforeSSH(t *testing.T) {
	mark := noSSH(t)
	for _, args := range [][]string{
		{"-H", "-oProxyCommand=touch /tmp/x", "list"},
		{"-H", "root@-oProxyCommand=x", "list"},
		{"-H", "web:22x", "list"},
		{"-H", "a b", "list"},
		{"-H", "web\n", "status", "x"},
		{"-H", "a", "-H", "b", "shell", "web"},
		{"list", "-H"},
	} {
		if _, code := capture(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	t.Setenv("NSBOX_HOST", "-oProxyCommand=x")
	if _, code := capture(t, "list"); code != exitUsage {
		t.Errorf("NSBOX_HOST=-oProxyCommand=x: exit %d", code)
	}
	t.Setenv("NSBOX_HOST", "")
	t.Setenv("NSBOX_SSH", "-oProxyCommand=x ssh")
	if _, code := capture(t, "-H", "web", "list"); code != exitUsage {
		t.Errorf("NSBOX_SSH starting with an option: exit %d", code)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Error("ssh ran for a refused command line")
	}
}

// fakeRemote puts an ssh on PATH that runs the remote command line with
// sh, and makes NSBOX_REMOTE_PROGRAM this test binary's stand-in: a
// script that runs the remote side's header logic is not needed, the
// real serveRemote is tested below.
func TestRemoteExitStatuses(t *testing.T) {
	dir := t.TempDir()
	ssh := "#!/bin/sh\nif [ \"$FAKE_SSH\" = refuse ]; then echo 'ssh: connect to host web port 22: Connection refused' >&2; exit 255; fi\nfor last; do :; done\nexec sh -c \"$last\"\n"
	fake := "#!/bin/sh\nprintf 'nsbox-remote/%s 0.9.9\\n' \"$FAKE_RANGE\" >&2\nexit \"$FAKE_STATUS\"\n"
	os.WriteFile(filepath.Join(dir, "ssh"), []byte(ssh), 0o755)
	os.WriteFile(filepath.Join(dir, "nsbox"), []byte(fake), 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	t.Setenv("NSBOX_SSH", "")
	t.Setenv("NSBOX_REMOTE_PROGRAM", filepath.Join(dir, "nsbox"))
	cases := []struct {
		env  map[string]string
		code int
	}{
		{map[string]string{"FAKE_RANGE": "1-1", "FAKE_STATUS": "7"}, 7},
		{map[string]string{"FAKE_RANGE": "1-1", "FAKE_STATUS": "0"}, 0},
		{map[string]string{"FAKE_RANGE": "2-2", "FAKE_STATUS": "126"}, remote.ExitProtocol},
		{map[string]string{"FAKE_SSH": "refuse"}, remote.ExitConnect},
		{map[string]string{"NSBOX_REMOTE_PROGRAM": filepath.Join(dir, "absent")}, remote.ExitMissing},
	}
	for _, c := range cases {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		if _, code := capture(t, "-H", "root@web:2222", "status", "web"); code != c.code {
			t.Errorf("%v: exit %d, want %d", c.env, code, c.code)
		}
		for k := range c.env {
			os.Unsetenv(k)
		}
		t.Setenv("NSBOX_REMOTE_PROGRAM", filepath.Join(dir, "nsbox"))
	}
}

// serve runs the remote side and returns what it wrote on stderr.
func serve(t *testing.T, args ...string) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	code := run(append([]string{"nsbox", remote.Command}, args...))
	w.Close()
	os.Stderr = old
	out, _ := io.ReadAll(r)
	return string(out), code
}

func TestServeRemoteVersions(t *testing.T) {
	for _, v := range []string{"0", "3", "x", "-1"} {
		errText, code := serve(t, v, "list")
		if code != remote.ExitProtocol {
			t.Errorf("version %q: exit %d", v, code)
		}
		h, ok := remote.ParseHeader(strings.SplitN(errText, "\n", 2)[0])
		if !ok || h.Min != remote.MinProtocol || h.Max != remote.Protocol {
			t.Errorf("version %q: first line %q", v, errText)
		}
	}
	if _, code := serve(t); code != remote.ExitProtocol {
		t.Errorf("no version: exit %d", code)
	}
	// The remote side refuses -H: no command goes further.
	mark := noSSH(t)
	if errText, code := serve(t, "1", "-H", "other", "list"); code != exitUsage || !strings.Contains(errText, "-H is not taken") {
		t.Errorf("-H through -H: exit %d, %q", code, errText)
	}
	t.Setenv("NSBOX_HOST", "other")
	if errText, code := serve(t, "1", "--root-dir", "relative", "list"); code != exitUsage || strings.Contains(errText, "not taken") {
		t.Errorf("NSBOX_HOST on the remote side: exit %d, %q", code, errText)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Error("the remote side ran ssh")
	}
}

func TestCompleteHostsFromSSHConfig(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Host web1 web2\n  User root\nhost *.example db-?\nHost -oProxyCommand=x\nMatch all\n"), 0o600)
	out, code := capture(t, "-H", "--generate-bash-completion")
	if code != 0 || out != "web1\nweb2\n" {
		t.Errorf("hosts offered after -H: %d %q", code, out)
	}
}

func TestRemoteTTY(t *testing.T) {
	// The test's stdin is no terminal: only shell -t gets one.
	cases := []struct {
		cmd   string
		words []string
		want  remote.TTY
	}{
		{"shell", []string{"shell", "-t", "web"}, remote.ForceTTY},
		{"shell", []string{"shell", "--tty", "web", "--", "top"}, remote.ForceTTY},
		{"shell", []string{"shell", "-T", "web"}, remote.NoTTY},
		{"shell", []string{"shell", "web", "--", "sh", "-t"}, remote.NoTTY},
		{"shell", []string{"shell", "web"}, remote.NoTTY},
		{"list", []string{"list", "-t"}, remote.NoTTY},
		{"boot", []string{"boot", "--console", "web"}, remote.NoTTY},
	}
	for _, c := range cases {
		if got := remoteTTY(c.cmd, c.words); got != c.want {
			t.Errorf("remoteTTY(%q) = %v, want %v", c.words, got, c.want)
		}
	}
}

// A command that does not read its input gets none through -H (ssh -n):
// a loop reading the same input keeps it.
func TestRemoteStdinOnlyForReaders(t *testing.T) {
	dir := t.TempDir()
	ssh := "#!/bin/sh\ncat > \"$FAKE_DIR/stdin\"\nprintf 'nsbox-remote/1-1 x\\n' >&2\n"
	os.WriteFile(filepath.Join(dir, "ssh"), []byte(ssh), 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_DIR", dir)
	t.Setenv("NSBOX_SSH", "")
	for cmd, want := range map[string]string{"status": "", "list": "", "shell": "input\n", "import": "input\n"} {
		r, w, _ := os.Pipe()
		w.WriteString("input\n")
		w.Close()
		old := os.Stdin
		os.Stdin = r
		_, code := capture(t, "-H", "web", cmd, "x")
		os.Stdin = old
		r.Close()
		got, _ := os.ReadFile(filepath.Join(dir, "stdin"))
		if code != 0 || string(got) != want {
			t.Errorf("%s: exit %d, the remote got %q on stdin, want %q", cmd, code, got, want)
		}
	}
}

// list of several hosts: each host's objects get "host" first, a host
// answering garbage is named and left out, the others are listed.
func TestListSeveralHosts(t *testing.T) {
	dir := t.TempDir()
	// The fake ssh answers by the host it is given (the word after --).
	ssh := `#!/bin/sh
while [ "$1" != -- ]; do shift; done
host=$2
printf 'nsbox-remote/1-1 x\n' >&2
case $host in
a) printf '[{"name":"web","state":"running","managed":true}]' ;;
b) printf '[]' ;;
c) echo "warning from c" >&2; printf 'garbage' ;;
d) printf '[{"name":"db","state":"stopped","os":"debian\u001b[2J"}]' ;;
esac
`
	os.WriteFile(filepath.Join(dir, "ssh"), []byte(ssh), 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	t.Setenv("NSBOX_SSH", "")
	out, code := capture(t, "-H", "a", "-H", "b", "-H", "c", "-H", "root@d:2222", "list", "-o", "json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if code != exitError || len(rows) != 2 || rows[0]["host"] != "a" || rows[0]["name"] != "web" || rows[1]["host"] != "root@d:2222" || rows[1]["name"] != "db" {
		t.Errorf("exit %d, rows %v", code, rows)
	}
	if !strings.HasPrefix(strings.TrimSpace(out), "[\n  {\n    \"host\": \"a\",") {
		t.Errorf("host is not the first field:\n%s", out)
	}
	out, code = capture(t, "-H", "a", "-H", "d", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "HOST") || !strings.HasPrefix(lines[1], "a ") || strings.Contains(out, "\x1b") {
		t.Errorf("table: exit %d\n%s", code, out)
	}
}
