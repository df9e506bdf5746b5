package machine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// App is what an app machine runs in place of an init: a program, as
// nspawn runs one under --as-pid2 (its stub init as PID 1 reaps orphans
// and turns the stop signal into SIGHUP and SIGTERM for the program).
// It is remembered in the machine's settings file as nspawn's own keys
// (Boot=no, ProcessTwo=yes, Parameters=, WorkingDirectory=, User=); an
// image's environment goes there as Environment= lines, the user's to
// edit as any other.
type App struct {
	// Argv is the command line; Argv[0] is found through the machine's
	// PATH when it has no slash.
	Argv []string `json:"argv"`
	// Workdir is the directory it starts in, a path inside the machine
	// ("" for /).
	Workdir string `json:"workdir,omitempty"`
	// User runs it: a name (or UID) of the machine's /etc/passwd, with
	// that user's own group ("" for root). An image's NAME:GROUP or
	// UID:GID becomes the name when the machine is made, or else as it
	// boots (resolveAppUser).
	User string `json:"user,omitempty"`
}

// appFromImage is the app an image's configuration says to run: its
// Entrypoint then its Cmd (argv replaces the Cmd when given, as the
// arguments of docker run do; entrypoint replaces the Entrypoint).
func appFromImage(img *ImageRecord, cmd []string) *App {
	if img == nil {
		return &App{Argv: cmd}
	}
	c := img.Config
	if cmd == nil {
		cmd = c.Cmd
	}
	a := &App{Argv: append(slices.Clone(c.Entrypoint), cmd...), Workdir: c.WorkingDir, User: c.User}
	if path.IsAbs(a.Workdir) {
		a.Workdir = path.Clean(a.Workdir)
	}
	return a
}

// validate checks an app before it is written or run: words without
// control characters (the settings file is one line each), an absolute
// working directory, a user in the words images use.
func (a *App) validate() error {
	for _, w := range a.Argv {
		if bad := controlChar(w); bad != "" {
			return fmt.Errorf("%w: the command's word %q holds %s", ErrInvalidOption, w, bad)
		}
	}
	if a.Workdir != "" {
		if !path.IsAbs(a.Workdir) || path.Clean(a.Workdir) != a.Workdir {
			return fmt.Errorf("%w: working directory %q: give an absolute path without . or .. or doubled slashes", ErrInvalidOption, a.Workdir)
		}
		if bad := controlChar(a.Workdir); bad != "" {
			return fmt.Errorf("%w: working directory %q holds %s", ErrInvalidOption, a.Workdir, bad)
		}
	}
	if a.User != "" && !validAppUser(a.User) {
		return fmt.Errorf("%w: user %q: give NAME, UID, NAME:GROUP or UID:GID of the machine's", ErrInvalidOption, a.User)
	}
	return nil
}

func controlChar(s string) string {
	if !utf8.ValidString(s) {
		return "text that is not UTF-8"
	}
	for _, c := range s {
		if unicode.IsControl(c) {
			return fmt.Sprintf("a control character (%q)", c)
		}
	}
	return ""
}

// validAppUser reports whether u is a user as an image names one: NAME
// or UID, then optionally :GROUP or :GID, in the characters user and
// group names are made of.
func validAppUser(u string) bool {
	user, group, hasGroup := strings.Cut(u, ":")
	ok := func(s string) bool {
		if s == "" || len(s) > 64 || s[0] == '-' {
			return false
		}
		for _, c := range s {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return false
			}
		}
		return true
	}
	return ok(user) && (!hasGroup || ok(group))
}

// quoteWords writes words as nspawn's settings parser reads a list
// (config_parse_strv: words split at blanks, quotes removed, backslashes
// kept as they are): a word of plain characters as it is, any other in
// single quotes, a single quote as "'" between them.
func quoteWords(words []string) string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = quoteWord(w)
	}
	return strings.Join(out, " ")
}

func quoteWord(w string) string {
	plain := w != ""
	for _, c := range w {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_./:=@%+,-", c)) {
			plain = false
			break
		}
	}
	if plain {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'"'"'`) + "'"
}

// splitWords reads a list as nspawn's settings parser does for what
// quoteWords writes, and for hand-written lists in the same forms: words
// at blanks, single and double quotes removed (nothing is special inside
// them but the closing quote), a backslash kept as it is. A backslash
// before a quote or a blank outside single quotes, where nspawn's parser
// and this one might differ, is refused, as is an unclosed quote.
func splitWords(s string) ([]string, error) {
	var words []string
	var b strings.Builder
	in, quote, esc := false, rune(0), false
	for _, c := range s {
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				b.WriteRune(c)
			}
			esc = false
			continue
		case quote == '"':
			if c != '"' {
				b.WriteRune(c)
			} else if esc {
				return nil, errors.New("a backslash before a double quote inside double quotes: use single quotes")
			} else {
				quote = 0
			}
		case c == ' ' || c == '\t':
			if esc {
				return nil, errors.New("a backslash before a blank: quote the word instead")
			}
			if in {
				words = append(words, b.String())
				b.Reset()
				in = false
			}
		case c == '\'' || c == '"':
			if esc {
				return nil, errors.New("a backslash before a quote: quote the word instead")
			}
			quote, in = c, true
		default:
			b.WriteRune(c)
			in = true
		}
		esc = c == '\\'
	}
	if quote != 0 {
		return nil, fmt.Errorf("a quote (%c) is not closed", quote)
	}
	if in {
		words = append(words, b.String())
	}
	return words, nil
}

