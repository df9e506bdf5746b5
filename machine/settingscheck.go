package machine

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// nspawnKeys are the sections and keys systemd-nspawn 252 reads from a
// settings file (its src/nspawn/nspawn-gperf.gperf; the same list is in
// the strings of this host's systemd-nspawn). A key it does not know it
// ignores with a line in its log: edit refuses it instead.
var nspawnKeys = map[string][]string{
	"Exec": {"AmbientCapability", "Boot", "CPUAffinity", "Capability", "DropCapability", "Environment", "Ephemeral",
		"Hostname", "KillSignal", "LimitAS", "LimitCORE", "LimitCPU", "LimitDATA", "LimitFSIZE", "LimitLOCKS",
		"LimitMEMLOCK", "LimitMSGQUEUE", "LimitNICE", "LimitNOFILE", "LimitNPROC", "LimitRSS", "LimitRTPRIO",
		"LimitRTTIME", "LimitSIGPENDING", "LimitSTACK", "LinkJournal", "MachineID", "NoNewPrivileges", "NotifyReady",
		"OOMScoreAdjust", "Parameters", "Personality", "PivotRoot", "PrivateUsers", "ProcessTwo", "ResolvConf",
		"SuppressSync", "SystemCallFilter", "Timezone", "User", "WorkingDirectory"},
	"Files": {"Bind", "BindReadOnly", "BindUser", "Inaccessible", "Overlay", "OverlayReadOnly", "PrivateUsersChown",
		"PrivateUsersOwnership", "ReadOnly", "TemporaryFileSystem", "Volatile"},
	"Network": {"Bridge", "IPVLAN", "Interface", "MACVLAN", "Port", "Private", "VirtualEthernet",
		"VirtualEthernetExtra", "Zone"},
}

// nspawnSections lists nspawnKeys' sections for messages.
const nspawnSections = "[Exec], [Files] and [Network]"

// SettingsProblem is what is wrong with one line of a settings file, or
// with the file as a whole (Line 0).
type SettingsProblem struct {
	Line int    `json:"line"`
	Why  string `json:"why"`
}

// tristates are keys that take a boolean (or nothing, which resets them).
var tristates = map[string]bool{
	"Exec.Ephemeral": true, "Exec.NotifyReady": true, "Exec.NoNewPrivileges": true, "Exec.SuppressSync": true,
	"Files.ReadOnly": true, "Files.PrivateUsersChown": true, "Network.Private": true, "Network.VirtualEthernet": true,
}

// enums are keys that take one of a few words (or a boolean, where
// nspawn reads one too).
var enums = map[string][]string{
	"Exec.LinkJournal": {"no", "host", "try-host", "guest", "try-guest", "auto"},
	"Exec.Timezone":    {"off", "copy", "bind", "symlink", "delete", "auto"},
	"Exec.ResolvConf": {"off", "copy-host", "copy-static", "copy-uplink", "copy-stub", "replace-host", "replace-static",
		"replace-uplink", "replace-stub", "bind-host", "bind-static", "bind-uplink", "bind-stub", "delete", "auto"},
	"Files.Volatile": {"yes", "no", "state", "overlay"},
}

// commandLineKeys are keys nsbox also passes on nspawn's command line,
// which wins over the file when nsbox boots the machine (machinectl
// start reads the file over its own command line).
var commandLineKeys = map[string]string{
	"Exec.LinkJournal": "--link-journal=no",
	"Exec.NotifyReady": "--notify-ready=yes",
	"Exec.ResolvConf":  "--resolv-conf= as the host's /etc/resolv.conf suits",
}

// CheckSettings checks a settings file as edit installs it: it must read
// as systemd reads it and as nsbox does (ParseSettingsFile); its sections
// and keys must be ones systemd-nspawn 252 knows; the values of the keys
// nsbox writes itself must pass the checks of the flags that set them
// (--bind, --port, --network) and be ones nsbox keeps; booleans, names of
// modes, machine IDs and environment assignments must read. Problems
// refuse the file; notes say what it will not do, and do not.
func CheckSettings(text string) (problems, notes []SettingsProblem) {
	add := func(line int, format string, a ...any) {
		problems = append(problems, SettingsProblem{line, fmt.Sprintf(format, a...)})
	}
	// A parse error at its line (LineError), or of the file as a whole.
	addErr := func(err error) {
		var le *LineError
		if errors.As(err, &le) {
			add(le.Line, "%v", le.Err)
		} else {
			add(0, "%v", err)
		}
	}
	doc, err := parseSettingsDoc(text)
	if err != nil {
		addErr(err)
		return problems, nil
	}
	firstPort := 0
	for _, l := range doc.lines {
		if l.header {
			if _, ok := nspawnKeys[l.section]; !ok {
				add(l.line, "unknown section [%s] (systemd-nspawn reads %s)", l.section, nspawnSections)
			}
			continue
		}
		if l.opt == nil {
			if c := strings.Trim(l.raw, blanks); c != "" && c[0] != '#' && c[0] != ';' {
				add(l.line, "%q is outside any section, where systemd-nspawn ignores it (put it under %s)", c, nspawnSections)
			}
			continue
		}
		if _, ok := nspawnKeys[l.section]; !ok {
			continue // said at the section's header
		}
		key := l.opt.Name
		if !slices.Contains(nspawnKeys[l.section], key) {
			add(l.line, "unknown key %s= in [%s]%s", key, l.section, keyHint(l.section, key))
			continue
		}
		full := l.section + "." + key
		if why := checkValue(full, l.opt.Value); why != "" {
			add(l.line, "%s=%s: %s", key, l.opt.Value, why)
			continue
		}
		if flag, ok := commandLineKeys[full]; ok {
			notes = append(notes, SettingsProblem{l.line, fmt.Sprintf("%s= has no effect when nsbox boots the machine: it passes %s, which wins over the file (machinectl start honours it)", key, flag)})
		}
		if full == "Network.Port" && firstPort == 0 {
			firstPort = l.line
		}
	}
	if len(problems) > 0 {
		return problems, notes
	}
	// What nsbox makes of the whole, as a boot will.
	o, err := ParseSettingsFile(text)
	if err != nil {
		addErr(err)
		return problems, notes
	}
	if len(o.Ports) > 0 && o.Network == "host" {
		add(firstPort, "Port= needs a network of the machine's own (VirtualEthernet=yes, Bridge= or Zone=), not the host's")
	}
	if len(o.BindUsers) > 0 && !o.PrivateUsers {
		add(0, "BindUser= needs the machine's user namespace (PrivateUsers=pick): nspawn binds users into one only")
	}
	if _, err := o.SettingsText(); err != nil {
		add(0, "nsbox could not write it back at the next boot: %v", err)
	}
	return problems, notes
}

