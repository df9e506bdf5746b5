package machine

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/nsbox/nsbox/machine/backend"
)

// ExecOptions say how shell runs a command or a login shell in a machine,
// as docker exec's, incus exec's and systemd-run's flags do.
type ExecOptions struct {
	User    string   // a user of the machine; "" is root
	Env     []string // NAME=VALUE entries (ParseEnv), over the defaults
	Workdir string   // the directory to start in, inside the machine (ValidateWorkdir)
	TTY     TTYMode
}

// TTYMode says whether the command gets a pseudo terminal.
type TTYMode int

const (
	// TTYAuto gives a terminal when the caller has one.
	TTYAuto TTYMode = iota
	// TTYAlways gives one even without (docker exec -t, ssh -tt).
	TTYAlways
	// TTYNever runs on plain pipes even from a terminal (ssh -T).
	TTYNever
)

// terminal reports whether the command gets a pseudo terminal: with
// TTYAuto, when stdin is a terminal (and stdout, for a command: its
// output may be going to a file).
func (o ExecOptions) terminal(loginShell bool) bool {
	switch o.TTY {
	case TTYAlways:
		return true
	case TTYNever:
		return false
	}
	return backend.IsTerminal(os.Stdin) && (loginShell || backend.IsTerminal(os.Stdout))
}

// plain reports whether o asks for nothing beyond a user.
func (o ExecOptions) plain() bool {
	return len(o.Env) == 0 && o.Workdir == "" && o.TTY == TTYAuto
}

// ParseEnv checks --env values: NAME=VALUE, or NAME alone for the value
// nsbox was given (getenv; one that is not set is refused rather than
// dropped). A NAME is letters, digits and "_", not starting with a digit;
// a VALUE is UTF-8 without control characters but tab and newline (what
// systemd and nspawn take). A later value of a NAME replaces an earlier.
func ParseEnv(specs []string, getenv func(string) (string, bool)) ([]string, error) {
	var out []string
	for _, spec := range specs {
		name, value, ok := strings.Cut(spec, "=")
		if !envName(name) {
			return nil, fmt.Errorf("%w: --env %q: a NAME=VALUE, with a NAME of letters, digits and _ that does not start with a digit", ErrInvalidOption, backend.Printable(spec))
		}
		if !ok {
			if value, ok = getenv(name); !ok {
				return nil, fmt.Errorf("%w: --env %s: %s is not set here (give %s=VALUE)", ErrInvalidOption, name, name, name)
			}
		}
		if why := envValueProblem(value); why != "" {
			return nil, fmt.Errorf("%w: --env %s: %s in its value", ErrInvalidOption, name, why)
		}
		out = setEnv(out, name+"="+value)
	}
	return out, nil
}

// envName reports whether s can name an environment variable.
func envName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// envValueProblem says what keeps s from being an environment value
// systemd passes on, or "".
func envValueProblem(s string) string {
	if !utf8.ValidString(s) {
		return "invalid UTF-8"
	}
	for _, r := range s {
		if r != '\t' && r != '\n' && (r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0) {
			return fmt.Sprintf("control character %U", r)
		}
	}
	return ""
}

// setEnv returns env with entry kv ("NAME=VALUE") in place of any entry
// of the same name.
func setEnv(env []string, kv string) []string {
	name, _, _ := strings.Cut(kv, "=")
	env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, name+"=") })
	return append(env, kv)
}

// withEnv returns base with every entry of over in place of base's of the
// same name.
func withEnv(base, over []string) []string {
	out := slices.Clone(base)
	for _, kv := range over {
		out = setEnv(out, kv)
	}
	return out
}

// ValidateWorkdir checks a --workdir value: an absolute path, which the
// machine resolves; returned cleaned.
func ValidateWorkdir(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	if err := backend.ValidateText("--workdir", dir); err != nil {
		return "", err
	}
	if !strings.HasPrefix(dir, "/") {
		return "", fmt.Errorf("%w: --workdir %q: an absolute path inside the machine", ErrInvalidOption, dir)
	}
	return path.Clean(dir), nil
}

// loginShellScript starts the login shell of the user named in $1 from
// the machine's user database, in their home directory unless $2 says
// "keep" (--workdir chose one), as machined's OpenMachineShell does.
const loginShellScript = `shell=$(getent passwd "$1" 2>/dev/null | { IFS=: read -r _ _ _ _ _ _ x; echo "$x"; }); ` +
	`[ "$2" = keep ] || cd "$HOME" 2>/dev/null || cd /; exec "${shell:-/bin/sh}" -l`

// loginShellArgv is the command that runs user's login shell as an
// ordinary command, where options (--env, --workdir, -t, -T) ask for more
// than a backend's own login shell gives.
func loginShellArgv(user string, keepDir bool) []string {
	if user == "" {
		user = "root"
	}
	keep := ""
	if keepDir {
		keep = "keep"
	}
	return []string{"/bin/sh", "-c", loginShellScript, "sh", user, keep}
}
