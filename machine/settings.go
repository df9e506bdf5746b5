package machine

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/nsbox/nsbox/machine/backend"
)

// Bind is a host directory made visible inside a machine.
type Bind struct {
	Source   string `json:"source"`
	Dest     string `json:"dest"`
	Options  string `json:"options,omitempty"` // nspawn's bind options: rbind, norbind, idmap, ...
	ReadOnly bool   `json:"read_only"`
}

// ParseBind reads nspawn's SRC[:DST[:OPTS]] form with nspawn's own
// escaping (bind_mount_parse: a backslash takes the next character as it
// is, so "\:" is a colon inside a path and "\\" a backslash; OPTS is the
// rest, as it is). A relative SRC or DST is refused: the settings file
// must mean the same thing from any directory. So is a control character
// anywhere, which would be a new line of the settings file.
func ParseBind(spec string, readOnly bool) (Bind, error) {
	if err := backend.ValidateText("bind", spec); err != nil {
		return Bind{}, err
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: bind %q: %s", ErrInvalidOption, spec, why)
	}
	src, rest, more, ok := bindWord(spec)
	if !ok {
		return Bind{}, bad("ends in a lone backslash (write \\\\ for a backslash)")
	}
	b := Bind{Source: src, Dest: src, ReadOnly: readOnly}
	if more {
		dst, opts, more, ok := bindWord(rest)
		if !ok {
			return Bind{}, bad("ends in a lone backslash (write \\\\ for a backslash)")
		}
		if dst != "" {
			b.Dest = dst
		}
		if more {
			b.Options = opts
		}
	}
	if !filepath.IsAbs(b.Source) || !filepath.IsAbs(b.Dest) {
		return Bind{}, bad("source and destination must be absolute paths")
	}
	b.Source, b.Dest = filepath.Clean(b.Source), filepath.Clean(b.Dest)
	if err := b.validate(); err != nil {
		return Bind{}, bad(err.Error())
	}
	return b, nil
}

// bindWord reads one colon-separated field of a bind as nspawn's
// extract_first_word does without unescaping flags: a backslash makes the
// next character literal. It returns the field, what follows its colon,
// whether there was a colon, and false for a lone backslash at the end.
func bindWord(s string) (word, rest string, more, ok bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 == len(s) {
				return "", "", false, false
			}
			i++
			b.WriteByte(s[i])
		case ':':
			return b.String(), s[i+1:], true, true
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), "", false, true
}

// validate checks a bind that is about to be written: absolute paths and
// options without control characters, options of plain words.
func (b Bind) validate() error {
	if !filepath.IsAbs(b.Source) || !filepath.IsAbs(b.Dest) {
		return fmt.Errorf("source and destination must be absolute paths")
	}
	for _, v := range []struct{ what, s string }{{"path", b.Source}, {"path", b.Dest}, {"options", b.Options}} {
		if why := backend.BadText(v.s); why != "" {
			return fmt.Errorf("%s in %s", why, v.what)
		}
	}
	for _, c := range b.Options {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ',' || c == '-' || c == '_' || c == '=') {
			return fmt.Errorf("options %q: use comma-separated words such as norbind,idmap", b.Options)
		}
	}
	return nil
}

// escapeBindPath escapes a path for the SRC:DST form: nspawn reads "\:"
// as a colon and "\\" as a backslash.
func escapeBindPath(p string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(p)
}

// String is the SRC:DST[:OPTS] form nspawn and .nspawn files take, escaped
// as nspawn reads it. A destination that ends in a space gets an empty
// OPTS field, so that a settings file parser, which trims lines, keeps it
// (systemd trims blanks, go-systemd's parser any Unicode space).
func (b Bind) String() string {
	s := escapeBindPath(b.Source) + ":" + escapeBindPath(b.Dest)
	if b.Options != "" {
		s += ":" + b.Options
	} else if r, _ := utf8.DecodeLastRuneInString(b.Dest); unicode.IsSpace(r) {
		s += ":"
	}
	return s
}

