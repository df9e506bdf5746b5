package machine

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

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
// OPTS field, so that a settings file parser, which trims lines, keeps it.
func (b Bind) String() string {
	s := escapeBindPath(b.Source) + ":" + escapeBindPath(b.Dest)
	if b.Options != "" {
		s += ":" + b.Options
	} else if strings.HasSuffix(b.Dest, " ") {
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
	"Exec.Boot": true, "Exec.PrivateUsers": true,
	"Files.PrivateUsersOwnership": true, "Files.Bind": true, "Files.BindReadOnly": true,
	"Network.Private": true, "Network.VirtualEthernet": true, "Network.Bridge": true,
	"Network.Zone": true, "Network.Port": true,
}

// settingsLine is one logical line of a settings file: a section header,
// an assignment (over several lines when continued with a backslash), a
// comment or a blank line.
type settingsLine struct {
	raw     string // as written, without the final newline
	section string // the section it is in
	key     string // for an assignment
	value   string
	header  bool
	line    int // its (last) line number, for messages
}

// owned reports whether the line is one nsbox writes itself.
func (l settingsLine) owned() bool {
	if l.key != "" {
		return ownedKeys[l.section+"."+l.key]
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
		if l.key != "" && l.section != "" && !l.owned() {
			return true
		}
	}
	return false
}

// parseSettingsDoc splits text into logical lines as systemd's config
// parser does (conf-parser.c): a line ending in an unescaped backslash
// goes on on the next line, and a comment line inside such a run stands
// on its own. Any control character but tab (a carriage return or NUL
// ends a line for systemd, not for a reader of the file) and text that is
// not UTF-8 are refused, so nsbox and nspawn always read the same lines.
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
	for n, line := range physical {
		line = strings.TrimSuffix(line, "\r")
		if why := backend.BadText(strings.ReplaceAll(line, "\t", " ")); why != "" {
			return nil, fmt.Errorf("line %d: %s (remove it)", n+1, why)
		}
		trimmed := strings.TrimSpace(line)
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
		logical := strings.TrimSpace(acc)
		l := settingsLine{raw: strings.Join(run, "\n"), section: section, line: n + 1}
		run, acc = nil, ""
		switch {
		case logical == "":
		case logical[0] == '[' && logical[len(logical)-1] == ']':
			section = logical[1 : len(logical)-1]
			l.section, l.header = section, true
		default:
			k, v, ok := strings.Cut(logical, "=")
			if !ok {
				return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", n+1, logical)
			}
			l.key, l.value = strings.TrimSpace(k), strings.TrimSpace(v)
			if l.key == "" {
				return nil, fmt.Errorf("line %d: %q has no key", n+1, logical)
			}
		}
		d.lines = append(d.lines, l)
	}
	if len(run) > 0 {
		return nil, fmt.Errorf("line %d: the file ends inside a continued line", len(physical))
	}
	return d, nil
}

// continued reports whether a line ends in a backslash that escapes the
// newline: an odd run of backslashes at its end.
func continued(s string) bool {
	n := 0
	for i := len(s) - 1; i >= 0 && s[i] == '\\'; i-- {
		n++
	}
	return n%2 == 1
}

// SettingsText renders o in systemd.nspawn(5) format. When o was read from
// a settings file, the file is kept as the user left it (their keys,
// sections and comments, in place) and only the keys nsbox owns are
// replaced; nsbox's keys go at the top of their section. A value that
// would not survive the trip (a control character, a relative bind, a bad
// bridge name) is an error, and nothing is rendered.
func (o BootOptions) SettingsText() (string, error) {
	if err := o.validate(); err != nil {
		return "", err
	}
	own := o.ownedLines()
	var b strings.Builder
	b.WriteString(settingsHeader)
	if o.file == nil {
		for i, s := range own {
			if i > 0 {
				b.WriteString("\n")
			}
			b.WriteString("[" + s.section + "]\n")
			for _, l := range s.lines {
				b.WriteString(l + "\n")
			}
		}
		return b.String(), nil
	}
	done := map[string]bool{}
	for _, l := range o.file.lines {
		if l.owned() {
			continue
		}
		b.WriteString(l.raw + "\n")
		if !l.header || done[l.section] {
			continue
		}
		for _, s := range own {
			if s.section == l.section {
				for _, ol := range s.lines {
					b.WriteString(ol + "\n")
				}
				done[s.section] = true
			}
		}
	}
	for _, s := range own {
		if done[s.section] {
			continue
		}
		if !strings.HasSuffix(b.String(), "\n\n") {
			b.WriteString("\n")
		}
		b.WriteString("[" + s.section + "]\n")
		for _, l := range s.lines {
			b.WriteString(l + "\n")
		}
	}
	return b.String(), nil
}

// ownedSection is the lines nsbox writes in one section.
type ownedSection struct {
	section string
	lines   []string
}

// ownedLines are the keys nsbox writes for o, by section, in order.
func (o BootOptions) ownedLines() []ownedSection {
	exec := []string{"Boot=yes", "PrivateUsers=no"}
	var files []string
	if o.PrivateUsers {
		exec[1] = "PrivateUsers=pick"
		files = append(files, "PrivateUsersOwnership=auto")
	}
	for _, bd := range withIDMap(o.Binds, o.PrivateUsers) {
		if bd.ReadOnly {
			files = append(files, "BindReadOnly="+bd.String())
		} else {
			files = append(files, "Bind="+bd.String())
		}
	}
	var network []string
	switch {
	case o.Network == "none":
		network = append(network, "Private=yes", "VirtualEthernet=no")
	case o.Network == "host":
		network = append(network, "Private=no", "VirtualEthernet=no")
	case strings.HasPrefix(o.Network, "bridge:"):
		network = append(network, "Bridge="+strings.TrimPrefix(o.Network, "bridge:"))
	case strings.HasPrefix(o.Network, "zone:"):
		network = append(network, "Zone="+strings.TrimPrefix(o.Network, "zone:"))
	default:
		network = append(network, "VirtualEthernet=yes")
	}
	for _, p := range o.Ports {
		network = append(network, "Port="+p)
	}
	return []ownedSection{{"Exec", exec}, {"Files", files}, {"Network", network}}
}

// ParseSettingsFile reads the subset of systemd.nspawn(5) that nsbox
// writes. Unknown keys are kept out of BootOptions, not refused: a user may
// have added settings of their own, which nspawn honours (see NspawnArgs)
// and a rewrite keeps. A control character anywhere in the file, or a
// value of nsbox's keys it would not write itself, is an error.
func ParseSettingsFile(text string) (BootOptions, error) {
	o := DefaultBootOptions()
	doc, err := parseSettingsDoc(text)
	if err != nil {
		return o, err
	}
	private, veth := false, false
	for _, l := range doc.lines {
		if l.key == "" {
			continue
		}
		at := func(err error) error { return fmt.Errorf("line %d: %w", l.line, err) }
		v := l.value
		switch l.section + "." + l.key {
		case "Exec.PrivateUsers":
			o.PrivateUsers = v != "no" && v != "false" && v != "0"
		case "Files.Bind", "Files.BindReadOnly":
			b, err := ParseBind(v, l.key == "BindReadOnly")
			if err != nil {
				return o, at(err)
			}
			o.Binds = append(o.Binds, b)
		case "Network.Private":
			private = v == "yes" || v == "true" || v == "1"
		case "Network.VirtualEthernet":
			veth = v == "yes" || v == "true" || v == "1"
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
	o.file = doc
	return o, nil
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
