package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/host"
)

// userdbRunner answers getent from a passwd and a group text, as the
// host's user database would, and fails every other program.
type userdbRunner struct {
	passwd, group string
	ran           []string
}

func (r *userdbRunner) Run(ctx context.Context, c *host.Cmd) error {
	r.ran = append(r.ran, c.String())
	if c.Path != "getent" || len(c.Args) != 3 || c.Args[1] != "--" {
		return &host.ExitError{Cmd: c.Path, Status: 1}
	}
	text, key := r.passwd, c.Args[2]
	if c.Args[0] == "group" {
		text = r.group
	}
	for _, f := range entryFields(text) {
		if f[0] == key || c.Args[0] == "group" && f[2] == key {
			c.Stdout.Write([]byte(strings.Join(f, ":") + "\n"))
			return nil
		}
	}
	return &host.ExitError{Cmd: "getent", Status: 2}
}

func TestValidateBindUser(t *testing.T) {
	for _, ok := range []string{"alice", "_svc", "a-b_c9", "A", strings.Repeat("a", 31)} {
		if err := ValidateBindUser(ok); err != nil {
			t.Errorf("ValidateBindUser(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "root", "nobody", "9lives", "-rf", "a b", "a/b", "a:b", "../x", "fööbar", "a\nb", strings.Repeat("a", 32), "a.b"} {
		if err := ValidateBindUser(bad); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "--bind-user") {
			t.Errorf("ValidateBindUser(%q) = %v; want an invalid option naming --bind-user", bad, err)
		}
	}
}

const (
	testPasswd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n" +
		"alice:x:1000:1000:Alice:HOME:/usr/bin/zsh\nshared:x:1001:100::HOME:/bin/sh\nhomeless:x:1002:1002::/nonexistent-home:/bin/sh\n" +
		"zero:x:0:1003::/:/bin/sh\n"
	testGroup = "root:x:0:\nusers:x:100:\nalice:x:1000:\nhomeless:x:1002:\nzero:x:1003:\n"
)

func TestLookupHostUser(t *testing.T) {
	r := &userdbRunner{passwd: strings.ReplaceAll(testPasswd, "HOME", "/home/alice"), group: testGroup}
	u, ok, err := LookupHostUser(context.Background(), r, "alice")
	want := HostUser{Name: "alice", UID: 1000, GID: 1000, Group: "alice", Home: "/home/alice", Shell: "/usr/bin/zsh"}
	if err != nil || !ok || u != want {
		t.Errorf("alice: %+v, %v, %v; want %+v", u, ok, err, want)
	}
	if _, ok, err := LookupHostUser(context.Background(), r, "nosuch"); ok || err != nil {
		t.Errorf("nosuch: %v, %v; want not found and no error", ok, err)
	}
	// A database that fails is an error, not "no such user".
	if _, _, err := LookupHostUser(context.Background(), &noRunner{}, "alice"); err == nil {
		t.Error("a failing getent: want an error")
	}
}

func TestCheckBindUsers(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{})
	home := t.TempDir()
	m.Runner = &userdbRunner{passwd: strings.ReplaceAll(testPasswd, "HOME", home), group: testGroup}
	if err := m.checkBindUsers(ctx, []string{"alice"}, true); err != nil {
		t.Errorf("alice: %v", err)
	}
	if err := m.checkBindUsers(ctx, nil, false); err != nil {
		t.Errorf("no users without userns: %v", err)
	}
	for _, tc := range []struct {
		users   []string
		private bool
		says    string
	}{
		{[]string{"alice"}, false, "user namespace"},
		{[]string{"nosuch"}, true, "no such user"},
		{[]string{"alice", "nosuch"}, true, "nosuch"},
		{[]string{"root"}, true, "ordinary users"},
		{[]string{"zero"}, true, "uid 0"},
		{[]string{"shared"}, true, "private group"},
		{[]string{"homeless"}, true, "not a directory"},
		{[]string{"a b"}, true, "--bind-user"},
		{make([]string, 65), true, "at most 64"},
	} {
		err := m.checkBindUsers(ctx, tc.users, tc.private)
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%v (private users %v): %v; want an invalid option saying %q", tc.users, tc.private, err, tc.says)
		}
	}
}

