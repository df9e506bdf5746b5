package machined

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/nsbox/nsbox/machine/backend"
)

// systemdExecWords reads an ExecStart= value the way systemd does
// (load-fragment.c config_parse_exec and execute.c): specifiers are
// expanded on the whole line ("%%" is "%"; any other specifier is an
// error here, since nsbox writes none), the line is split into words
// with quotes and C escapes (extract_first_word with EXTRACT_UNQUOTE and
// EXTRACT_CUNESCAPE), and "$$" is "$" when the command runs (a lone "$"
// would be a variable). Enough of systemd to check quoteExec against.
func systemdExecWords(line string) ([]string, error) {
	var sp strings.Builder
	for i := 0; i < len(line); i++ {
		if line[i] != '%' {
			sp.WriteByte(line[i])
			continue
		}
		if i+1 < len(line) && line[i+1] == '%' {
			sp.WriteByte('%')
			i++
			continue
		}
		return nil, fmt.Errorf("specifier at %d", i)
	}
	s := sp.String()
	var words []string
	for i := 0; i < len(s); {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i == len(s) {
			break
		}
		var w strings.Builder
		quote := byte(0)
		for ; i < len(s); i++ {
			c := s[i]
			if quote == 0 && (c == ' ' || c == '\t') {
				break
			}
			switch {
			case c == '\n' || c == '\r' || c == 0:
				return nil, fmt.Errorf("line break inside a word")
			case c == '\\':
				if i+1 == len(s) {
					return nil, fmt.Errorf("trailing backslash")
				}
				i++
				switch e := s[i]; e {
				case 'n':
					w.WriteByte('\n')
				case 't':
					w.WriteByte('\t')
				case 'r':
					w.WriteByte('\r')
				case 's':
					w.WriteByte(' ')
				case '\\', '"', '\'':
					w.WriteByte(e)
				case 'x':
					if i+2 >= len(s) {
						return nil, fmt.Errorf("short \\x")
					}
					v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
					if err != nil || v == 0 {
						return nil, fmt.Errorf("bad \\x")
					}
					w.WriteByte(byte(v))
					i += 2
				default:
					return nil, fmt.Errorf("unknown escape \\%c", e)
				}
			case quote == 0 && (c == '"' || c == '\''):
				quote = c
			case quote != 0 && c == quote:
				quote = 0
			default:
				w.WriteByte(c)
			}
		}
		if quote != 0 {
			return nil, fmt.Errorf("unbalanced quote")
		}
		word := w.String()
		var ev strings.Builder
		for j := 0; j < len(word); j++ {
			if word[j] == '$' {
				if j+1 < len(word) && word[j+1] == '$' {
					j++
				} else {
					return nil, fmt.Errorf("variable in %q", word)
				}
			}
			ev.WriteByte(word[j])
		}
		words = append(words, ev.String())
	}
	return words, nil
}