// SplitCommand reads a command line as a shell would split it, without
// expanding anything (create and boot --cmd): words at blanks; single
// quotes keep everything; double quotes keep everything but \" \\ \$ and
// \`; a backslash outside quotes keeps the next character.
func SplitCommand(s string) ([]string, error) {
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("%w: --cmd %q is not UTF-8", ErrInvalidOption, s)
	}
	var words []string
	var b strings.Builder
	in := false
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				words = append(words, b.String())
				b.Reset()
				in = false
			}
		case c == '\\':
			if i+1 == len(rs) {
				return nil, fmt.Errorf("%w: --cmd %q ends in a lone backslash", ErrInvalidOption, s)
			}
			i++
			b.WriteRune(rs[i])
			in = true
		case c == '\'':
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j == len(rs) {
				return nil, fmt.Errorf("%w: --cmd %q: a single quote is not closed", ErrInvalidOption, s)
			}
			b.WriteString(string(rs[i+1 : j]))
			i, in = j, true
		case c == '"':
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				if rs[j] == '\\' && j+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[j+1]) {
					j++
				}
				b.WriteRune(rs[j])
			}
			if j == len(rs) {
				return nil, fmt.Errorf("%w: --cmd %q: a double quote is not closed", ErrInvalidOption, s)
			}
			i, in = j, true
		default:
			b.WriteRune(c)
			in = true
		}
	}
	if in {
		words = append(words, b.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("%w: --cmd is empty: give the command the machine runs", ErrInvalidOption)
	}
	return words, nil
}

// initPaths are where a tree's init is looked for: what nspawn --boot
// tries, in its order.
var initPaths = []string{"usr/lib/systemd/systemd", "lib/systemd/systemd", "sbin/init"}

// hasInit reports whether tree has an init nspawn --boot would start,
// resolved inside the tree.
func hasInit(tree string) bool {
	r, err := os.OpenRoot(tree)
	if err != nil {
		return false
	}
	defer r.Close()
	for _, p := range initPaths {
		if st, err := r.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return true
		}
	}
	return false
}

// hasGetent reports whether the tree r has the getent nspawn runs to look
// up --user in a machine (spawn_getent: /usr/bin/getent, then /bin/getent).
func hasGetent(r *os.Root) bool {
	for _, p := range []string{"usr/bin/getent", "bin/getent"} {
		if st, err := r.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return true
		}
	}
	return false
}