// userdbTree makes a machine tree that looks users up as nsswitch says,
// with nss-systemd's module when lib.
func userdbTree(t *testing.T, nsswitch string, lib bool) string {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc", "group"), []byte("root:x:0:\nbob:x:1000:\ncarol:x:1001:\n"), 0o644)
	if nsswitch != "" {
		os.WriteFile(filepath.Join(dir, "etc", "nsswitch.conf"), []byte(nsswitch), 0o644)
	}
	if lib {
		os.MkdirAll(filepath.Join(dir, "usr", "lib", "x86_64-linux-gnu"), 0o755)
		os.WriteFile(filepath.Join(dir, "usr", "lib", "x86_64-linux-gnu", "libnss_systemd.so.2"), nil, 0o644)
	}
	return dir
}

func TestCheckBindUsersIn(t *testing.T) {
	const withSystemd = "# a comment: passwd: files\npasswd:         files systemd\ngroup: files systemd\n"
	good := userdbTree(t, withSystemd, true)
	if err := checkBindUsersIn("dev", good, []string{"alice"}); err != nil {
		t.Errorf("a tree with nss-systemd: %v", err)
	}
	if err := checkBindUsersIn("dev", userdbTree(t, "passwd: files\n", false), nil); err != nil {
		t.Errorf("no users to bind: %v", err)
	}
	for _, tc := range []struct {
		what string
		dir  string
		says string
	}{
		{"files only", userdbTree(t, "passwd: files\ngroup: files\n", true), "libnss-systemd"},
		{"no nsswitch.conf", userdbTree(t, "", true), "libnss-systemd"},
		{"no module", userdbTree(t, withSystemd, false), "libnss-systemd"},
		{"systemd only in a comment", userdbTree(t, "passwd: files # systemd\n", true), "libnss-systemd"},
	} {
		if err := checkBindUsersIn("dev", tc.dir, []string{"alice"}); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v; want an invalid option saying %q", tc.what, err, tc.says)
		}
	}
	// A name the machine has already, as a user or as a group.
	for user, says := range map[string]string{"bob": "a user bob of its own in /etc/passwd", "carol": "a group carol of its own in /etc/group"} {
		if err := checkBindUsersIn("dev", good, []string{"alice", user}); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v; want %q", user, err, says)
		}
	}
}

func TestBindUsersSettings(t *testing.T) {
	o := DefaultBootOptions()
	o.BindUsers = []string{"alice", "bob"}
	text, err := o.SettingsText()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "[Files]\nPrivateUsersOwnership=auto\nBindUser=alice\nBindUser=bob\n") {
		t.Errorf("settings file:\n%s", text)
	}
	back, err := ParseSettingsFile(text)
	if err != nil || !reflect.DeepEqual(back.BindUsers, o.BindUsers) {
		t.Errorf("read back: %v, %v", back.BindUsers, err)
	}
	// nspawn reads a list on one line, and an empty value drops those
	// above it.
	back, err = ParseSettingsFile("[Exec]\nPrivateUsers=pick\n[Files]\nBindUser=x\nBindUser=\nBindUser=alice  bob\n")
	if err != nil || !reflect.DeepEqual(back.BindUsers, []string{"alice", "bob"}) {
		t.Errorf("a list and a reset: %v, %v", back.BindUsers, err)
	}
	if _, err := ParseSettingsFile("[Files]\nBindUser=root\n"); err == nil {
		t.Error("BindUser=root read without an error")
	}
	// A rewrite replaces the key, keeping the user's own lines.
	o, _ = ParseSettingsFile("[Files]\n# mine\nBindUser=alice\nTemporaryFileSystem=/tmp\n")
	o.BindUsers = []string{"bob"}
	text, err = o.SettingsText()
	if err != nil || strings.Contains(text, "alice") || !strings.Contains(text, "BindUser=bob") || !strings.Contains(text, "# mine\nTemporaryFileSystem=/tmp") {
		t.Errorf("rewrite: %v\n%s", err, text)
	}
	// What edit refuses.
	for file, says := range map[string]string{
		"[Files]\nBindUser=\n":                             "drops the users above it",
		"[Files]\nBindUser=a:b\n":                          "--bind-user",
		"[Exec]\nPrivateUsers=no\n[Files]\nBindUser=bob\n": "PrivateUsers=pick",
	} {
		problems, _ := CheckSettings(file)
		if len(problems) == 0 || !strings.Contains(problems[0].Why, says) {
			t.Errorf("%q: problems %+v; want one saying %q", file, problems, says)
		}
	}
	if problems, _ := CheckSettings("[Exec]\nPrivateUsers=pick\n[Files]\nBindUser=alice bob\n"); len(problems) != 0 {
		t.Errorf("a good BindUser=: %+v", problems)
	}
}

