package backend

import (
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/unit"
)

// Two kinds of text cross nsbox in ways that can hurt.
//
// Values a user gives (paths, bridge names, ports, the root directory)
// reach files that systemd parses line by line (NAME.nspawn, unit files)
// and command lines: a newline in one is a new line of the file, so they
// must hold no control character at all. ValidateText checks that, where
// a value is parsed and again where a file is rendered.
//
// Text a machine controls (its os-release, its log lines, what it
// registers with machined) reaches the user's terminal, where an escape
// sequence can retitle the window, write the clipboard (OSC 52), move the
// cursor over what was printed, or worse on older terminals. Printable and
// PrintableWriter make such text inert before it is printed.

// isControl reports whether r is a C0 control (tab and newline included),
// DEL or a C1 control.
func isControl(r rune) bool {
	return r < 0x20 || r >= 0x7f && r <= 0x9f
}

// isInvisibleFormat reports whether r reorders or separates displayed
// text without being seen: bidirectional embeddings, overrides and
// isolates, and the Unicode line and paragraph separators. A machine can
// use them to make a table cell read as something else.
func isInvisibleFormat(r rune) bool {
	return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0x2028 || r == 0x2029 || r == 0x200e || r == 0x200f
}

// BadText describes the first character of s that may not appear in a
// value nsbox writes into a file or onto a command line, or is "".
func BadText(s string) string {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return fmt.Sprintf("invalid UTF-8 (byte %#02x)", s[i])
		}
		if isControl(r) {
			return fmt.Sprintf("control character %U", r)
		}
		i += size
	}
	return ""
}

// ValidateText refuses a value that holds a control character (C0 with
// tab, newline and carriage return, DEL, C1) or is not UTF-8. Every value
// a user gives that reaches a settings file, a unit file or a command line
// is checked with it; what names the value ("bind", "--root-dir") leads
// the message, and the value is shown quoted.
func ValidateText(what, s string) error {
	if why := BadText(s); why != "" {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidOption, what, s, why)
	}
	return nil
}

// Printable returns s ready to print as one field of a line (a table cell,
// a status row, an error message): every control character, newline and
// tab included, every byte that is not UTF-8 and every invisible
// reordering mark is replaced by a visible escape (\x1b, \n, \u009b,
// \u202e). Other text, backslashes included, is unchanged.
func Printable(s string) string { return printable(s, false) }

// PrintableText is Printable for text of several lines: newline, tab and
// a carriage return that ends a line ("\r\n") are kept.
func PrintableText(s string) string { return printable(s, true) }

func printable(s string, lines bool) string {
	var b strings.Builder
	done := 0 // s[:done] is in b, or nothing needed escaping yet
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var esc string
		if r == utf8.RuneError && size == 1 {
			esc = fmt.Sprintf(`\x%02x`, s[i])
		} else {
			keep := lines && (r == '\n' || r == '\t' || r == '\r' && strings.HasPrefix(s[i+size:], "\n"))
			esc = escapeRune(r, keep)
		}
		if esc != "" {
			b.WriteString(s[done:i])
			b.WriteString(esc)
			done = i + size
		}
		i += size
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// escapeRune is the visible form of r, or "" when r prints as itself (or
// is kept as asked).
func escapeRune(r rune, keep bool) string {
	switch {
	case keep:
		return ""
	case r == '\n':
		return `\n`
	case r == '\t':
		return `\t`
	case r == '\r':
		return `\r`
	case r < 0x20 || r == 0x7f:
		return fmt.Sprintf(`\x%02x`, r)
	case r >= 0x80 && r <= 0x9f, isInvisibleFormat(r):
		return fmt.Sprintf(`\u%04x`, r)
	}
	return ""
}

// termState is where a termFilter is in a terminal control sequence.
type termState int

const (
	stGround    termState = iota
	stEsc                 // after ESC
	stEscInter            // after ESC and intermediate bytes (0x20-0x2f)
	stCSI                 // after ESC [ or U+009B: parameters up to a final byte
	stString              // after ESC ] P X ^ _ or their C1 forms: up to BEL or ST
	stStringEsc           // after ESC inside a string: ST when '\' follows
)

// termFilter drops whole terminal control sequences (CSI such as colours
// and cursor moves, OSC such as titles and OSC 52 clipboard writes, DCS,
// and the two-byte ESC sequences) from text, and makes every other control
// character visible as Printable does, keeping newline, tab and a carriage
// return that ends a line. A string sequence left open ends at the end of
// its line, so a machine cannot make the rest of a log vanish.
type termFilter struct {
	state     termState
	pendingCR bool // a carriage return whose next character decides
}

// feed filters s (whole characters; bytes that are not UTF-8 are escaped)
// onto out.
func (f *termFilter) feed(s string, out *strings.Builder) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			f.ground(-1, fmt.Sprintf(`\x%02x`, s[i]), out)
		} else {
			f.rune(r, s[i:i+size], out)
		}
		i += size
	}
}

// end writes what is still held back and forgets an unfinished sequence.
func (f *termFilter) end(out *strings.Builder) {
	if f.pendingCR {
		out.WriteString(`\r`)
		f.pendingCR = false
	}
	f.state = stGround
}

