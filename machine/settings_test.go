package machine

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine/backend"
)

// hostile are values that would add lines to a settings or unit file, or
// that no file nsbox writes may carry.
var hostile = []struct{ what, s string }{
	{"newline", "\nPrivateUsers=no"},
	{"newline and section", "\n[Files]\nBind=/:/host"},
	{"carriage return", "\rPrivateUsers=no"},
	{"tab", "\tx"},
	{"NUL", "\x00x"},
	{"ESC", "\x1b[2J"},
	{"DEL", "\x7f"},
	{"NEL (C1 as a rune)", "\u0085PrivateUsers=no"},
	{"C1 CSI", "\u009b31m"},
	{"invalid UTF-8", "\xff\xfe"},
}

// oneLine reports whether an error message is one line with no control
// character: the value it quotes is escaped.
func oneLine(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if msg := err.Error(); backend.BadText(msg) != "" {
		t.Errorf("error message carries a control character: %q", msg)
	}
}

func TestParseBindRefusesControlCharacters(t *testing.T) {
	for _, h := range hostile {
		for _, spec := range []string{
			"/a" + h.s,                   // in the source
			"/a:/b" + h.s,                // in the destination
			"/a:/b:idmap" + h.s,          // in the options
			"/data:/mnt" + h.s + ":/srv", // between fields
		} {
			_, err := ParseBind(spec, false)
			if !errors.Is(err, ErrInvalidOption) {
				t.Errorf("%s: ParseBind(%q) = %v, want ErrInvalidOption", h.what, spec, err)
				continue
			}
			if !strings.Contains(err.Error(), "control character") && !strings.Contains(err.Error(), "invalid UTF-8") {
				t.Errorf("%s: ParseBind(%q): %v does not say why", h.what, spec, err)
			}
			oneLine(t, err)
		}
	}
}

