package machine

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/machined"
)

func TestNspawnArgs(t *testing.T) {
	base := []string{"--quiet", "--boot", "--directory=/srv/web", "--machine=web", "--keep-unit",
		"--settings=no", "--notify-ready=yes", "--console=read-only", "--link-journal=no"}
	for _, tc := range []struct {
		what string
		cfg  NspawnConfig
		want []string
	}{
		{"defaults on machined", NspawnConfig{Name: "web", Root: "/srv/web", BootOptions: DefaultBootOptions(), Registered: true, ResolvConf: "replace-host"},
			[]string{"--private-users=pick", "--private-users-ownership=auto", "--network-veth", "--resolv-conf=replace-host"}},
		{"direct backend", NspawnConfig{Name: "web", Root: "/srv/web", BootOptions: DefaultBootOptions()},
			[]string{"--register=no", "--private-users=pick", "--private-users-ownership=auto", "--network-veth"}},
		{"no network, no userns", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{Network: "none"}},
			[]string{"--private-users=no", "--private-network"}},
		{"host network", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{Network: "host"}},
			[]string{"--private-users=no"}},
		{"bridge and zone", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{Network: "bridge:br0"}},
			[]string{"--private-users=no", "--network-bridge=br0"}},
		{"binds under userns get idmap", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{
			Network: "veth", PrivateUsers: true,
			Binds: []Bind{{Source: "/data", Dest: "/mnt/data"}, {Source: "/ro", Dest: "/ro", ReadOnly: true, Options: "norbind"}}}},
			[]string{"--private-users=pick", "--private-users-ownership=auto", "--network-veth",
				"--bind=/data:/mnt/data:idmap", "--bind-ro=/ro:/ro:norbind"}},
		{"bound users under userns", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{
			Network: "veth", PrivateUsers: true, BindUsers: []string{"alice", "bob"}}},
			[]string{"--private-users=pick", "--private-users-ownership=auto", "--network-veth", "--bind-user=alice", "--bind-user=bob"}},
		{"no bound users without userns (Boot refuses them)", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{
			Network: "veth", BindUsers: []string{"alice"}}},
			[]string{"--private-users=no", "--network-veth"}},
		{"a colon and a backslash in a bind path are escaped as nspawn reads them", NspawnConfig{Name: "web", Root: "/srv/web", Registered: true, BootOptions: BootOptions{
			Network: "veth", Binds: []Bind{{Source: "/a:b", Dest: `/c\d e`}}}},
			[]string{"--private-users=no", "--network-veth", `--bind=/a\:b:/c\\d e`}},
	} {
		got := NspawnArgs(tc.cfg)
		want := append(append([]string{}, base...), tc.want...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.what, got, want)
		}
	}
}

func TestNspawnArgsSettingsMode(t *testing.T) {
	const fresh = "[Exec]\nBoot=yes\nPrivateUsers=pick\n# a comment of the user's\n[Files]\nBind=/data:/data:idmap\n[Network]\nVirtualEthernet=yes\n"
	const own = "[Exec]\nBoot=yes\nPrivateUsers=pick\nEnvironment=FOO=1\n[Files]\nBind=/data:/data:idmap\nTemporaryFileSystem=/tmp\n[Network]\nVirtualEthernet=yes\n"
	for _, tc := range []struct {
		what, file string
		settings   string
		bindArg    bool
	}{
		// Comments alone need no file: nspawn reads none, and a NAME.nspawn
		// beside the image is never consulted.
		{"nsbox's keys and comments", fresh, "--settings=no", true},
		// Keys of the user's own: nspawn reads the trusted /etc file, and the
		// binds come from it so that TemporaryFileSystem= is not dropped.
		{"user keys", own, "--settings=yes", false},
		// An assignment before the first section, which nspawn ignores, is
		// no key of the user's that needs the file read.
		{"an assignment outside a section", "Environment=FOO=1\n" + fresh, "--settings=no", true},
		// A continued line is one key of the user's, however many lines.
		{"a continued user key", fresh + "[Exec]\nEnvironment=A=1 \\\n  B=2\n", "--settings=yes", false},
	} {
		o, err := ParseSettingsFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		args := NspawnArgs(NspawnConfig{Name: "web", Root: "/srv/.nsbox/web", BootOptions: o, Registered: true})
		joined := strings.Join(args, " ")
		if !strings.Contains(joined, tc.settings) || strings.Count(joined, "--settings=") != 1 {
			t.Errorf("%s: want %s in %q", tc.what, tc.settings, args)
		}
		if got := strings.Contains(joined, "--bind=/data:/data:idmap"); got != tc.bindArg {
			t.Errorf("%s: --bind on the command line %v, want %v: %q", tc.what, got, tc.bindArg, args)
		}
		for _, must := range []string{"--private-users=pick", "--network-veth"} {
			if !strings.Contains(joined, must) {
				t.Errorf("%s: %s must stay on the command line: %q", tc.what, must, args)
			}
		}
	}
}