// keyHint suggests where an unknown key belongs: another section, or a
// key of this one spelt otherwise.
func keyHint(section, key string) string {
	var secs []string
	for s, keys := range nspawnKeys {
		if slices.Contains(keys, key) {
			secs = append(secs, "["+s+"]")
		}
	}
	if len(secs) > 0 {
		sort.Strings(secs)
		return fmt.Sprintf(" (it belongs in %s)", strings.Join(secs, ", "))
	}
	for _, k := range nspawnKeys[section] {
		if strings.EqualFold(k, key) {
			return fmt.Sprintf(" (keys are case-sensitive: %s=)", k)
		}
	}
	return " (see systemd.nspawn(5))"
}

// checkValue says what is wrong with value of key full (Section.Key), or
// "". Only what nsbox knows how to read is checked; nspawn reads the rest.
func checkValue(full, v string) string {
	if ownedKeys[full] && v == "" {
		if full == "Files.Bind" || full == "Files.BindReadOnly" {
			return "an empty value drops the binds above it; remove their lines instead"
		}
		if full == "Files.BindUser" {
			return "an empty value drops the users above it; remove their lines instead"
		}
		return "give a value (nsbox rewrites this key at every boot)"
	}
	why := func(err error) string {
		if err == nil {
			return ""
		}
		// The flag checks say "invalid option: ..."; the key says what.
		return strings.TrimPrefix(err.Error(), ErrInvalidOption.Error()+": ")
	}
	switch full {
	case "Exec.Boot":
		if on, ok := parseBool(v); !ok || !on {
			return "nsbox always boots the machine's init (it writes Boot=yes at every boot)"
		}
	case "Exec.PrivateUsers":
		if _, ok := parseBool(v); !ok && v != "pick" {
			return "nsbox boots with pick or no (it writes one of them at every boot); identity and ranges are not kept"
		}
	case "Files.PrivateUsersOwnership":
		if v != "auto" {
			return "nsbox writes auto at every boot (nspawn maps or chowns as the file system allows)"
		}
	case "Files.Bind", "Files.BindReadOnly":
		_, err := ParseBind(v, full == "Files.BindReadOnly")
		return why(err)
	case "Files.BindUser":
		for _, u := range strings.Fields(v) {
			if err := ValidateBindUser(u); err != nil {
				return why(err)
			}
		}
	case "Network.Bridge":
		return why(ValidateNetwork("bridge:" + v))
	case "Network.Zone":
		return why(ValidateNetwork("zone:" + v))
	case "Network.Port":
		return why(ValidatePort(v))
	case "Exec.MachineID":
		if !machineID(v) {
			return "not a machine ID (32 hexadecimal digits, or a UUID)"
		}
	case "Exec.WorkingDirectory":
		if !strings.HasPrefix(v, "/") {
			return "not an absolute path"
		}
	case "Exec.Environment":
		return checkEnvironment(v)
	}
	if tristates[full] && v != "" {
		if _, ok := parseBool(v); !ok {
			return "not a boolean (yes or no)"
		}
	}
	if words, ok := enums[full]; ok && v != "" {
		if _, isBool := parseBool(v); !isBool && !slices.Contains(words, v) {
			return "use one of " + strings.Join(words, ", ")
		}
	}
	return ""
}

// machineID reports whether v is a 128-bit ID as nspawn reads one: 32
// hexadecimal digits, plain or as a UUID.
func machineID(v string) bool {
	if len(v) == 36 && v[8] == '-' && v[13] == '-' && v[18] == '-' && v[23] == '-' {
		v = strings.ReplaceAll(v, "-", "")
	}
	if len(v) != 32 {
		return false
	}
	for _, c := range v {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// checkEnvironment checks an Environment= line: words separated by
// blanks, quoted with "..." or '...' where they hold one, each a
// NAME=VALUE assignment with NAME a shell variable name.
func checkEnvironment(v string) string {
	words, err := splitWords(v)
	if err != nil {
		return err.Error()
	}
	for _, w := range words {
		name, _, ok := strings.Cut(w, "=")
		if !ok || !envName(name) {
			return fmt.Sprintf("%q is not NAME=VALUE (NAME of letters, digits and _, not starting with a digit)", w)
		}
	}
	return ""
}
