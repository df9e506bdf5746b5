package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// maxBindUsers is how many users nspawn 252 can bind into one machine:
// it gives them the machine's ids 60514 to 60577 (MAP_UID_MIN..MAX).
const maxBindUsers = 64

// ValidateBindUser checks a --bind-user value: a user name as nspawn
// takes one (valid_user_group_name without relaxation: a letter or "_",
// then letters, digits, "_" and "-", at most 31 characters), and not
// root or nobody, which nspawn refuses to bind.
func ValidateBindUser(name string) error {
	if err := backend.ValidateText("--bind-user", name); err != nil {
		return err
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: --bind-user %q: %s", ErrInvalidOption, name, why)
	}
	if name == "" || len(name) > 31 {
		return bad("a user name of 1-31 characters")
	}
	for i, c := range name {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if i == 0 && !letter || !letter && !(c >= '0' && c <= '9' || c == '-') {
			return bad("a user name: letters, digits, _ and -, starting with a letter or _")
		}
	}
	switch name {
	case "root", "nobody", "nfsnobody":
		return bad("nspawn binds ordinary users only, not " + name)
	}
	return nil
}

// HostUser is a user of the host's user database, as --bind-user binds
// it: their ids, their private group, their home and shell.
type HostUser struct {
	Name  string
	UID   uint32
	GID   uint32
	Group string // the name of their primary group
	Home  string
	Shell string
}

// LookupHostUser finds name in the host's user database with getent,
// which asks NSS as nspawn does (files, and LDAP or systemd-homed users
// where the host is set up for them). ok is false for a user the host
// does not have.
func LookupHostUser(ctx context.Context, r host.Runner, name string) (u HostUser, ok bool, err error) {
	pw, ok, err := getent(ctx, r, "passwd", name)
	if err != nil || !ok {
		return u, ok, err
	}
	f := strings.Split(pw, ":")
	if len(f) != 7 || f[0] != name {
		return u, false, fmt.Errorf("getent passwd %s: unexpected answer %q", name, backend.Printable(pw))
	}
	uid, err1 := strconv.ParseUint(f[2], 10, 32)
	gid, err2 := strconv.ParseUint(f[3], 10, 32)
	if err1 != nil || err2 != nil {
		return u, false, fmt.Errorf("getent passwd %s: unexpected ids in %q", name, backend.Printable(pw))
	}
	u = HostUser{Name: name, UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]}
	gr, found, err := getent(ctx, r, "group", f[3])
	if err != nil {
		return u, false, err
	}
	if found {
		u.Group, _, _ = strings.Cut(gr, ":")
	}
	return u, true, nil
}

// getent asks the host's user database for key in db (passwd, group):
// its one line, or ok false when it has no such entry (exit status 2).
func getent(ctx context.Context, r host.Runner, db, key string) (string, bool, error) {
	var out bytes.Buffer
	err := r.Run(ctx, &host.Cmd{Path: "getent", Args: []string{db, "--", key}, Stdout: &out})
	var ee *host.ExitError
	if errors.As(err, &ee) && ee.Status == 2 {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("look %s up in the host's %s database: %w", key, db, err)
	}
	line, _, _ := strings.Cut(out.String(), "\n")
	return line, true, nil
}