func TestQuoteExec(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"--directory=/srv/web", "--directory=/srv/web"},
		{"a b", `"a b"`},
		{"%h", "%%h"},
		{"$HOME", "$$HOME"},
		{"${HOME}", "$${HOME}"},
		{`a"b`, `"a\"b"`},
		{`a\b`, `"a\\b"`},
		{"a'b", `"a'b"`},
		{";", `";"`},
		{"", `""`},
		{"--bind=/a\nExecStartPre=/bin/sh", `"--bind=/a\x0aExecStartPre=/bin/sh"`},
		{"a\rb\x00c\x1bd\x7f", `"a\x0db\x00c\x1bd\x7f"`},
	} {
		if got := quoteExec(tc.in); got != tc.want {
			t.Errorf("quoteExec(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// Whatever the words, systemd reads back exactly the words nsbox wrote.
func TestExecLineRoundTrip(t *testing.T) {
	for _, argv := range [][]string{
		{"systemd-nspawn", "--directory=/srv/.nsbox/web", "--bind=/data/100%$HOME x:/mnt:idmap"},
		{"/usr/bin/nsbox", "--root-dir", "/srv/my machines", "__network-up", "web"},
		{"x", `a"b'c\d`, ";", "", "%%", "$$", "%n", "$1", "\\;", "a\tb"},
		{"x", "é ü", "/a\\:b:/c"},
	} {
		line := execLine(argv)
		got, err := systemdExecWords(line)
		if err != nil || strings.Join(got, "\x00") != strings.Join(argv, "\x00") {
			t.Errorf("execLine(%q) = %s, read back as %q, %v", argv, line, got, err)
		}
	}
}

func testSpec() backend.StartSpec {
	return backend.StartSpec{Name: "web", Root: "/srv/.nsbox/web", Timeout: time.Minute,
		Argv:      []string{"systemd-nspawn", "--directory=/srv/.nsbox/web"},
		PostStart: []string{"/usr/bin/nsbox", "--root-dir", "/srv", "__network-up", "web"}}
}

// "%" and "$" in a bind path reach the unit as "%%" and "$$", a root with
// a space is quoted, and every line of the unit is a directive nsbox
// writes.
func TestUnitFileQuotes(t *testing.T) {
	spec := testSpec()
	spec.Root = "/srv/my %n dir/.nsbox/web"
	// As machine.NspawnArgs writes them for such a root and bind.
	spec.Argv = []string{"systemd-nspawn", "--directory=/srv/my %n dir/.nsbox/web", "--machine=web", "--boot",
		"--private-users=pick", "--network-veth", "--bind=/data/100%$HOME x:/mnt:idmap"}
	text, err := (&Backend{}).UnitFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"--directory=/srv/my %%n dir/.nsbox/web"`,
		`"--bind=/data/100%%$$HOME x:/mnt:idmap"`,
		"RequiresMountsFor=\"/srv/my %%n dir/.nsbox/web\"\n",
		"Description=nsbox machine web\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %s:\n%s", want, text)
		}
	}
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if l == "" || l[0] == '#' || l[0] == '[' {
			continue
		}
		k, _, _ := strings.Cut(l, "=")
		switch k {
		case "Description", "Documentation", "PartOf", "Before", "After", "RequiresMountsFor", "ExecStart", "ExecStartPost",
			"Type", "Slice", "Delegate", "IOAccounting", "KillMode", "Restart", "RestartForceExitStatus", "SuccessExitStatus", "WatchdogSec",
			"TimeoutStartSec", "DevicePolicy", "DeviceAllow", "WantedBy":
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			got, err := systemdExecWords(v)
			if err != nil || strings.Join(got, "\x00") != strings.Join(spec.Argv, "\x00") {
				t.Errorf("ExecStart reads back as %q, %v; want %q", got, err, spec.Argv)
			}
		}
	}
}

// The unit file, byte for byte: written by go-systemd's Serialize from
// unitOptions, it is what nsbox wrote by hand before (systemd reads both
// the same: they are the same bytes).
func TestUnitFileText(t *testing.T) {
	spec := testSpec()
	spec.Limits = backend.Limits{Memory: 1 << 30, CPUs: 1.5}
	text, err := (&Backend{}).UnitFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	const want = `# Written by nsbox enable web; nsbox rewrites it when the machine's options change.
[Unit]
Description=nsbox machine web
Documentation=man:systemd-nspawn(1)
PartOf=machines.target
Before=machines.target
After=network.target systemd-resolved.service modprobe@tun.service modprobe@loop.service
RequiresMountsFor=/srv/.nsbox/web

[Service]
ExecStart=systemd-nspawn --directory=/srv/.nsbox/web
ExecStartPost=-/usr/bin/nsbox --root-dir /srv __network-up web
Type=notify
Slice=machine.slice
Delegate=yes
IOAccounting=yes
KillMode=mixed
Restart=on-failure
RestartForceExitStatus=133
SuccessExitStatus=133
WatchdogSec=3min
TimeoutStartSec=60
DevicePolicy=closed
DeviceAllow=/dev/net/tun rwm
DeviceAllow=char-pts rw
DeviceAllow=/dev/loop-control rw
DeviceAllow=block-loop rw
DeviceAllow=block-blkext rw
DeviceAllow=/dev/mapper/control rw
DeviceAllow=block-device-mapper rw
MemoryMax=1073741824
CPUQuota=150%

[Install]
WantedBy=machines.target
`
	if text != want {
		t.Errorf("unit file:\n%s\nwant:\n%s", text, want)
	}
}

// go-systemd's parser reads the unit file back as the options nsbox
// serialized, the commands as the words nsbox meant, whatever the words.
func TestUnitFileReadsBack(t *testing.T) {
	for _, argv := range [][]string{
		{"systemd-nspawn", "--directory=/srv/my %n dir/.nsbox/web", "--bind=/data/100%$HOME x:/mnt:idmap"},
		{"x", `a"b'c\d`, ";", "", "%%", "$$", "%n", "$1", "\\;", `ends\`, `\\`},
	} {
		spec := testSpec()
		spec.Root = `/srv/a "b" \c %n/.nsbox/web`
		spec.Argv = argv
		text, err := (&Backend{}).UnitFile(spec)
		if err != nil {
			t.Fatal(err)
		}
		got, err := unit.DeserializeOptions(strings.NewReader(text))
		if err != nil || !unit.AllMatch(got, unitOptions(spec)) {
			t.Errorf("%q reads back as %v, %v", argv, got, err)
			continue
		}
		for _, o := range got {
			if o.Name == "ExecStart" {
				words, err := systemdExecWords(o.Value)
				if err != nil || strings.Join(words, "\x00") != strings.Join(argv, "\x00") {
					t.Errorf("ExecStart reads back as %q, %v; want %q", words, err, argv)
				}
			}
		}
	}
}

// go-systemd's Serialize writes sections, keys and values as they are:
// these are what CheckUnitOptions refuses before it is called.
func TestSerializeWritesValuesAsTheyAre(t *testing.T) {
	for _, tc := range []struct {
		what string
		opt  *unit.UnitOption
		// written is what Serialize makes of it; read, what systemd reads.
		written, read string
	}{
		{"a newline starts a line of its own", unit.NewUnitOption("Service", "ExecStart", "/bin/true\nExecStartPre=/bin/sh"),
			"[Service]\nExecStart=/bin/true\nExecStartPre=/bin/sh\n", "an ExecStartPre= of its own"},
		{"a section header in a value", unit.NewUnitOption("Unit", "Description", "x\n[Install]\nWantedBy=x"),
			"[Unit]\nDescription=x\n[Install]\nWantedBy=x\n", "a new section"},
		{"a final backslash continues the line", unit.NewUnitOption("Unit", "Description", `x\`),
			"[Unit]\nDescription=x\\\n", "the next line as part of the value"},
		{"blanks around a value", unit.NewUnitOption("Unit", "Description", " x "),
			"[Unit]\nDescription= x \n", "x, without them"},
		{"a section name with a bracket", unit.NewUnitOption("Unit]\n[Service", "X", "y"),
			"[Unit]\n[Service]\nX=y\n", "X= in [Service]"},
		{"a key with =", unit.NewUnitOption("Unit", "A=B", "c"),
			"[Unit]\nA=B=c\n", "A= with the value B=c"},
	} {
		b, err := io.ReadAll(unit.Serialize([]*unit.UnitOption{tc.opt}))
		if err != nil || string(b) != tc.written {
			t.Errorf("%s: Serialize wrote %q (%v), no longer %q: look again at backend.CheckUnitOptions", tc.what, b, err, tc.written)
		}
		if err := backend.CheckUnitOptions([]*unit.UnitOption{tc.opt}); !errors.Is(err, backend.ErrInvalidOption) {
			t.Errorf("%s (systemd reads %s): CheckUnitOptions = %v", tc.what, tc.read, err)
		} else if msg := err.Error(); backend.BadText(msg) != "" {
			t.Errorf("%s: message with a control character: %q", tc.what, msg)
		}
	}
}

// systemd reads unit file lines of up to 1 MiB (LONG_LINE_MAX); go-systemd's
// parser refuses one of 2048 bytes or more (SYSTEMD_LINE_MAX, where its
// buffer holds all of it). A machine with many binds has such an
// ExecStart=, so nsbox writes it and never reads a unit file back with
// go-systemd.
func TestUnitFileLongExecStart(t *testing.T) {
	spec := testSpec()
	long := "/srv/" + strings.Repeat("d", 3000)
	spec.Argv = append(spec.Argv, "--bind="+long+":/mnt")
	text, err := (&Backend{}).UnitFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "\nExecStart=systemd-nspawn --directory=/srv/.nsbox/web --bind="+long+":/mnt\n") {
		t.Errorf("long ExecStart= not written as one line")
	}
	if _, err := unit.DeserializeOptions(strings.NewReader(text)); !errors.Is(err, unit.ErrLineTooLong) {
		t.Errorf("go-systemd reads a line of %d bytes: %v (nsbox could read unit files back with it)", len(long), err)
	}
}