// appPath is the PATH an app's command is looked up in when its
// environment names none: nspawn's default.
const appPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// findCommand checks that argv0 is a program in the tree r, looked up in
// the directories of pathVar when it has no slash, as execvp does;
// everything resolved inside the tree. It returns the path found.
func findCommand(r *os.Root, argv0, pathVar string) (string, error) {
	exe := func(p string) bool {
		st, err := r.Stat(strings.TrimPrefix(path.Clean(p), "/"))
		return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
	}
	if strings.Contains(argv0, "/") {
		if !path.IsAbs(argv0) {
			return "", fmt.Errorf("the command %q: give an absolute path or a name looked up in PATH", argv0)
		}
		if exe(argv0) {
			return argv0, nil
		}
		return "", fmt.Errorf("the command %s is not an executable file in the machine", argv0)
	}
	if pathVar == "" {
		pathVar = appPath
	}
	for _, dir := range strings.Split(pathVar, ":") {
		if !path.IsAbs(dir) {
			continue
		}
		if p := path.Join(dir, argv0); exe(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("the command %s is not in the machine's PATH (%s)", argv0, pathVar)
}

// resolveAppUser turns an image's user (NAME, UID, NAME:GROUP, UID:GID)
// into the name nspawn --user takes, read from the tree's /etc/passwd
// and /etc/group: nspawn 252 runs a command only as a user the machine's
// passwd names, with that user's own group.
func resolveAppUser(r *os.Root, u string) (string, error) {
	if u == "" {
		return "root", nil
	}
	user, group, hasGroup := strings.Cut(u, ":")
	var name, gid string
	err := eachLine(r, "etc/passwd", func(f []string) bool {
		if len(f) >= 4 && (f[0] == user || f[2] == user) {
			name, gid = f[0], f[3]
			return false
		}
		return true
	})
	if err != nil {
		return "", fmt.Errorf("user %q: the machine's /etc/passwd: %w", u, err)
	}
	if name == "" && (user == "root" || user == "0") {
		// nspawn knows root without a passwd file.
		name, gid = "root", "0"
	}
	if name == "" {
		return "", fmt.Errorf("user %q is not in the machine's /etc/passwd (nspawn 252 runs a command only as a user named there)", u)
	}
	if hasGroup && group != gid {
		own := false
		err := eachLine(r, "etc/group", func(f []string) bool {
			own = len(f) >= 3 && f[0] == group && f[2] == gid
			return !own
		})
		if err != nil || !own {
			return "", fmt.Errorf("user %q: the group of %s is %s, and nspawn runs a command with its user's own group only", u, name, gid)
		}
	}
	return name, nil
}

// eachLine calls fn with the colon-separated fields of each line of the
// file p in r until it returns false.
func eachLine(r *os.Root, p string, fn func([]string) bool) error {
	// Not blocking: the machine's root may have made it a FIFO.
	f, err := r.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("/%s is not a regular file", p)
	}
	s := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for s.Scan() {
		if !fn(strings.Split(s.Text(), ":")) {
			return nil
		}
	}
	return s.Err()
}

// runMode applies what req says about how machine name runs to o: its
// init booted (--boot), its image's command (--app), or a command of the
// user's in place of the image's Cmd (--cmd).
func (m *Manager) runMode(name string, o *BootOptions, req BootRequest) error {
	switch {
	case req.Init:
		o.App = nil
	case req.Cmd != nil:
		a := appFromImage(m.ImageOf(name), req.Cmd)
		if o.App != nil {
			// What the user set for the app stays.
			a.Workdir, a.User = o.App.Workdir, o.App.User
		}
		o.App = a
	case req.App:
		img := m.ImageOf(name)
		if img == nil {
			return fmt.Errorf("%w: %s was not made from an image, so it has no command of its own to run: give one with --cmd", ErrInvalidOption, name)
		}
		o.App = appFromImage(img, nil)
	}
	if o.App != nil {
		return o.App.validate()
	}
	return nil
}

// checkApp checks, in the tree an app machine is about to run from, what
// nspawn would otherwise refuse only once it started: a command that is
// there, a user its passwd names (an image's NAME:GROUP or UID:GID
// becomes the name, which nspawn takes), a working directory that exists.
func checkApp(name, tree string, o BootOptions, helper bool) error {
	a := o.App
	if len(a.Argv) == 0 {
		return fmt.Errorf("%w: %s has no command to run: give one with --cmd", ErrInvalidOption, name)
	}
	r, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer r.Close()
	if st, err := r.Stat("usr"); err != nil || !st.IsDir() {
		return fmt.Errorf("%s has no /usr directory, and systemd-nspawn runs nothing in a tree without one (make an empty one in %s)", name, tree)
	}
	if _, err := findCommand(r, a.Argv[0], o.file.env("PATH")); err != nil {
		return fmt.Errorf("%s: %v (give another with --cmd)", name, err)
	}
	if a.User != "" {
		ids, err := resolveAppIDs(r, a.User)
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		u := ids.user
		if ids.uid == 0 {
			// A name of root's: root, whom nspawn starts itself.
			u = "root"
		}
		a.User = u
		if u != "root" && !helper && !hasGetent(r) {
			return fmt.Errorf("%s runs as user %s, and systemd-nspawn 252 looks a user up with the machine's own getent, which it lacks (an image of one static program): and nsbox starts a program as its user itself only in a machine with a user namespace (boot it with --private-users), or run it as root (nsbox edit %s: delete User=), or add getent to the image", name, u, name)
		}
	}
	if a.Workdir != "" {
		st, err := r.Stat(strings.TrimPrefix(path.Clean(a.Workdir), "/"))
		if err != nil || !st.IsDir() {
			return fmt.Errorf("%s: its working directory %s is not a directory in the machine", name, a.Workdir)
		}
	}
	return nil
}

// env is the value the file's Environment= lines give name ("" when
// none does), read as nspawn reads them: later assignments win, an empty
// Environment= drops those above it.
func (d *settingsDoc) env(name string) string {
	if d == nil {
		return ""
	}
	val := ""
	for _, l := range d.lines {
		if l.opt == nil || l.opt.Section != "Exec" || l.opt.Name != "Environment" {
			continue
		}
		if l.opt.Value == "" {
			val = ""
		}
		words, err := splitWords(l.opt.Value)
		if err != nil {
			continue
		}
		for _, w := range words {
			if k, v, ok := strings.Cut(w, "="); ok && k == name {
				val = v
			}
		}
	}
	return val
}

// waitApp waits until app machine name runs its command: its PID 1 is
// nspawn's stub init, which nspawn becomes only once the user, the
// directory and the rest were set up for the command (a user nspawn
// cannot resolve, say, ends the machine before), and, where nsbox's
// helper starts it as its user (helper), the helper has executed the
// program (it is no longer the helper's "ld.so" or "nsbox", unless the
// program is called so): a user it cannot take ends the machine before.
// A machine that ends first is a failed boot.
func (m *Manager) waitApp(ctx context.Context, name string, helper bool, argv0 string) error {
	comm := func(pid int) string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return strings.TrimSpace(string(b))
	}
	own := path.Base(argv0)
	helperComm := func(c string) bool { return (c == "ld.so" || c == "nsbox") && c != own }
	return host.Poll(ctx, pollDelay, func() (bool, error) {
		r, err := m.Backend.Get(ctx, name)
		if errors.Is(err, ErrNotRunning) {
			return false, errors.New("it ended before its command started")
		}
		if err != nil || r.Leader <= 0 || comm(r.Leader) != "(sd-stubinit)" {
			return false, nil
		}
		if !helper {
			return true, nil
		}
		kids := backend.Children(r.Leader)
		return len(kids) > 0 && !helperComm(comm(kids[0])), nil
	})
}