func (f *termFilter) rune(r rune, raw string, out *strings.Builder) {
	switch f.state {
	case stEsc:
		switch {
		case r == '[':
			f.state = stCSI
		case r == ']' || r == 'P' || r == 'X' || r == '^' || r == '_':
			f.state = stString
		case r >= 0x20 && r <= 0x2f:
			f.state = stEscInter
		case r >= 0x30 && r <= 0x7e:
			f.state = stGround
		default:
			f.state = stGround
			out.WriteString(`\x1b`)
			f.rune(r, raw, out)
		}
	case stEscInter:
		switch {
		case r >= 0x20 && r <= 0x2f:
		case r >= 0x30 && r <= 0x7e:
			f.state = stGround
		default:
			f.state = stGround
			f.rune(r, raw, out)
		}
	case stCSI:
		switch {
		case r >= 0x20 && r <= 0x3f:
		case r >= 0x40 && r <= 0x7e:
			f.state = stGround
		default:
			f.state = stGround
			f.rune(r, raw, out)
		}
	case stString:
		switch r {
		case 0x07, 0x9c:
			f.state = stGround
		case 0x1b:
			f.state = stStringEsc
		case '\n':
			f.state = stGround
			f.rune(r, raw, out)
		}
	case stStringEsc:
		if r == '\\' {
			f.state = stGround
			return
		}
		f.state = stEsc
		f.rune(r, raw, out)
	default:
		switch r {
		case 0x1b:
			f.flushCR(out)
			f.state = stEsc
		case 0x9b:
			f.flushCR(out)
			f.state = stCSI
		case 0x90, 0x98, 0x9d, 0x9e, 0x9f:
			f.flushCR(out)
			f.state = stString
		default:
			f.ground(r, raw, out)
		}
	}
}

// ground writes one character outside any sequence; r is -1 for a byte
// that is not UTF-8, whose escape raw already is.
func (f *termFilter) ground(r rune, raw string, out *strings.Builder) {
	if f.pendingCR {
		f.pendingCR = false
		if r == '\n' {
			out.WriteString("\r\n")
			return
		}
		out.WriteString(`\r`)
	}
	switch {
	case r == -1:
		out.WriteString(raw)
	case r == '\r':
		f.pendingCR = true
	case r == '\n' || r == '\t':
		out.WriteString(raw)
	default:
		if esc := escapeRune(r, false); esc != "" {
			out.WriteString(esc)
		} else {
			out.WriteString(raw)
		}
	}
}

func (f *termFilter) flushCR(out *strings.Builder) {
	if f.pendingCR {
		out.WriteString(`\r`)
		f.pendingCR = false
	}
}

// StripTerminal returns s without terminal control sequences and with
// every other control character made visible (see PrintableText): for
// console output and log lines, whose colours would otherwise show as
// escapes.
func StripTerminal(s string) string {
	var f termFilter
	var out strings.Builder
	f.feed(s, &out)
	f.end(&out)
	return out.String()
}

// PrintableWriter passes a stream of text a machine controls (its journal,
// its console log) on to a terminal, filtered as StripTerminal does. A
// character split between two writes is held back until it is whole;
// Flush writes what is held at the end.
type PrintableWriter struct {
	w       io.Writer
	f       termFilter
	partial []byte
}

// NewPrintableWriter returns a PrintableWriter that writes to w.
func NewPrintableWriter(w io.Writer) *PrintableWriter { return &PrintableWriter{w: w} }

// Write implements io.Writer.
func (p *PrintableWriter) Write(b []byte) (int, error) {
	data := b
	if len(p.partial) > 0 {
		data = append(p.partial, b...)
		p.partial = nil
	}
	cut := len(data)
	for k := 1; k < utf8.UTFMax && k <= len(data); k++ {
		if utf8.RuneStart(data[len(data)-k]) {
			if !utf8.FullRune(data[len(data)-k:]) {
				cut = len(data) - k
			}
			break
		}
	}
	p.partial = append([]byte(nil), data[cut:]...)
	var out strings.Builder
	p.f.feed(string(data[:cut]), &out)
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Flush writes what is held back: an unfinished character (escaped) or a
// final carriage return.
func (p *PrintableWriter) Flush() error {
	var out strings.Builder
	p.f.feed(string(p.partial), &out)
	p.partial = nil
	p.f.end(&out)
	_, err := io.WriteString(p.w, out.String())
	return err
}

// CheckUnitOptions refuses options that go-systemd's unit.Serialize, which
// writes every section, key and value as it is, would not write as
// themselves, or that systemd would read as something else: a control
// character anywhere (a newline would start a line of its own, a key or a
// section), a section name with a bracket, a key that is not a plain word,
// a value that begins or ends with a space (readers drop it) or ends in a
// backslash that continues the line. Unit files and .nspawn files are
// checked with it before they are serialized.
func CheckUnitOptions(opts []*unit.UnitOption) error {
	for _, o := range opts {
		if why := unitOptionProblem(o); why != "" {
			return fmt.Errorf("%w: [%s] %s=%q: %s", ErrInvalidOption, Printable(o.Section), Printable(o.Name), o.Value, why)
		}
	}
	return nil
}

// unitOptionProblem says what is wrong with o (see CheckUnitOptions), or "".
func unitOptionProblem(o *unit.UnitOption) string {
	for _, s := range []string{o.Section, o.Name, o.Value} {
		if why := BadText(s); why != "" {
			return why
		}
	}
	if o.Section == "" || strings.ContainsAny(o.Section, "[]") {
		return "not a section name"
	}
	if o.Name == "" || strings.ContainsFunc(o.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) {
		return "not a key"
	}
	if v := o.Value; v != "" {
		first, _ := utf8.DecodeRuneInString(v)
		last, _ := utf8.DecodeLastRuneInString(v)
		if unicode.IsSpace(first) || unicode.IsSpace(last) {
			return "begins or ends with a space, which readers drop"
		}
	}
	n := len(o.Value) - len(strings.TrimRight(o.Value, `\`))
	if n%2 == 1 {
		return "ends in a backslash, which continues the line"
	}
	return ""
}
