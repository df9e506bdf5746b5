// Package remote runs nsbox on another host through the system's ssh
// client (nsbox -H [USER@]HOST[:PORT]): the host value checked before it
// reaches ssh's command line, the remote command line quoted word by word
// for the remote user's shell, the versioned header the remote nsbox
// answers with, and what ssh's exit status means. docs/remote.md is the
// protocol. It imports nothing of nsbox.
package remote

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Protocol is the highest version of the remote protocol this nsbox
// speaks, MinProtocol the lowest. Protocol 2 is protocol 1 and the
// receive command (nsbox send); -H asks for CommandProtocol, the version
// every other command needs, so that an nsbox of protocol 1 serves them
// still, and send asks for SendProtocol.
const (
	Protocol        = 2
	MinProtocol     = 1
	CommandProtocol = 1
)

// Command is the hidden command the remote nsbox runs:
// nsbox __remote VERSION ARGS...
const Command = "__remote"

// Host is a parsed -H value: [USER@]HOST[:PORT].
type Host struct {
	User string
	Name string // a host name, an ssh config alias, an IPv4 address or an IPv6 address (no brackets)
	Port int    // 0: ssh's own choice (its config, or 22)
}

// String is the host as the user wrote it, for messages.
func (h Host) String() string {
	s := h.Name
	if strings.Contains(s, ":") {
		s = "[" + s + "]"
	}
	if h.User != "" {
		s = h.User + "@" + s
	}
	if h.Port != 0 {
		s += ":" + strconv.Itoa(h.Port)
	}
	return s
}

// ErrHost is a -H value nsbox refuses before ssh sees it.
var ErrHost = errors.New("invalid host")

// ParseHost reads [USER@]HOST[:PORT], with an IPv6 address in brackets
// when a port follows ([::1]:2222) and bare otherwise. Nothing in it may
// be read by ssh as an option: no part starts with '-', and only the
// characters of host names, addresses and user names are taken (no
// whitespace, quotes or control characters).
func ParseHost(s string) (Host, error) {
	bad := func(why string) (Host, error) {
		return Host{}, fmt.Errorf("%w %q: %s (use [USER@]HOST[:PORT])", ErrHost, s, why)
	}
	if s == "" {
		return bad("empty")
	}
	if strings.HasPrefix(s, "-") {
		return bad("starts with '-', which ssh would read as an option")
	}
	var h Host
	rest := s
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		h.User, rest = s[:i], s[i+1:]
		if h.User == "" {
			return bad("an empty user before '@'")
		}
		if !validUser(h.User) {
			return bad("a user name takes letters, digits, '.', '_' and '-' (not first)")
		}
	}
	port := ""
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return bad("an IPv6 address without its closing ']'")
		}
		h.Name = rest[1:end]
		after := rest[end+1:]
		if after != "" {
			if !strings.HasPrefix(after, ":") {
				return bad("only :PORT may follow ']'")
			}
			port = after[1:]
			if port == "" {
				return bad("an empty port")
			}
		}
		if !validIPv6(h.Name) {
			return bad("not an IPv6 address in brackets")
		}
	case strings.Count(rest, ":") > 1:
		// A bare IPv6 address: no port (write [ADDR]:PORT for one).
		h.Name = rest
		if !validIPv6(h.Name) {
			return bad("not an IPv6 address (with a port: [ADDR]:PORT)")
		}
	default:
		h.Name = rest
		if i := strings.IndexByte(rest, ':'); i >= 0 {
			h.Name, port = rest[:i], rest[i+1:]
			if port == "" {
				return bad("an empty port")
			}
		}
		if h.Name == "" {
			return bad("no host")
		}
		if !validHostName(h.Name) {
			return bad("a host takes letters, digits, '.', '_' and '-' (not first)")
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
			return bad("the port is not a number from 1 to 65535")
		}
		h.Port = n
	}
	return h, nil
}

// ParseHosts reads NSBOX_HOST: one host, or several separated by commas
// or spaces (for list).
func ParseHosts(env string) ([]Host, error) {
	var hosts []Host
	for _, f := range strings.FieldsFunc(env, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		h, err := ParseHost(f)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

func validUser(s string) bool {
	if s == "" || s[0] == '-' || len(s) > 256 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func validHostName(s string) bool {
	if s == "" || s[0] == '-' || len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func validIPv6(s string) bool {
	if s == "" || !strings.Contains(s, ":") || len(s) > 64 {
		return false
	}
	addr, zone, _ := strings.Cut(s, "%")
	for _, r := range addr {
		if !(r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F' || r >= '0' && r <= '9' || r == ':' || r == '.') {
			return false
		}
	}
	return strings.Contains(s, "%") == (zone != "") && (zone == "" || validHostName(zone))
}

// Quote makes word one word of a POSIX shell command line, whatever it
// holds: in single quotes, with each single quote written '\”. ssh joins
// its arguments with spaces into one string that the remote user's login
// shell reads, so every word nsbox sends is quoted so.
func Quote(word string) string {
	return "'" + strings.ReplaceAll(word, "'", `'\''`) + "'"
}

// CommandLine is the remote command: program __remote VERSION args...,
// every word quoted. A word with a NUL byte cannot be passed (no argv
// holds one): an error.
func CommandLine(program string, version int, args []string) (string, error) {
	words := append([]string{program, Command, strconv.Itoa(version)}, args...)
	var b strings.Builder
	for i, w := range words {
		if strings.ContainsRune(w, 0) {
			return "", fmt.Errorf("an argument with a NUL byte cannot be sent: %q", w)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(Quote(w))
	}
	return b.String(), nil
}

// TTY says whether ssh asks the remote side for a pseudo terminal.
type TTY int

const (
	// NoTTY is ssh -T: plain pipes.
	NoTTY TTY = iota
	// WantTTY is ssh -t: a terminal when this side has one.
	WantTTY
	// ForceTTY is ssh -tt: a terminal even without one here.
	ForceTTY
)

// SSHArgs is ssh's command line for running remoteCmd on h: ssh (the
// program and its options, from NSBOX_SSH), the terminal choice, the port
// and user as options of their own, "--", then the host and the command.
// Host key checking is ssh's (its config and known_hosts): nsbox adds no
// option that weakens it.
func SSHArgs(ssh []string, h Host, tty TTY, remoteCmd string) []string {
	args := append([]string{}, ssh...)
	switch tty {
	case NoTTY:
		args = append(args, "-T")
	case WantTTY:
		args = append(args, "-t")
	case ForceTTY:
		args = append(args, "-tt")
	}
	if h.Port != 0 {
		args = append(args, "-p", strconv.Itoa(h.Port))
	}
	if h.User != "" {
		args = append(args, "-l", h.User)
	}
	return append(args, "--", h.Name, remoteCmd)
}

// SSHCommand reads NSBOX_SSH: the ssh program and options of its own,
// split at spaces (no quoting), "ssh" when empty. Its first word must not
// start with '-'.
func SSHCommand(env string) ([]string, error) {
	f := strings.Fields(env)
	if len(f) == 0 {
		return []string{"ssh"}, nil
	}
	if strings.HasPrefix(f[0], "-") {
		return nil, fmt.Errorf("NSBOX_SSH %q must start with the ssh program", env)
	}
	return f, nil
}