// stopApp asks the program of app machine name to end: SIGTERM to it
// alone, as container engines stop one (nspawn's stub init would turn a
// poweroff into SIGHUP and SIGTERM, and SIGHUP ends a program that does
// not handle it before it can clean up). The stub init ends with it. It
// reports false for a machine that boots, or whose program is gone.
func (m *Manager) stopApp(ctx context.Context, name string) bool {
	if opts, err := m.Options(name); err != nil || opts.App == nil {
		return false
	}
	r, err := m.Backend.Get(ctx, name)
	if err != nil || r.Leader <= 0 {
		return false
	}
	leader, err := backend.ProcOf(r.Leader)
	if err != nil {
		return false
	}
	return backend.SignalChildren(leader, unix.SIGTERM) > 0
}

// appShell is the login shell of user (root when "") in running app
// machine r, as its /etc/passwd names it, or /bin/sh.
func (m *Manager) appShell(r backend.Running, user string) string {
	if user == "" {
		user = "root"
	}
	shell := "/bin/sh"
	_ = m.inRunningRoot(r, func(root *os.Root) error {
		return eachLine(root, "etc/passwd", func(f []string) bool {
			if len(f) >= 7 && (f[0] == user || f[2] == user) {
				if path.IsAbs(f[6]) {
					shell = f[6]
				}
				return false
			}
			return true
		})
	})
	return shell
}

// inRunningRoot runs fn with the root of running machine r as its
// processes see it.
func (m *Manager) inRunningRoot(r backend.Running, fn func(*os.Root) error) error {
	root, err := os.OpenRoot(fmt.Sprintf("/proc/%d/root", r.Leader))
	if err != nil {
		return err
	}
	defer root.Close()
	return fn(root)
}

// execInApp runs e in app machine name, which machined runs (r): nsbox
// enters the namespaces of its PID 1 and joins its cgroups itself, as
// the direct backend does, since no systemd in the machine could start
// the command for systemd-run.
func (m *Manager) execInApp(ctx context.Context, name string, r backend.Running, e backend.ExecSpec) (int, error) {
	leader, err := backend.ProcOf(r.Leader)
	if err != nil {
		return 0, fmt.Errorf("%w: %s stopped meanwhile", ErrNotRunning, name)
	}
	if again, err := m.Backend.Get(ctx, name); err != nil || again.Leader != r.Leader {
		return 0, fmt.Errorf("%w: %s stopped meanwhile", ErrNotRunning, name)
	}
	return direct.ExecIn(ctx, m.Runner, name, leader, cgroupProcsOf(r.Leader), e)
}

// cgroupProcsOf are the cgroup.procs files of the cgroups process pid is
// in, in every hierarchy mounted under /sys/fs/cgroup (cgroup v2, and
// the v1 controllers of a hybrid host) that this host may write, for a
// command to join.
func cgroupProcsOf(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || !path.IsAbs(f[2]) || strings.Contains(f[2], "/../") {
			continue
		}
		dirs := []string{strings.TrimPrefix(f[1], "name=")}
		if f[0] == "0" && f[1] == "" {
			dirs = []string{"", "unified"}
		}
		for _, d := range dirs {
			p := path.Join("/sys/fs/cgroup", d, f[2], "cgroup.procs")
			// A hierarchy this host cannot write (v1 controllers mounted
			// read-only in a container) is one the command stays out of.
			if unix.Access(p, unix.W_OK) == nil {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// CommandLine writes argv as one line a shell would split back into it.
func CommandLine(argv []string) string { return quoteWords(argv) }