// withIDMap returns the binds as nspawn should mount them: under private
// users a plain bind shows host files as owned by nobody and refuses the
// machine's root, so binds without options of their own get "idmap", which
// maps host root to the machine's root.
func withIDMap(binds []Bind, privateUsers bool) []Bind {
	out := make([]Bind, len(binds))
	for i, b := range binds {
		if privateUsers && b.Options == "" {
			b.Options = "idmap"
		}
		out[i] = b
	}
	return out
}

// BootOptions are the settings a machine boots with. They are remembered
// in /etc/systemd/nspawn/NAME.nspawn, which machinectl reads too.
type BootOptions struct {
	// Network is "veth" (default), "none" (private, loopback only), "host",
	// "bridge:BR" or "zone:Z".
	Network string `json:"network"`
	Binds   []Bind `json:"binds"`
	// PrivateUsers maps the machine's users to an unused host range, the
	// only setting under which nspawn is a security boundary.
	PrivateUsers bool `json:"private_users"`
	// Ports forwards host ports to the machine: [tcp|udp:]HOST[:MACHINE].
	Ports []string `json:"ports"`
	// BindUsers are host users nspawn makes appear in the machine, with
	// their private group and their home (BindUser=, --bind-user).
	BindUsers []string `json:"bind_users"`
	// App, when set, makes the machine an app machine: it runs App's
	// command under nspawn's stub init instead of booting an init.
	App *App `json:"app,omitempty"`

	// file is the settings file these options were read from: a rewrite
	// changes only the keys nsbox owns and keeps every other line.
	file *settingsDoc
}

// ValidatePort checks a --port value as nspawn takes it.
func ValidatePort(spec string) error {
	if err := backend.ValidateText("port", spec); err != nil {
		return err
	}
	s := spec
	if p, rest, ok := strings.Cut(s, ":"); ok && (p == "tcp" || p == "udp") {
		s = rest
	}
	parts := strings.Split(s, ":")
	if len(parts) > 2 {
		return fmt.Errorf("%w: port %q (use [tcp|udp:]HOST[:MACHINE])", ErrInvalidOption, spec)
	}
	for _, p := range parts {
		if !portNumber(p) {
			return fmt.Errorf("%w: port %q (use [tcp|udp:]HOST[:MACHINE], ports 1-65535)", ErrInvalidOption, spec)
		}
	}
	return nil
}

// portNumber reports whether p is a port number in plain digits.
func portNumber(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n >= 1 && n <= 65535
}

// DefaultBootOptions are what a machine gets before anyone says otherwise.
func DefaultBootOptions() BootOptions {
	return BootOptions{Network: "veth", PrivateUsers: true}
}

// ValidateNetwork checks a --network value. Bridge and zone names follow
// the kernel's and nspawn's rule for interface names (ifname_valid): at
// most 15 characters (12 for a zone, which nspawn names "vz-ZONE"), none
// of them a control character, a space, ':', '/' or '%', and not only
// digits.
func ValidateNetwork(n string) error {
	if err := backend.ValidateText("network", n); err != nil {
		return err
	}
	switch n {
	case "veth", "none", "host":
		return nil
	}
	if br, ok := strings.CutPrefix(n, "bridge:"); ok {
		return validIfname(n, "bridge", br, 15)
	}
	if z, ok := strings.CutPrefix(n, "zone:"); ok {
		return validIfname(n, "zone", z, 12)
	}
	return fmt.Errorf("%w: network %q (use veth, none, host, bridge:BR or zone:Z)", ErrInvalidOption, n)
}

// validIfname checks the interface name part of a --network value.
func validIfname(spec, kind, name string, max int) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: network %q: %s name %s", ErrInvalidOption, spec, kind, why)
	}
	if name == "" || len(name) > max {
		return bad(fmt.Sprintf("must be 1-%d characters", max))
	}
	if name == "." || name == ".." {
		return bad("must not be . or ..")
	}
	digits := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == ':' || c == '/' || c == '%' {
			return bad(fmt.Sprintf("must not hold %q", c))
		}
		digits = digits && c >= '0' && c <= '9'
	}
	if digits {
		return bad("must not be a number")
	}
	return nil
}

