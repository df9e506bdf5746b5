package machine

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// maxPasswd is the most nsbox reads of a machine's /etc/passwd.
const maxPasswd = 4 << 20

// ResolveUser turns shell's --uid value into the user name to run as in
// machine name: a name stays a name, a numeric ID becomes the name its
// /etc/passwd gives it (runuser and nspawn's --user take names). A user
// the machine's /etc/passwd does not have is an error naming --uid, unless
// it is a host user bound into the machine (boot --bind-user) or the
// machine also looks users up elsewhere (nsswitch.conf), when the value
// is passed on as it is. The files are the machine's: read inside
// its tree, regular files only, bounded.
func (m *Manager) ResolveUser(name, user string) (string, error) {
	if user == "" {
		return "", nil
	}
	if err := backend.ValidateText("--uid", user); err != nil {
		return "", err
	}
	if strings.HasPrefix(user, "-") {
		return "", fmt.Errorf("%w: --uid %q: a user name or a numeric ID", ErrInvalidOption, user)
	}
	if ValidateName(name) != nil || !m.exists(name) {
		return user, nil // the command reports the machine
	}
	r, err := os.OpenRoot(m.Dir(name))
	if err != nil {
		return user, nil
	}
	defer r.Close()
	b, err := host.ReadSmallInRoot(r, "etc/passwd", maxPasswd)
	if err != nil {
		return user, nil
	}
	numeric := false
	if _, err := strconv.ParseUint(user, 10, 32); err == nil {
		numeric = true
	}
	if found, ok := lookupPasswd(string(b), user, numeric); ok {
		return found, nil
	}
	if o, err := m.Options(name); err == nil && !numeric && slices.Contains(o.BindUsers, user) {
		// A host user nspawn binds in: in the machine's user database
		// (/run/host/userdb), not in its /etc/passwd.
		return user, nil
	}
	if !numeric && (!filesOnly(r) || inUserdb(r, user)) {
		return user, nil
	}
	if numeric {
		return "", fmt.Errorf("%w: --uid %s: %s has no user with that ID in its /etc/passwd", ErrInvalidOption, user, name)
	}
	return "", fmt.Errorf("%w: --uid %s: %s has no such user in its /etc/passwd", ErrInvalidOption, user, name)
}

// lookupPasswd finds user (a name, or a numeric ID when numeric) in the
// text of an /etc/passwd, and returns the entry's name. A name nsbox could
// not pass on safely (control characters, a leading "-") is no match.
func lookupPasswd(passwd, user string, numeric bool) (string, bool) {
	for _, f := range entryFields(passwd) {
		if f[0] == "" || strings.HasPrefix(f[0], "-") || strings.HasPrefix(f[0], "+") || backend.ValidateText("user", f[0]) != nil {
			continue
		}
		if numeric && f[2] == user || !numeric && f[0] == user {
			return f[0], true
		}
	}
	return "", false
}

// entryFields are the colon-separated fields of the entries of a passwd
// or group file: its lines with three fields or more.
func entryFields(file string) [][]string {
	var out [][]string
	for _, l := range strings.Split(file, "\n") {
		if f := strings.Split(l, ":"); len(f) >= 3 {
			out = append(out, f)
		}
	}
	return out
}

// filesOnly reports whether the machine's nsswitch.conf looks users up in
// /etc/passwd alone (as Debian's does), so a user missing there does not
// exist. Without the file, glibc reads /etc/passwd only too. nss-systemd
// ("systemd") adds root, nobody and the records of the user database
// directories, which inUserdb reads.
func filesOnly(r *os.Root) bool {
	b, err := readSmall(r, "etc/nsswitch.conf")
	if err != nil {
		return os.IsNotExist(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		l, _, _ = strings.Cut(l, "#")
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(k) != "passwd" {
			continue
		}
		for _, src := range strings.Fields(v) {
			if src != "files" && src != "compat" && src != "systemd" && !strings.HasPrefix(src, "[") {
				return false
			}
		}
		return true
	}
	return true
}

// userdbDirs are where nss-systemd finds user records as files
// (systemd's userdb drop-in directories, and nspawn's for bound users).
var userdbDirs = []string{"etc/userdb", "run/userdb", "run/host/userdb", "usr/local/lib/userdb", "usr/lib/userdb"}

// inUserdb reports whether a machine's user database directories hold a
// record of user.
func inUserdb(r *os.Root, user string) bool {
	if strings.ContainsAny(user, "/") || user == "." || user == ".." {
		return false
	}
	for _, d := range userdbDirs {
		if _, err := r.Stat(d + "/" + user + ".user"); err == nil {
			return true
		}
	}
	return false
}