func TestBootRefusesBindUsers(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	home := t.TempDir()
	m.Runner = &userdbRunner{passwd: strings.ReplaceAll(testPasswd, "HOME", home), group: testGroup}
	no := false
	for _, tc := range []struct {
		req  BootRequest
		says string
	}{
		{BootRequest{BindUsers: []string{"nosuch"}, BindUsersSet: true}, "no such user"},
		{BootRequest{BindUsers: []string{"alice"}, BindUsersSet: true, PrivateUsers: &no}, "user namespace"},
		// mkMachine's tree has no nss-systemd.
		{BootRequest{BindUsers: []string{"alice"}, BindUsersSet: true}, "nss-systemd"},
	} {
		err := m.Boot(ctx, "web", tc.req)
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%+v: %v; want an invalid option saying %q", tc.req, err, tc.says)
		}
		// Nothing remembered, nothing left.
		if _, err := os.Stat(m.settingsPath("web")); !os.IsNotExist(err) {
			t.Errorf("%+v: a settings file was left: %v", tc.req, err)
		}
	}
}

func TestResolveBoundUser(t *testing.T) {
	m, _ := newTestManager(t, &fakeMachined{})
	mkMachine(t, m, "web")
	os.WriteFile(filepath.Join(m.Dir("web"), "etc", "passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(m.Dir("web"), "etc", "nsswitch.conf"), []byte("passwd: files systemd\n"), 0o644)
	if _, err := m.ResolveUser("web", "alice"); err == nil {
		t.Error("alice before she is bound: want an error naming --uid")
	}
	os.MkdirAll(m.SettingsDir, 0o755)
	os.WriteFile(m.settingsPath("web"), []byte("[Exec]\nPrivateUsers=pick\n[Files]\nBindUser=alice\n"), 0o644)
	if got, err := m.ResolveUser("web", "alice"); err != nil || got != "alice" {
		t.Errorf("a bound user: %q, %v", got, err)
	}
	if _, err := m.ResolveUser("web", "bob"); err == nil || !strings.Contains(err.Error(), "--uid") {
		t.Errorf("bob, neither bound nor in passwd: %v", err)
	}
	// A record of the machine's own user database.
	os.MkdirAll(filepath.Join(m.Dir("web"), "etc", "userdb"), 0o755)
	os.WriteFile(filepath.Join(m.Dir("web"), "etc", "userdb", "bob.user"), []byte("{}"), 0o644)
	if got, err := m.ResolveUser("web", "bob"); err != nil || got != "bob" {
		t.Errorf("bob in /etc/userdb: %q, %v", got, err)
	}
}

func TestOrdinaryUsers(t *testing.T) {
	got := OrdinaryUsers("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n" +
		"svc:x:999:999::/:/bin/sh\nbad name:x:1001:1001::/:/bin/sh\nbob:x:60000:60000::/:/bin/sh\n")
	if !reflect.DeepEqual(got, []string{"alice", "bob"}) {
		t.Errorf("OrdinaryUsers = %q", got)
	}
}