// validate checks every value of o that goes into the settings file or
// onto nspawn's command line.
func (o BootOptions) validate() error {
	if o.Network != "" {
		if err := ValidateNetwork(o.Network); err != nil {
			return err
		}
	}
	for _, b := range o.Binds {
		if err := b.validate(); err != nil {
			return fmt.Errorf("%w: bind %q: %v", ErrInvalidOption, b.String(), err)
		}
	}
	for _, p := range o.Ports {
		if err := ValidatePort(p); err != nil {
			return err
		}
	}
	for _, u := range o.BindUsers {
		if err := ValidateBindUser(u); err != nil {
			return err
		}
	}
	if o.App != nil {
		return o.App.validate()
	}
	return nil
}

// settingsHeader opens every settings file nsbox writes. A comment line
// starting with settingsHeaderPrefix (earlier versions wrote one line of
// their own), or equal to a line of the header, is nsbox's and rewritten.
const (
	settingsHeaderPrefix = "# Written by nsbox"
	settingsHeader       = settingsHeaderPrefix + "; it rewrites only its own keys and keeps every other line.\n" +
		"# systemd-nspawn@.service and machinectl read this file too.\n"
)

// ownedKeys are the settings nsbox sets from BootOptions, by section.
// Everything else in the file is the user's: kept as written.
var ownedKeys = map[string]bool{
	"Exec.Boot": true, "Exec.PrivateUsers": true, "Exec.ProcessTwo": true, "Exec.Parameters": true,
	"Exec.WorkingDirectory": true, "Exec.User": true,
	"Files.PrivateUsersOwnership": true, "Files.Bind": true, "Files.BindReadOnly": true, "Files.BindUser": true,
	"Network.Private": true, "Network.VirtualEthernet": true, "Network.Bridge": true,
	"Network.Zone": true, "Network.Port": true,
}

// settingsLine is one logical line of a settings file: a section header,
// an assignment (over several lines when continued with a backslash), a
// comment or a blank line.
type settingsLine struct {
	raw     string           // as written, without the final newline
	section string           // the section it is in ("" before the first)
	opt     *unit.UnitOption // an assignment in a section, as go-systemd read it
	header  bool
	line    int // its (last) line number, for messages
}

// owned reports whether the line is one nsbox writes itself.
func (l settingsLine) owned() bool {
	if l.opt != nil {
		return ownedKeys[l.opt.Section+"."+l.opt.Name]
	}
	c := strings.TrimSpace(l.raw)
	return !l.header && c != "" && (strings.HasPrefix(c, settingsHeaderPrefix) || slices.Contains(strings.Split(settingsHeader, "\n"), c))
}

// settingsDoc is a settings file as read, line by line.
type settingsDoc struct {
	lines []settingsLine
}

// userKeys reports whether the file holds settings of the user's own
// (not comments), which only nspawn reading the file can honour.
func (d *settingsDoc) userKeys() bool {
	if d == nil {
		return false
	}
	for _, l := range d.lines {
		if l.opt != nil && !l.owned() {
			return true
		}
	}
	return false
}

// blanks are the characters systemd strips from both ends of a line, a
// key and a value (WHITESPACE, less the line ends, which a line has no
// more).
const blanks = " \t"