func TestParseBind(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want Bind
		err  bool
	}{
		{"/data", Bind{Source: "/data", Dest: "/data"}, false},
		{"/data:/mnt", Bind{Source: "/data", Dest: "/mnt"}, false},
		{"/data:/mnt:norbind", Bind{Source: "/data", Dest: "/mnt", Options: "norbind"}, false},
		{"/data/../x/:/mnt/", Bind{Source: "/x", Dest: "/mnt"}, false},
		{"data:/mnt", Bind{}, true},
		{"/data:mnt", Bind{}, true},
	} {
		got, err := ParseBind(tc.spec, false)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("ParseBind(%q) = %+v, %v", tc.spec, got, err)
		}
	}
}

func TestSettingsFileRoundTrip(t *testing.T) {
	for _, o := range []BootOptions{
		DefaultBootOptions(),
		{Network: "none", PrivateUsers: false},
		{Network: "host", PrivateUsers: true, Binds: []Bind{{Source: "/a", Dest: "/b", Options: "idmap"}, {Source: "/c", Dest: "/c", ReadOnly: true, Options: "idmap"}}},
		{Network: "bridge:br0", PrivateUsers: true},
		{Network: "zone:lab", PrivateUsers: true},
	} {
		text, err := o.SettingsText()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseSettingsFile(text)
		if err != nil {
			t.Fatalf("%v\n%s", err, text)
		}
		if again, err := got.SettingsText(); err != nil || again != text {
			t.Errorf("rewrite of a file nsbox wrote changed it (%v):\n%s\n---\n%s", err, text, again)
		}
		got.file = nil
		if !reflect.DeepEqual(got, o) {
			t.Errorf("round trip:\n got %+v\nwant %+v\n%s", got, o, text)
		}
	}
}

func TestSettingsFileIsNspawnFormat(t *testing.T) {
	text, err := BootOptions{Network: "none", PrivateUsers: true, Binds: []Bind{{Source: "/d", Dest: "/d"}}}.SettingsText()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[Exec]\nBoot=yes\nPrivateUsers=pick\n", "[Files]\nPrivateUsersOwnership=auto\nBind=/d:/d:idmap\n", "[Network]\nPrivate=yes\nVirtualEthernet=no\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("settings file lacks %q:\n%s", want, text)
		}
	}
	if _, err := ParseSettingsFile("[Exec]\nnonsense\n"); err == nil {
		t.Error("a line without = was accepted")
	}
}

// A value with a control character never reaches the unit file: UnitFile
// refuses it, UnitText panics.
func TestUnitFileRefusesControlCharacters(t *testing.T) {
	for _, tc := range []struct {
		what string
		edit func(*backend.StartSpec)
	}{
		{"bind in ExecStart", func(s *backend.StartSpec) {
			s.Argv = append(s.Argv, "--bind=/a\nExecStartPre=/bin/sh -c 'id > /tmp/pwned'")
		}},
		{"root", func(s *backend.StartSpec) { s.Root = "/srv/web\nExecStartPre=/bin/sh" }},
		{"--root-dir in ExecStartPost", func(s *backend.StartSpec) { s.PostStart[2] = "/srv\nExecStartPre=/bin/sh" }},
		{"name", func(s *backend.StartSpec) { s.Name = "web\nExecStartPre=/bin/sh" }},
		{"NEL", func(s *backend.StartSpec) { s.Argv = append(s.Argv, "--port=80\u0085") }},
		{"invalid UTF-8", func(s *backend.StartSpec) { s.Argv = append(s.Argv, "--bind=/\xff") }},
		{"program prefix", func(s *backend.StartSpec) { s.Argv[0] = "+/bin/sh" }},
		{"no program", func(s *backend.StartSpec) { s.Argv = nil }},
	} {
		spec := backend.StartSpec{Name: "web", Root: "/srv/.nsbox/web", Timeout: time.Minute,
			Argv:      []string{"systemd-nspawn", "--directory=/srv/.nsbox/web"},
			PostStart: []string{"/usr/bin/nsbox", "--root-dir", "/srv", "__network-up", "web"}}
		tc.edit(&spec)
		m := &machined.Backend{}
		text, err := m.UnitFile(spec)
		if err == nil || text != "" {
			t.Errorf("%s: UnitFile = %q, %v", tc.what, text, err)
			continue
		}
		if !errors.Is(err, backend.ErrInvalidOption) && !errors.Is(err, backend.ErrInvalidName) {
			t.Errorf("%s: %v is neither ErrInvalidOption nor ErrInvalidName", tc.what, err)
		}
		oneLine(t, err)
	}
}
