package machined

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

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
			"Type", "Slice", "Delegate", "KillMode", "Restart", "RestartForceExitStatus", "SuccessExitStatus", "WatchdogSec",
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
