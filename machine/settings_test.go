package machine

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"
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
	text := "[Files]\nBind=/a:/a\n[Exec]\nEnvironment=X=1 \\\nBind=/:/host\nCapability=a \\\\\n[Network]\nVirtualEthernet=yes\n"
	o, err := ParseSettingsFile(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Binds) != 1 || o.Binds[0].Source != "/a" {
		t.Errorf("binds %+v: a continued line was read as a key of its own", o.Binds)
	}
	out, err := o.SettingsText()
	if err != nil || !strings.Contains(out, "Environment=X=1 \\\nBind=/:/host\nCapability=a \\\\\n") {
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

// options lists options as Section.Key=Value.
func options(opts []*unit.UnitOption) []string {
	out := []string{}
	for _, o := range opts {
		out = append(out, o.Section+"."+o.Name+"="+o.Value)
	}
	return out
}

// nsboxReads is the settings nsbox reads in text, as options lists them.
func nsboxReads(text string) ([]string, error) {
	d, err := parseSettingsDoc(text)
	if err != nil {
		return nil, err
	}
	var opts []*unit.UnitOption
	for _, l := range d.lines {
		if l.opt != nil {
			opts = append(opts, l.opt)
		}
	}
	return options(opts), nil
}

// Where go-systemd's unit parser reads a settings file otherwise than
// systemd 252 does (conf-parser.c), nsbox reads it as systemd does, or
// refuses it. Each case says what go-systemd reads (a change there shows
// here) and what nsbox does.
func TestSettingsReadAsSystemdDoes(t *testing.T) {
	for _, tc := range []struct {
		what, text string
		goSystemd  []string // nil: an error
		nsbox      []string // nil: refused, with nsboxErr in the message
		nsboxErr   string
	}{
		{"a continued line is joined, its backslash a space",
			"[Exec]\nEnvironment=X=1 \\\nBind=/:/host\n",
			[]string{"Exec.Environment=X=1 \\\nBind=/:/host"},
			[]string{"Exec.Environment=X=1  Bind=/:/host"}, ""},
		{"an even run of backslashes is escaped ones: the line ends",
			"[Exec]\nParameters=a \\\\\n[Network]\nVirtualEthernet=yes\n",
			[]string{"Exec.Parameters=a \\\\\n[Network]", "Exec.VirtualEthernet=yes"},
			[]string{"Exec.Parameters=a \\\\", "Network.VirtualEthernet=yes"}, ""},
		{"a comment ends at its line, backslash or not",
			"[Files]\n# a note \\\nBind=/b:/b\n",
			[]string{},
			[]string{"Files.Bind=/b:/b"}, ""},
		{"a comment inside a continued line stands on its own",
			"[Exec]\nEnvironment=X=1 \\\n# note\nY=2\n",
			[]string{"Exec.Environment=X=1 \\\n# note", "Exec.Y=2"},
			[]string{"Exec.Environment=X=1  Y=2"}, ""},
		{"an assignment before the first section is ignored",
			"Foo=a[b]\nBoot=yes\n[Exec]\nPrivateUsers=no\n",
			[]string{"b.Boot=yes", "Exec.PrivateUsers=no"},
			[]string{"Exec.PrivateUsers=no"}, ""},
		{"a section header ends at its line",
			"[Exec\nBoot=yes]\n",
			[]string{},
			nil, `line 1: "[Exec" is not a section header`},
		{"a section header is all of its line",
			"[Exec] PrivateUsers=no\n",
			nil,
			nil, "not a section header"},
		{"a bracket inside a section name",
			"[Ex]ec]\nBoot=yes\n",
			nil,
			nil, `line 1: "[Ex]ec]" is not a section header`},
		{"a space that is not a blank stays in the value (nsbox refuses it)",
			"[Network]\nBridge=br0\u00a0\n",
			[]string{"Network.Bridge=br0"},
			nil, `line 2: "Bridge=br0\u00a0" is read differently`},
		{"and in the key",
			"[Network]\n\u00a0Bridge=br0\n",
			[]string{"Network.Bridge=br0"},
			nil, "line 2:"},
		{"a carriage return ends a line (nsbox refuses it)",
			"[Exec]\nA=b\rC=d\n",
			[]string{"Exec.A=b\rC=d"},
			nil, "line 2: control character U+000D"},
		{"a line without = (systemd ignores it, nsbox refuses it)",
			"[Exec]\nBoot\n",
			nil,
			nil, `line 2: "Boot" is not KEY=VALUE`},
		{"a line without a key (systemd ignores it, nsbox refuses it)",
			"[Exec]\n=x\n",
			[]string{"Exec.=x"},
			nil, `line 2: "=x" has no key`},
		// Where both agree.
		{"comments with # and ;, indented too, and # inside a value",
			"# a\n[Exec]\n; b\n  # c\nEnvironment=A=1 # not a comment\n\tBoot = yes\t\n",
			[]string{"Exec.Environment=A=1 # not a comment", "Exec.Boot=yes"},
			[]string{"Exec.Environment=A=1 # not a comment", "Exec.Boot=yes"}, ""},
		{"CRLF line ends, empty values, empty sections",
			"[Exec]\r\nA=\r\n[Files]\r\n[Network]\r\nB=  \r\n",
			[]string{"Exec.A=", "Network.B="},
			[]string{"Exec.A=", "Network.B="}, ""},
	} {
		gs, err := unit.DeserializeOptions(strings.NewReader(tc.text))
		if tc.goSystemd == nil && err == nil {
			t.Errorf("%s: go-systemd now reads %q without an error: %q", tc.what, tc.text, options(gs))
		}
		if tc.goSystemd != nil && (err != nil || !reflect.DeepEqual(options(gs), tc.goSystemd)) {
			t.Errorf("%s: go-systemd now reads %q as %q, %v; was %q", tc.what, tc.text, options(gs), err, tc.goSystemd)
		}
		got, err := nsboxReads(tc.text)
		if tc.nsbox == nil {
			if err == nil || !strings.Contains(err.Error(), tc.nsboxErr) {
				t.Errorf("%s: nsbox reads %q as %q, %v; want an error with %q", tc.what, tc.text, got, err, tc.nsboxErr)
			}
			oneLine(t, err)
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.nsbox) {
			t.Errorf("%s: nsbox reads %q as %q, %v; want %q", tc.what, tc.text, got, err, tc.nsbox)
		}
	}
}

// go-systemd's parser refuses a line of SYSTEMD_LINE_MAX (2048) bytes or
// more, but only where its 4096-byte read buffer holds all of it: the same
// line passes after some 3000 bytes of others. systemd reads lines of up to
// 1 MiB. nsbox refuses such a line always, and writes none.
func TestSettingsLongLines(t *testing.T) {
	long := "[Files]\nBind=/" + strings.Repeat("a", 2100) + ":/x\n"
	if _, err := unit.DeserializeOptions(strings.NewReader(long)); !errors.Is(err, unit.ErrLineTooLong) {
		t.Errorf("go-systemd reads a long line first in the file: %v", err)
	}
	later := "[Files]\n" + strings.Repeat("Foo=123456789\n", 250) + long[len("[Files]\n"):]
	if _, err := unit.DeserializeOptions(strings.NewReader(later)); err != nil {
		t.Errorf("go-systemd now refuses a long line after 3500 bytes too: %v", err)
	}
	for _, text := range []string{long, later} {
		if _, err := ParseSettingsFile(text); err == nil || !strings.Contains(err.Error(), "longer than go-systemd's unit parser reads (2047 bytes") {
			t.Errorf("long line: %v", err)
		}
	}
	// 2047 bytes is the longest line either reads; a continued line counts
	// as systemd joins it.
	fits := "Bind=/" + strings.Repeat("a", 2047-len("Bind=/")-len(":/x")) + ":/x"
	if o, err := ParseSettingsFile("[Files]\n" + fits + "\n"); err != nil || len(o.Binds) != 1 {
		t.Errorf("a line of 2047 bytes: %v", err)
	}
	if _, err := ParseSettingsFile("[Files]\nA=" + strings.Repeat("a", 1500) + "\\\n" + strings.Repeat("b", 1500) + "\n"); err == nil {
		t.Error("a continued line of 3000 bytes was read")
	}
	// A bind too long for a line is refused when written: nothing nsbox
	// writes fails to read back.
	o := DefaultBootOptions()
	o.Binds = []Bind{{Source: "/" + strings.Repeat("a", 1100), Dest: "/" + strings.Repeat("b", 1100)}}
	if text, err := o.SettingsText(); !errors.Is(err, ErrInvalidOption) || text != "" || !strings.Contains(err.Error(), "longer than go-systemd's unit parser reads") {
		t.Errorf("long bind: %q, %v", text, err)
	}
}

// What nsbox writes (by go-systemd's SerializeSections) reads back, with
// the values that go-systemd's own parser would read otherwise.
func TestSettingsTextReadsBack(t *testing.T) {
	for _, o := range []BootOptions{
		DefaultBootOptions(),
		{Network: "host"},
		{Network: "none", PrivateUsers: true, Ports: []string{"80", "udp:53:53"}},
		{Network: "zone:lab", Binds: []Bind{
			{Source: `/a\`, Dest: `/b\`},                // ends in escaped backslashes
			{Source: "/c", Dest: "/d ", ReadOnly: true}, // ends in a blank
			{Source: "/c", Dest: "/d\u00a0"},            // in a space go-systemd's parser drops
			{Source: "/e#f;g", Dest: "/100%$HOME", Options: "norbind"},
			{Source: "/é:x", Dest: "/ü"},
		}},
	} {
		text, err := o.SettingsText()
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		back, err := ParseSettingsFile(text)
		if err != nil {
			t.Fatalf("%+v does not read back: %v\n%s", o, err, text)
		}
		back.file = nil
		if o.Network == "" {
			o.Network = "veth"
		}
		if len(o.Binds) > 0 {
			o.Binds = withIDMap(o.Binds, o.PrivateUsers)
		}
		if !reflect.DeepEqual(back, o) {
			t.Errorf("read back %+v, want %+v:\n%s", back, o, text)
		}
	}
}

// A fresh file, byte for byte: an empty section keeps its header, as
// before (go-systemd's SerializeSections writes it; Serialize, which
// writes options, would leave it out).
func TestSettingsTextFresh(t *testing.T) {
	for _, tc := range []struct {
		o    BootOptions
		want string
	}{
		{DefaultBootOptions(), "[Exec]\nBoot=yes\nPrivateUsers=pick\n\n[Files]\nPrivateUsersOwnership=auto\n\n[Network]\nVirtualEthernet=yes\n"},
		{BootOptions{Network: "host"}, "[Exec]\nBoot=yes\nPrivateUsers=no\n\n[Files]\n\n[Network]\nPrivate=no\nVirtualEthernet=no\n"},
		{BootOptions{Network: "bridge:br0", Binds: []Bind{{Source: "/a:b", Dest: `/c\d`}}, Ports: []string{"tcp:80:8080"}},
			"[Exec]\nBoot=yes\nPrivateUsers=no\n\n[Files]\nBind=/a\\:b:/c\\\\d\n\n[Network]\nBridge=br0\nPort=tcp:80:8080\n"},
	} {
		got, err := tc.o.SettingsText()
		if err != nil || got != settingsHeader+tc.want {
			t.Errorf("%+v (%v):\n%s\nwant:\n%s", tc.o, err, got, settingsHeader+tc.want)
		}
	}
}

// An assignment before the first section is the user's, kept, and not a
// key of theirs that nspawn honours (it ignores it).
func TestSettingsAssignmentBeforeSections(t *testing.T) {
	o, err := ParseSettingsFile("Bind=/:/host\n[Exec]\nPrivateUsers=no\n")
	if err != nil || len(o.Binds) != 0 || o.PrivateUsers || o.file.userKeys() {
		t.Fatalf("%+v, %v", o, err)
	}
	text, err := o.SettingsText()
	if err != nil || !strings.HasPrefix(text, settingsHeader+"Bind=/:/host\n[Exec]\nBoot=yes\nPrivateUsers=no\n") {
		t.Errorf("%v:\n%s", err, text)
	}
}