// parseSettingsDoc reads a settings file in two steps.
//
// First the file is split into logical lines as systemd's config parser
// does (conf-parser.c): a line ending in an odd run of backslashes goes
// on on the next line, the backslash read as a space; a comment line
// stands on its own, inside such a run too; an even run of backslashes is
// escaped backslashes and ends the line. go-systemd's unit parser does
// none of this (it continues any line ending in a backslash, keeps the
// backslash and the newline in the value, continues comments, and ends a
// continued value at a comment), and it drops comments, which a rewrite
// keeps: this step is nsbox's, and keeps each logical line as written.
// Any control character but tab (a carriage return or NUL ends a line for
// systemd, not for a reader of the file) and text that is not UTF-8 are
// refused, so nsbox and nspawn always read the same lines.
//
// Then go-systemd's unit.DeserializeOptions reads the sections, keys and
// values from the logical lines, one to a line, without comments: text it
// reads as systemd does, but for what is guarded here. An assignment
// before the first section is not given to it (systemd ignores one;
// go-systemd would take a "[" in it for a section); a line ending in
// escaped backslashes gets a blank after them (go-systemd would continue
// it; both drop the blank); a line of SYSTEMD_LINE_MAX bytes or more is
// refused here, always (go-systemd refuses one only where its read buffer
// happens to hold all of it; systemd reads lines up to 1 MiB); and each
// key and value it returns must be the line's text around its first "="
// less blanks, as systemd reads them (go-systemd also strips Unicode
// spaces such as U+00A0, which systemd keeps).
func parseSettingsDoc(text string) (*settingsDoc, error) {
	d := &settingsDoc{}
	text = strings.TrimPrefix(text, "\ufeff")
	physical := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if text == "" {
		physical = nil
	}
	section := ""
	var run []string // raw lines of an assignment still going on
	acc := ""        // the assignment as systemd joins it
	var given strings.Builder
	type assignment struct {
		at      int // in d.lines
		logical string
	}
	var assignments []assignment // what go-systemd is given, in order
	give := func(n int, logical string) error {
		if strings.HasSuffix(logical, `\`) { // escaped backslashes: a logical line is not continued
			logical += " "
		}
		if len(logical) >= unit.SYSTEMD_LINE_MAX {
			return lineErrorf(n, "longer than go-systemd's unit parser reads (%d bytes; shorten it)", unit.SYSTEMD_LINE_MAX-1)
		}
		given.WriteString(logical + "\n")
		return nil
	}
	for n, line := range physical {
		line = strings.TrimSuffix(line, "\r")
		if why := backend.BadText(strings.ReplaceAll(line, "\t", " ")); why != "" {
			return nil, lineErrorf(n+1, "%s (remove it)", why)
		}
		trimmed := strings.Trim(line, blanks)
		if trimmed != "" && (trimmed[0] == '#' || trimmed[0] == ';') {
			d.lines = append(d.lines, settingsLine{raw: line, section: section, line: n + 1})
			continue
		}
		run = append(run, line)
		acc += line
		if continued(acc) {
			// The backslash becomes a space, as systemd makes it.
			acc = acc[:len(acc)-1] + " "
			continue
		}
		logical := strings.Trim(acc, blanks)
		l := settingsLine{raw: strings.Join(run, "\n"), section: section, line: n + 1}
		run, acc = nil, ""
		switch {
		case logical == "":
		case logical[0] == '[':
			name, ok := strings.CutSuffix(logical[1:], "]")
			if !ok || strings.Contains(name, "]") {
				return nil, lineErrorf(n+1, "%q is not a section header", logical)
			}
			if err := give(n+1, logical); err != nil {
				return nil, err
			}
			section = name
			l.section, l.header = section, true
		default:
			k, _, ok := strings.Cut(logical, "=")
			if !ok {
				return nil, lineErrorf(n+1, "%q is not KEY=VALUE", logical)
			}
			if strings.Trim(k, blanks) == "" {
				return nil, lineErrorf(n+1, "%q has no key", logical)
			}
			if section == "" {
				break // systemd ignores it: kept as it is
			}
			if err := give(n+1, logical); err != nil {
				return nil, err
			}
			assignments = append(assignments, assignment{len(d.lines), logical})
		}
		d.lines = append(d.lines, l)
	}
	if len(run) > 0 {
		return nil, lineErrorf(len(physical), "the file ends inside a continued line")
	}
	opts, err := unit.DeserializeOptions(strings.NewReader(given.String()))
	if err != nil {
		return nil, fmt.Errorf("go-systemd's unit parser: %w", err)
	}
	if len(opts) != len(assignments) {
		return nil, fmt.Errorf("go-systemd's unit parser read %d settings, systemd reads %d", len(opts), len(assignments))
	}
	for i, a := range assignments {
		l, o := &d.lines[a.at], opts[i]
		k, v, _ := strings.Cut(a.logical, "=")
		if o.Section != l.section || o.Name != strings.Trim(k, blanks) || o.Value != strings.Trim(v, blanks) {
			return nil, lineErrorf(l.line, "%q is read differently by go-systemd's unit parser and by systemd (a space that is not a blank or tab around the key or value?)", a.logical)
		}
		l.opt = o
	}
	return d, nil
}

// LineError is a problem with one line of a settings file.
type LineError struct {
	Line int // from 1
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// Unwrap gives the problem itself, for errors.Is(err, ErrInvalidOption).
func (e *LineError) Unwrap() error { return e.Err }

// lineErrorf is a LineError for line n.
func lineErrorf(n int, format string, a ...any) error {
	return &LineError{Line: n, Err: fmt.Errorf(format, a...)}
}

// continued reports whether a line ends in a backslash that escapes the
// newline: an odd run of backslashes at its end.
func continued(s string) bool {
	n := len(s) - len(strings.TrimRight(s, `\`))
	return n%2 == 1
}

// SettingsText renders o in systemd.nspawn(5) format. When o was read from
// a settings file, the file is kept as the user left it (their keys,
// sections and comments, in place) and only the keys nsbox owns are
// replaced; nsbox's keys go at the top of their section. A value that
// would not survive the trip (a control character, a relative bind, a bad
// bridge name, a line too long for go-systemd to read back) is an error,
// and nothing is rendered.
//
// nsbox's sections and keys are written by go-systemd's unit package,
// checked first (backend.CheckUnitOptions), since it writes values as
// they are; the user's lines are copied as they were read. What is
// rendered must read back (ParseSettingsFile).
func (o BootOptions) SettingsText() (string, error) {
	if err := o.validate(); err != nil {
		return "", err
	}
	own := o.ownedSections()
	if err := checkSettings(own); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(settingsHeader)
	if o.file == nil {
		b.WriteString(serializeSections(own...))
	} else {
		o.file.rewrite(&b, own)
	}
	if _, err := ParseSettingsFile(b.String()); err != nil {
		return "", fmt.Errorf("%w: the settings file would not read back: %v", ErrInvalidOption, err)
	}
	return b.String(), nil
}

// rewrite writes d with nsbox's sections own in place of the keys it
// owns: at the top of their section, or in sections of their own at the
// end for those d lacks.
func (d *settingsDoc) rewrite(b *strings.Builder, own []*unit.UnitSection) {
	done := map[string]bool{}
	for _, l := range d.lines {
		if l.owned() {
			continue
		}
		b.WriteString(l.raw + "\n")
		if !l.header || done[l.section] {
			continue
		}
		for _, s := range own {
			if s.Section == l.section {
				// go-systemd's rendering of the section, without its header.
				_, entries, _ := strings.Cut(serializeSections(s), "\n")
				b.WriteString(entries)
				done[s.Section] = true
			}
		}
	}
	for _, s := range own {
		if done[s.Section] {
			continue
		}
		if !strings.HasSuffix(b.String(), "\n\n") {
			b.WriteString("\n")
		}
		b.WriteString(serializeSections(s))
	}
}

// serializeSections is go-systemd's rendering of secs, an empty one with
// its header (unit.Serialize would leave it out).
func serializeSections(secs ...*unit.UnitSection) string {
	text, _ := io.ReadAll(unit.SerializeSections(secs)) // a bytes.Buffer: no error
	return string(text)
}

// checkSettings refuses sections of nsbox's keys that go-systemd would
// not write as they are (backend.CheckUnitOptions) or that would make a
// line it cannot read back.
func checkSettings(secs []*unit.UnitSection) error {
	var opts []*unit.UnitOption
	for _, s := range secs {
		for _, e := range s.Entries {
			opts = append(opts, unit.NewUnitOption(s.Section, e.Name, e.Value))
		}
	}
	if err := backend.CheckUnitOptions(opts); err != nil {
		return err
	}
	for _, o := range opts {
		if n := len(o.Name) + 1 + len(o.Value); n >= unit.SYSTEMD_LINE_MAX {
			return fmt.Errorf("%w: %s=%.40q...: a line of %d bytes, longer than go-systemd's unit parser reads (%d)", ErrInvalidOption, o.Name, o.Value, n, unit.SYSTEMD_LINE_MAX-1)
		}
	}
	return nil
}

// ownedSections are the sections and keys nsbox writes for o, in order.
func (o BootOptions) ownedSections() []*unit.UnitSection {
	exec := []*unit.UnitEntry{{Name: "Boot", Value: "yes"}, {Name: "PrivateUsers", Value: "no"}}
	if a := o.App; a != nil {
		exec[0].Value = "no"
		exec = append(exec, &unit.UnitEntry{Name: "ProcessTwo", Value: "yes"})
		if len(a.Argv) > 0 {
			exec = append(exec, &unit.UnitEntry{Name: "Parameters", Value: quoteWords(a.Argv)})
		}
		if a.Workdir != "" {
			exec = append(exec, &unit.UnitEntry{Name: "WorkingDirectory", Value: a.Workdir})
		}
		if a.User != "" {
			exec = append(exec, &unit.UnitEntry{Name: "User", Value: a.User})
		}
	}
	var files []*unit.UnitEntry
	if o.PrivateUsers {
		exec[1].Value = "pick"
		files = append(files, &unit.UnitEntry{Name: "PrivateUsersOwnership", Value: "auto"})
	}
	for _, bd := range withIDMap(o.Binds, o.PrivateUsers) {
		key := "Bind"
		if bd.ReadOnly {
			key = "BindReadOnly"
		}
		files = append(files, &unit.UnitEntry{Name: key, Value: bd.String()})
	}
	for _, u := range o.BindUsers {
		files = append(files, &unit.UnitEntry{Name: "BindUser", Value: u})
	}
	var network []*unit.UnitEntry
	set := func(key, value string) { network = append(network, &unit.UnitEntry{Name: key, Value: value}) }
	switch {
	case o.Network == "none":
		set("Private", "yes")
		set("VirtualEthernet", "no")
	case o.Network == "host":
		set("Private", "no")
		set("VirtualEthernet", "no")
	case strings.HasPrefix(o.Network, "bridge:"):
		set("Bridge", strings.TrimPrefix(o.Network, "bridge:"))
	case strings.HasPrefix(o.Network, "zone:"):
		set("Zone", strings.TrimPrefix(o.Network, "zone:"))
	default:
		set("VirtualEthernet", "yes")
	}
	for _, p := range o.Ports {
		set("Port", p)
	}
	return []*unit.UnitSection{{Section: "Exec", Entries: exec}, {Section: "Files", Entries: files}, {Section: "Network", Entries: network}}
}

// ParseSettingsFile reads the subset of systemd.nspawn(5) that nsbox
// writes. Unknown keys are kept out of BootOptions, not refused: a user may
// have added settings of their own, which nspawn honours (see NspawnArgs)
// and a rewrite keeps. A control character anywhere in the file, a line
// go-systemd's unit parser would read otherwise than systemd (see
// parseSettingsDoc), or a value of nsbox's keys it would not write itself,
// is an error.
func ParseSettingsFile(text string) (BootOptions, error) {
	o := DefaultBootOptions()
	doc, err := parseSettingsDoc(text)
	if err != nil {
		return o, err
	}
	private, veth := false, false
	app := &App{}
	boot, pid2 := true, false
	for _, l := range doc.lines {
		if l.opt == nil {
			continue
		}
		at := func(err error) error { return &LineError{Line: l.line, Err: err} }
		v := l.opt.Value
		switch l.opt.Section + "." + l.opt.Name {
		case "Exec.Boot", "Exec.ProcessTwo":
			b, ok := parseBool(v)
			if !ok {
				return o, at(fmt.Errorf("%w: %s=%q is not a boolean", ErrInvalidOption, l.opt.Name, v))
			}
			if l.opt.Name == "Boot" {
				boot = b
			} else {
				pid2 = b
			}
		case "Exec.Parameters":
			// A list; an empty value drops what came before.
			words, err := splitWords(v)
			if err != nil {
				return o, at(fmt.Errorf("%w: Parameters=: %v", ErrInvalidOption, err))
			}
			if v == "" {
				app.Argv = nil
			}
			app.Argv = append(app.Argv, words...)
		case "Exec.WorkingDirectory":
			app.Workdir = v
		case "Exec.User":
			app.User = v
		case "Exec.PrivateUsers":
			// "pick", "identity" and ranges are on, as any boolean that
			// is not off.
			on, isBool := parseBool(v)
			o.PrivateUsers = on || !isBool
		case "Files.Bind", "Files.BindReadOnly":
			b, err := ParseBind(v, l.opt.Name == "BindReadOnly")
			if err != nil {
				return o, at(err)
			}
			o.Binds = append(o.Binds, b)
		case "Files.BindUser":
			// nspawn reads a list of names; an empty value drops those
			// above it.
			if v == "" {
				o.BindUsers = nil
			}
			for _, u := range strings.Fields(v) {
				if err := ValidateBindUser(u); err != nil {
					return o, at(err)
				}
				o.BindUsers = append(o.BindUsers, u)
			}
		case "Network.Private":
			private, _ = parseBool(v)
		case "Network.VirtualEthernet":
			veth, _ = parseBool(v)
			if !veth && !private {
				o.Network = "host"
			}
		case "Network.Bridge":
			if err := ValidateNetwork("bridge:" + v); err != nil {
				return o, at(err)
			}
			o.Network = "bridge:" + v
		case "Network.Zone":
			if err := ValidateNetwork("zone:" + v); err != nil {
				return o, at(err)
			}
			o.Network = "zone:" + v
		case "Network.Port":
			if err := ValidatePort(v); err != nil {
				return o, at(err)
			}
			o.Ports = append(o.Ports, v)
		}
	}
	if private && !veth && !strings.Contains(o.Network, ":") {
		o.Network = "none"
	}
	if !boot {
		// An app machine: nsbox writes ProcessTwo=yes with it and runs
		// every app under nspawn's stub init, so a file that says
		// otherwise is not nsbox's to read as it would run it.
		if !pid2 {
			return o, fmt.Errorf("%w: Boot=no without ProcessTwo=yes: nsbox runs an app machine's command under nspawn's stub init only (add ProcessTwo=yes)", ErrInvalidOption)
		}
		if err := app.validate(); err != nil {
			return o, err
		}
		o.App = app
	}
	o.file = doc
	return o, nil
}

// parseBool reads a boolean as systemd's parse_boolean does: 1, yes, y,
// true, t, on and 0, no, n, false, f, off, in any case. ok is false for
// anything else.
func parseBool(v string) (value, ok bool) {
	switch strings.ToLower(v) {
	case "1", "yes", "y", "true", "t", "on":
		return true, true
	case "0", "no", "n", "false", "f", "off":
		return false, true
	}
	return false, false
}

// readSettings loads the remembered options of a machine, or the defaults
// when it has never been booted by nsbox.
func readSettings(path string) (BootOptions, bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return DefaultBootOptions(), false, nil
	}
	if err != nil {
		return BootOptions{}, false, err
	}
	o, err := ParseSettingsFile(string(b))
	if err != nil {
		return o, true, fmt.Errorf("%s: %w", path, err)
	}
	return o, true, nil
}