// checkBindUsers refuses users nspawn would not bind, before anything
// is written: a user the host does not have, root, nobody, a user
// without a private group (nspawn binds user and group as one), a home
// that is not a directory; and binds without a user namespace, which
// nspawn binds into only.
func (m *Manager) checkBindUsers(ctx context.Context, users []string, privateUsers bool) error {
	if len(users) == 0 {
		return nil
	}
	if !privateUsers {
		return fmt.Errorf("%w: --bind-user needs the machine's user namespace (leave out --private-users=false, or forget the users with --no-bind-users)", ErrInvalidOption)
	}
	if len(users) > maxBindUsers {
		return fmt.Errorf("%w: %d users to bind: nspawn binds at most %d", ErrInvalidOption, len(users), maxBindUsers)
	}
	for _, name := range users {
		if err := ValidateBindUser(name); err != nil {
			return err
		}
		u, ok, err := LookupHostUser(ctx, m.Runner, name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: --bind-user %s: this host has no such user (see: getent passwd %s; forget it with --no-bind-users)", ErrInvalidOption, name, name)
		}
		if u.UID == 0 || u.UID == 65534 {
			return fmt.Errorf("%w: --bind-user %s: uid %d: nspawn binds ordinary users only", ErrInvalidOption, name, u.UID)
		}
		if u.Group != name {
			return fmt.Errorf("%w: --bind-user %s: their primary group (gid %d) is not a private group named %s, and nspawn binds a user with their private group only", ErrInvalidOption, name, u.GID, name)
		}
		if fi, err := os.Stat(u.Home); err != nil || !fi.IsDir() || !strings.HasPrefix(u.Home, "/") {
			return fmt.Errorf("%w: --bind-user %s: their home %s is not a directory on this host", ErrInvalidOption, name, backend.Printable(u.Home))
		}
	}
	return nil
}

// checkBindUsersIn refuses users the machine whose tree is dir could not
// take: its /etc/passwd or /etc/group has the name already (nspawn
// refuses that), or it would not see them (nspawn gives them through
// the user database in /run/host/userdb, which only nss-systemd reads).
// What cannot be read is left to nspawn, which says what it finds.
func checkBindUsersIn(name, dir string, users []string) error {
	if len(users) == 0 {
		return nil
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil
	}
	defer r.Close()
	if !seesUserdb(r) {
		return fmt.Errorf("%w: --bind-user: %s does not look users up with nss-systemd, so it would not see them: "+
			"install it there (nsbox shell %s -- apt-get install -y libnss-systemd), or forget them with --no-bind-users", ErrInvalidOption, name, name)
	}
	for _, db := range []string{"passwd", "group"} {
		b, err := host.ReadSmallInRoot(r, "etc/"+db, maxPasswd)
		if err != nil {
			continue
		}
		for _, f := range entryFields(string(b)) {
			if slices.Contains(users, f[0]) {
				what := "a user"
				if db == "group" {
					what = "a group"
				}
				return fmt.Errorf("%w: --bind-user %s: %s has %s %s of its own in /etc/%s, and nspawn binds no user over it (remove it there, or bind another user)",
					ErrInvalidOption, f[0], name, what, f[0], db)
			}
		}
	}
	return nil
}

// seesUserdb reports whether a machine's tree looks users up with
// nss-systemd: its nsswitch.conf names "systemd" for passwd and the
// module is there. An nsswitch.conf nsbox cannot read (a link) counts
// as yes: nspawn and the machine decide then.
func seesUserdb(r *os.Root) bool {
	b, err := readSmall(r, "etc/nsswitch.conf")
	if err != nil {
		return !os.IsNotExist(err)
	}
	listed := false
	for _, l := range strings.Split(string(b), "\n") {
		l, _, _ = strings.Cut(l, "#")
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "passwd" {
			listed = slices.Contains(strings.Fields(v), "systemd")
		}
	}
	if !listed {
		return false
	}
	for _, p := range []string{"usr/lib/*/libnss_systemd.so.2", "lib/*/libnss_systemd.so.2", "usr/lib64/libnss_systemd.so.2", "usr/lib/libnss_systemd.so.2"} {
		if m, _ := fs.Glob(r.FS(), p); len(m) > 0 {
			return true
		}
	}
	return false
}

// uniqueUsers is users without repeats, in their first order.
func uniqueUsers(users []string) []string {
	var out []string
	for _, u := range users {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// OrdinaryUsers are the names of the ordinary users of an /etc/passwd
// text (uids 1000 to 60000, as systemd counts them) that --bind-user
// takes: for completion.
func OrdinaryUsers(passwd string) []string {
	var out []string
	for _, f := range entryFields(passwd) {
		uid, err := strconv.ParseUint(f[2], 10, 32)
		if err == nil && uid >= 1000 && uid <= 60000 && ValidateBindUser(f[0]) == nil {
			out = append(out, f[0])
		}
	}
	return out
}
