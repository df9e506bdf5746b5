package machine

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// AppExecCommand is nsbox's hidden command that starts an app machine's
// program as its user, inside the machine (see appExec).
const AppExecCommand = "__app-exec"

// appExecDir is where the machine sees what appExec binds into it.
const appExecDir = "/run/nsbox-app"

// appExec starts an app machine's program as a user other than root
// without what nspawn 252 needs for --user: nspawn looks the user up by
// running the machine's own getent, which an image of one static program
// lacks. nsbox runs its own binary in the machine as the payload, bound
// read-only with the host's dynamic loader and libc (an image need have
// no libc of its own, or one of another version); in the machine it
// reads the user from the machine's passwd and group files, sets the
// groups, group and user, and executes the program, which stays PID 2
// under nspawn's stub init. What runs in the machine runs with the
// machine's privileges only; nothing of the machine's is read or run on
// the host, so a unit that starts the machine later (enable) needs no
// look into its tree.
type appExec struct {
	// binds are the host files to bind (source, name under appExecDir):
	// nsbox, and for a dynamically linked nsbox the loader first and the
	// libraries it loads.
	binds [][2]string
	// user is the app's user as the settings name it.
	user string
}

// appExecFor is what starts the app of o as its user, or nil for an app
// run as root, or when nspawn's --user is left to try: when nsbox's own
// binary cannot be named, and in a machine without a user namespace,
// whose root holds CAP_SYS_ADMIN over the host's user namespace and could
// remount the host's loader, libc and nsbox bound into it writable (in
// a user namespace of its own, the kernel locks the binds read-only).
func (m *Manager) appExecFor(o BootOptions) *appExec {
	a := o.App
	if a == nil || a.User == "" || a.User == "root" || a.User == "0" || m.Self == nil || !o.PrivateUsers {
		return nil
	}
	self, err := m.Self()
	if err != nil {
		return nil
	}
	libs, err := loadedLibraries("/proc/self/maps")
	if err != nil {
		return nil
	}
	return &appExec{binds: append(libs, [2]string{self, "nsbox"}), user: a.User}
}

// loadedLibraries are the dynamic loader and the shared libraries this
// process has mapped (from maps, /proc/self/maps), as (path, name): the
// loader named ld.so and first; none for a static nsbox.
func loadedLibraries(maps string) ([][2]string, error) {
	f, err := os.Open(maps)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var loader [][2]string
	var libs [][2]string
	seen := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 {
			continue
		}
		p := fields[5]
		base := filepath.Base(p)
		if !filepath.IsAbs(p) || seen[p] || !strings.Contains(base, ".so") {
			continue
		}
		seen[p] = true
		if strings.HasPrefix(base, "ld-linux") || strings.HasPrefix(base, "ld64") || strings.HasPrefix(base, "ld-musl") {
			loader = append(loader, [2]string{p, "ld.so"})
		} else {
			libs = append(libs, [2]string{p, base})
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if len(loader) > 1 {
		return nil, fmt.Errorf("%d dynamic loaders mapped", len(loader))
	}
	if len(loader) == 0 && len(libs) > 0 {
		return nil, fmt.Errorf("libraries mapped without a loader")
	}
	return append(loader, libs...), nil
}

// args are nspawn's arguments that bind x's files into the machine.
func (x *appExec) args() []string {
	var out []string
	for _, b := range x.binds {
		out = append(out, "--bind-ro="+escapeBindPath(b[0])+":"+escapeBindPath(path.Join(appExecDir, b[1])))
	}
	return out
}

// argv is the payload that runs argv through x in the machine.
func (x *appExec) argv(argv []string) []string {
	var out []string
	if len(x.binds) > 1 {
		out = []string{path.Join(appExecDir, "ld.so"), "--library-path", appExecDir}
	}
	out = append(out, path.Join(appExecDir, "nsbox"), AppExecCommand, "--user="+x.user, "--")
	return append(out, argv...)
}

// appIDs are a user's IDs, groups, name and home in a machine.
type appIDs struct {
	uid, gid int
	groups   []int
	user     string
	home     string
}

// resolveAppIDs reads user (NAME, UID, NAME:GROUP, UID:GID) from the
// passwd and group files of r: the user's IDs and home, and the groups
// that list it as a member.
func resolveAppIDs(r *os.Root, user string) (*appIDs, error) {
	name, err := resolveAppUser(r, user)
	if err != nil {
		return nil, err
	}
	x := &appIDs{user: name, uid: -1}
	err = eachLine(r, "etc/passwd", func(f []string) bool {
		if len(f) >= 6 && f[0] == name {
			uid, err1 := strconv.Atoi(f[2])
			gid, err2 := strconv.Atoi(f[3])
			if err1 == nil && err2 == nil && uid >= 0 && gid >= 0 {
				x.uid, x.gid, x.home = uid, gid, f[5]
			}
			return false
		}
		return true
	})
	if err != nil || x.uid < 0 {
		return nil, fmt.Errorf("user %q is not in the machine's /etc/passwd with a numeric UID and GID", user)
	}
	x.groups = []int{x.gid}
	_ = eachLine(r, "etc/group", func(f []string) bool {
		if len(f) >= 4 && slices.Contains(strings.Split(f[3], ","), name) {
			if g, err := strconv.Atoi(f[2]); err == nil && !slices.Contains(x.groups, g) {
				x.groups = append(x.groups, g)
			}
		}
		return true
	})
	if x.home == "" || !path.IsAbs(x.home) {
		x.home = "/"
	}
	return x, nil
}

// AppExec is nsbox __app-exec --user=USER -- PROGRAM ARGS..., run in an
// app machine as its payload (by the machine's root, in the machine): it
// reads USER (NAME, UID, NAME:GROUP or UID:GID) from the machine's
// /etc/passwd and /etc/group, takes the user's groups, group and user,
// sets USER, LOGNAME and (unless the machine's environment set one)
// HOME, and executes the program, looked up in PATH, in its place. It
// returns only on failure.
func AppExec(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "nsbox "+AppExecCommand+": "+format+"\n", a...)
		return 127
	}
	if len(args) < 3 || !strings.HasPrefix(args[0], "--user=") || args[1] != "--" {
		return fail("usage: %s --user=USER -- PROGRAM [ARGS...]", AppExecCommand)
	}
	root, err := os.OpenRoot("/")
	if err != nil {
		return fail("%v", err)
	}
	x, err := resolveAppIDs(root, strings.TrimPrefix(args[0], "--user="))
	root.Close()
	if err != nil {
		return fail("%v", err)
	}
	if x.uid == 0 {
		return fail("user %s is root: nspawn starts root's programs itself", x.user)
	}
	argv := args[2:]
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return fail("%v", err)
	}
	if err := syscall.Setgroups(x.groups); err != nil {
		return fail("groups %v: %v", x.groups, err)
	}
	if err := syscall.Setgid(x.gid); err != nil {
		return fail("group %d: %v", x.gid, err)
	}
	if err := syscall.Setuid(x.uid); err != nil {
		return fail("user %d: %v", x.uid, err)
	}
	env := os.Environ()
	set := func(k, v string) {
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, k+"="+v)
	}
	set("USER", x.user)
	set("LOGNAME", x.user)
	// nspawn gives root's HOME to a payload it starts as root.
	if h := os.Getenv("HOME"); h == "" || h == "/root" {
		set("HOME", x.home)
	}
	err = syscall.Exec(prog, argv, env)
	return fail("%s: %v", prog, err)
}
