package backend

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/unit"
)

// rawControl returns the first control character (other than those
// allowed) or byte that is not UTF-8 in s, or "".
func rawControl(s, allowed string) string {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || isControl(r) && !strings.ContainsRune(allowed, r) || isInvisibleFormat(r) {
			return s[i : i+size]
		}
		i += size
	}
	return ""
}

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, one, text string }{
		{"plain text", "plain text", "plain text"},
		{"tab\there", `tab\there`, "tab\there"},
		{"two\nlines", `two\nlines`, "two\nlines"},
		{"crlf\r\n", `crlf\r\n`, "crlf\r\n"},
		{"50%\rdone", `50%\rdone`, `50%\rdone`},
		{"bell\a", `bell\x07`, `bell\x07`},
		{"\x1b]52;c;aGk=\x07", `\x1b]52;c;aGk=\x07`, `\x1b]52;c;aGk=\x07`},
		{"\u009b31mred", `\u009b31mred`, `\u009b31mred`},
		{"nel\u0085", `nel\u0085`, `nel\u0085`},
		{"del\x7f", `del\x7f`, `del\x7f`},
		{"bad\xff\xfeutf8", `bad\xff\xfeutf8`, `bad\xff\xfeutf8`},
		{"evil\u202etxt.exe", `evil\u202etxt.exe`, `evil\u202etxt.exe`},
		{`back\slash é`, `back\slash é`, `back\slash é`},
	} {
		if got := Printable(tc.in); got != tc.one {
			t.Errorf("Printable(%q) = %q, want %q", tc.in, got, tc.one)
		}
		if got := PrintableText(tc.in); got != tc.text {
			t.Errorf("PrintableText(%q) = %q, want %q", tc.in, got, tc.text)
		}
		if got := Printable(tc.in); rawControl(got, "") != "" {
			t.Errorf("Printable(%q) = %q still has a control character", tc.in, got)
		}
	}
}

func TestStripTerminal(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"\x1b[0;1;32m  OK  \x1b[0m] Started", "  OK  ] Started"},
		{"clip\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2gK\x07board", "clipboard"},
		{"title\x1b]0;pwned\x1b\\ok", "titleok"},
		{"c1\u009b2Jcsi", "c1csi"},
		{"c1\u009d0;x\u009cosc", "c1osc"},
		{"dcs\x1bPq#0;2;0;0;0\x1b\\end", "dcsend"},
		{"charset\x1b(0x", "charsetx"},
		{"keypad\x1b=on", "keypadon"},
		{"line\r\x1b[2Kfake", `line\rfake`},
		{"crlf\r\n", "crlf\r\n"},
		{"bell\a", `bell\x07`},
		{"nel\u0085", `nel\u0085`},
		{"bad\xffbyte", `bad\xffbyte`},
		// An OSC left open ends with its line: the rest of the log stays.
		{"open\x1b]0;never closed\nnext line", "open\nnext line"},
		// ESC before a control character shows.
		{"esc\x1b\nx", "esc\\x1b\nx"},
	} {
		if got := StripTerminal(tc.in); got != tc.want {
			t.Errorf("StripTerminal(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A log passed through in pieces comes out as in one piece, however the
// pieces cut characters and sequences.
func TestPrintableWriterSplitWrites(t *testing.T) {
	in := "Welcome to \x1b[1mDebian\x1b[0m!\r\n" + "clip\x1b]52;c;aGk=\x07board é\u009b2J\n" + "50%\r\x1b[Kdone\r\n" + "bad\xff\n" + "tail\r"
	var whole bytes.Buffer
	w := NewPrintableWriter(&whole)
	w.Write([]byte(in))
	w.Flush()
	want := whole.String()
	if want != "Welcome to Debian!\r\nclipboard é\n50%\\rdone\r\nbad\\xff\ntail\\r" {
		t.Errorf("whole: %q", want)
	}
	for size := 1; size <= 4; size++ {
		var out bytes.Buffer
		w := NewPrintableWriter(&out)
		for i := 0; i < len(in); i += size {
			n, err := w.Write([]byte(in[i:min(i+size, len(in))]))
			if err != nil || n != min(size, len(in)-i) {
				t.Fatalf("Write: %d, %v", n, err)
			}
		}
		w.Flush()
		if out.String() != want {
			t.Errorf("in pieces of %d: %q, want %q", size, out.String(), want)
		}
	}
}

// A boot failure's log tail, as a hostile machine writes its console,
// comes out inert, one entry a line.
func TestLastLinesInert(t *testing.T) {
	console := "Welcome to \x1b[1mDebian GNU/Linux 12\x1b[0m!\r\n" +
		"\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2gK\x07\r\n" +
		"PRETTY_NAME=\u009b2J\u009d0;pwned\u009c\r\n" +
		"hostname evil\a\x1b]0;title\x1b\\\r\n" +
		"progress 10%\rprogress 100%\r\n" +
		"tab\there\x00nul\r\n"
	got := LastLines(console, 15)
	want := []string{"Welcome to Debian GNU/Linux 12!", "PRETTY_NAME=", `hostname evil\x07`,
		`progress 10%\rprogress 100%`, `tab\there\x00nul`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("LastLines:\n got %q\nwant %q", got, want)
	}
	for _, l := range got {
		if c := rawControl(l, ""); c != "" {
			t.Errorf("%q carries %q", l, c)
		}
	}
}

func TestCheckUnitOptions(t *testing.T) {
	for _, tc := range []struct {
		section, name, value string
		ok                   bool
	}{
		{"Service", "ExecStart", `systemd-nspawn "--bind=/a b" x\\`, true}, // an even run of backslashes is escaped ones
		{"Files", "Bind", `/a:/b\\`, true},
		{"Unit", "Description", "", true},
		{"Unit", "Description", "nsbox machine é", true},
		{"X-Custom", "Key_1.a-b", "v", true},
		{"Service", "ExecStart", "a\rb", false},
		{"Service", "ExecStart", "a\x00b", false},
		{"Service", "ExecStart", "a\u0085b", false},
		{"Service", "ExecStart", "a\xffb", false},
		{"Service", "ExecStart", `a\`, false},
		{"Service", "ExecStart", `a\\\`, false},
		{"Service", "ExecStart", "a\t", false},
		{"Service", "ExecStart", "\u00a0a", false}, // go-systemd's reader drops it, systemd's keeps it
		{"", "A", "b", false},
		{"Se[rvice", "A", "b", false},
		{"Service", "", "b", false},
		{"Service", "A B", "b", false},
		{"Service", "#A", "b", false},
		{"Service", "[A]", "b", false},
		{"Service", "A\n", "b", false},
	} {
		err := CheckUnitOptions([]*unit.UnitOption{unit.NewUnitOption(tc.section, tc.name, tc.value)})
		if (err == nil) != tc.ok {
			t.Errorf("[%q] %q=%q: %v, want ok %v", tc.section, tc.name, tc.value, err, tc.ok)
		}
		if err != nil && BadText(err.Error()) != "" {
			t.Errorf("message with a control character: %q", err)
		}
	}
}