func TestParseBindEscaping(t *testing.T) {
	for _, tc := range []struct {
		spec   string
		want   Bind
		String string // how nsbox writes it back
	}{
		{`/a\:b:/c`, Bind{Source: "/a:b", Dest: "/c"}, `/a\:b:/c`},
		{`/a\\b:/c`, Bind{Source: `/a\b`, Dest: "/c"}, `/a\\b:/c`},
		{`/a\\:/c`, Bind{Source: `/a\`, Dest: "/c"}, `/a\\:/c`},
		{"/with space:/mnt/with space", Bind{Source: "/with space", Dest: "/mnt/with space"}, "/with space:/mnt/with space"},
		{"/a:/b :", Bind{Source: "/a", Dest: "/b "}, "/a:/b :"},
		{"/a:/b:norbind,idmap", Bind{Source: "/a", Dest: "/b", Options: "norbind,idmap"}, "/a:/b:norbind,idmap"},
		{"/a::norbind", Bind{Source: "/a", Dest: "/a", Options: "norbind"}, "/a:/a:norbind"},
		{"/100%$HOME:/x", Bind{Source: "/100%$HOME", Dest: "/x"}, "/100%$HOME:/x"},
		{"/a#b;c:/d", Bind{Source: "/a#b;c", Dest: "/d"}, "/a#b;c:/d"},
		{"/é:/ü", Bind{Source: "/é", Dest: "/ü"}, "/é:/ü"},
	} {
		got, err := ParseBind(tc.spec, false)
		if err != nil || got != tc.want {
			t.Errorf("ParseBind(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
			continue
		}
		if s := got.String(); s != tc.String {
			t.Errorf("%+v.String() = %q, want %q", got, s, tc.String)
		}
		back, err := ParseBind(got.String(), false)
		if err != nil || back != got {
			t.Errorf("%q does not read back: %+v, %v", got.String(), back, err)
		}
	}
	for _, spec := range []string{`/a\`, `/a:/b\`, "/a:/b:bad opt", "/a:/b:x;y", `/a:/b:a\b`, "/a:/b:rw:x/y"} {
		if _, err := ParseBind(spec, false); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("ParseBind(%q) accepted", spec)
		}
	}
}

func TestValidateNetwork(t *testing.T) {
	for _, n := range []string{"veth", "none", "host", "bridge:br0", "bridge:br-lan.1", "bridge:abcdefghijklmno", "zone:lab", "zone:abcdefghijkl"} {
		if err := ValidateNetwork(n); err != nil {
			t.Errorf("ValidateNetwork(%q): %v", n, err)
		}
	}
	bad := []string{"bridge:", "zone:", "bridge:0123", "bridge:abcdefghijklmnop", "zone:abcdefghijklm",
		"bridge:a/b", "bridge:a:b", "bridge:a b", "bridge:a%b", "bridge:.", "bridge:é", "bridge", "veth:x"}
	for _, h := range hostile {
		bad = append(bad, "bridge:br"+h.s, "zone:z"+h.s, "veth"+h.s)
	}
	for _, n := range bad {
		err := ValidateNetwork(n)
		if !errors.Is(err, ErrInvalidOption) {
			t.Errorf("ValidateNetwork(%q) = %v, want ErrInvalidOption", n, err)
		}
		oneLine(t, err)
	}
}

func TestValidatePort(t *testing.T) {
	for _, p := range []string{"80", "tcp:8080:80", "udp:53", "65535:1"} {
		if err := ValidatePort(p); err != nil {
			t.Errorf("ValidatePort(%q): %v", p, err)
		}
	}
	bad := []string{"", "0", "65536", "+80", "-1", "tcp:8080:80:1", "sctp:80", "80:", " 80"}
	for _, h := range hostile {
		bad = append(bad, "80"+h.s, "tcp:80"+h.s, "tcp"+h.s+":80")
	}
	for _, p := range bad {
		err := ValidatePort(p)
		if !errors.Is(err, ErrInvalidOption) {
			t.Errorf("ValidatePort(%q) = %v, want ErrInvalidOption", p, err)
		}
		oneLine(t, err)
	}
}

// The writer refuses what a caller forgot to check: nothing is rendered,
// and SettingsFile panics rather than return a file.
func TestSettingsTextRefusesControlCharacters(t *testing.T) {
	for _, tc := range []struct {
		what string
		o    BootOptions
	}{
		{"bind source", BootOptions{Network: "veth", Binds: []Bind{{Source: "/a\nPrivateUsers=no", Dest: "/a"}}}},
		{"bind destination", BootOptions{Network: "veth", Binds: []Bind{{Source: "/a", Dest: "/a\n[Files]\nBind=/:/host"}}}},
		{"bind options", BootOptions{Network: "veth", Binds: []Bind{{Source: "/a", Dest: "/a", Options: "idmap\nPrivateUsers=no"}}}},
		{"relative bind", BootOptions{Network: "veth", Binds: []Bind{{Source: "a", Dest: "/a"}}}},
		{"bridge", BootOptions{Network: "bridge:x\n[Files]\nBind=/:/host"}},
		{"zone", BootOptions{Network: "zone:x\u0085y"}},
		{"port", BootOptions{Network: "veth", Ports: []string{"80\nBind=/:/host"}}},
	} {
		text, err := tc.o.SettingsText()
		if !errors.Is(err, ErrInvalidOption) || text != "" {
			t.Errorf("%s: SettingsText = %q, %v", tc.what, text, err)
		}
		oneLine(t, err)
	}
}

func TestParseSettingsFileRefusesControlCharacters(t *testing.T) {
	for _, text := range []string{
		"[Network]\nBridge=br\x1b0\n",
		"[Network]\nBridge=br0\r[Files]\nBind=/:/host\n", // systemd ends a line at CR
		"# comment\rPrivateUsers=no\n",
		"[Exec]\nEnvironment=A=\x00\n", // and at NUL
		"[Network]\nPort=80\u0085\n",
		"[Files]\nBind=/a\xff:/b\n",
		"[Exec]\nEnvironment=A=\u009b31m\n",
	} {
		_, err := ParseSettingsFile(text)
		if err == nil || !strings.Contains(err.Error(), "line ") {
			t.Errorf("ParseSettingsFile(%q) = %v, want an error naming the line", text, err)
		}
		oneLine(t, err)
	}
	// CRLF line ends are line ends to systemd too, and tabs are blanks.
	o, err := ParseSettingsFile("[Exec]\r\nPrivateUsers=no\r\n[Network]\r\n\tBridge =\tbr0\r\n")
	if err != nil || o.PrivateUsers || o.Network != "bridge:br0" {
		t.Errorf("CRLF and tabs: %+v, %v", o, err)
	}
}

// A continued line is one line to systemd: what follows the backslash is
// part of the user's key, not a key of nsbox's.
func TestParseSettingsFileContinuation(t *testing.T) {
	text := "[Files]\nBind=/a:/a\n[Exec]\nEnvironment=X=1 \\\nBind=/:/host\nParameters=a \\\\\n[Network]\nVirtualEthernet=yes\n"
	o, err := ParseSettingsFile(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Binds) != 1 || o.Binds[0].Source != "/a" {
		t.Errorf("binds %+v: a continued line was read as a key of its own", o.Binds)
	}
	out, err := o.SettingsText()
	if err != nil || !strings.Contains(out, "Environment=X=1 \\\nBind=/:/host\nParameters=a \\\\\n") {
		t.Errorf("continued user line not kept (%v):\n%s", err, out)
	}
	if _, err := ParseSettingsFile("[Exec]\nEnvironment=X=1 \\\n"); err == nil {
		t.Error("a file ending inside a continued line was accepted")
	}
}

// Item 14: boot rewrites the settings file with the options of this boot
// but keeps what the user wrote: keys nsbox does not set, sections of
// their own, comments, in place.
func TestSettingsRewriteKeepsUserLines(t *testing.T) {
	const before = `# Written by nsbox; systemd-nspawn@.service and machinectl read it too.
# my notes: web serves the blog
[Exec]
Boot=yes
PrivateUsers=pick
# my environment
Environment=FOO=1

[Files]
PrivateUsersOwnership=auto
Bind=/old:/old:idmap
TemporaryFileSystem=/tmp

[Network]
VirtualEthernet=yes
Port=tcp:8080:80
; the bridge goes here later

[Custom]
Foo=bar
`
	const want = `# Written by nsbox; it rewrites only its own keys and keeps every other line.
# systemd-nspawn@.service and machinectl read this file too.
# my notes: web serves the blog
[Exec]
Boot=yes
PrivateUsers=no
# my environment
Environment=FOO=1

[Files]
Bind=/new:/mnt/new
BindReadOnly=/ro:/ro:norbind
TemporaryFileSystem=/tmp

[Network]
Bridge=br0
; the bridge goes here later

[Custom]
Foo=bar
`
	o, err := ParseSettingsFile(before)
	if err != nil {
		t.Fatal(err)
	}
	o.PrivateUsers = false
	o.Network = "bridge:br0"
	o.Binds = []Bind{{Source: "/new", Dest: "/mnt/new"}, {Source: "/ro", Dest: "/ro", Options: "norbind", ReadOnly: true}}
	o.Ports = nil
	got, err := o.SettingsText()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("rewrite:\n%s\nwant:\n%s", got, want)
	}
	// Read back: nsbox's keys are the new ones, and a second rewrite is
	// the same file.
	back, err := ParseSettingsFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := back.SettingsText(); again != got {
		t.Errorf("second rewrite differs:\n%s", again)
	}
	back.file, o.file = nil, nil
	if !reflect.DeepEqual(back, o) {
		t.Errorf("read back %+v, want %+v", back, o)
	}
}

// Sections nsbox needs that the user's file lacks are added at the end.
func TestSettingsRewriteAddsMissingSections(t *testing.T) {
	o, err := ParseSettingsFile("[Exec]\nEnvironment=FOO=1\n")
	if err != nil {
		t.Fatal(err)
	}
	got, err := o.SettingsText()
	want := settingsHeader + "[Exec]\nBoot=yes\nPrivateUsers=pick\nEnvironment=FOO=1\n\n[Files]\nPrivateUsersOwnership=auto\n\n[Network]\nVirtualEthernet=yes\n"
	if err != nil || got != want {
		t.Errorf("got (%v):\n%s\nwant:\n%s", err, got, want)
	}
}

func TestValidateText(t *testing.T) {
	for _, s := range []string{"", "/srv/data", "with space", "é ü ß 日本", "100%$HOME;#", `a\b`} {
		if err := ValidateText("x", s); err != nil {
			t.Errorf("ValidateText(%q): %v", s, err)
		}
	}
	for _, h := range hostile {
		err := ValidateText("--bind", "/a"+h.s)
		if !errors.Is(err, ErrInvalidOption) || !strings.HasPrefix(err.Error(), `invalid option: --bind "/a`) {
			t.Errorf("%s: %v", h.what, err)
		}
		oneLine(t, err)
	}
}
