//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The suite lives beside a user's own machines and bases. Its scenarios
// work in root directories of their own, with a base cache of their own
// (suiteCache) and machine names of their own (e2e-...), and assert only on
// what they made. The proof: before the scenarios, the suite seeds nsbox's
// default places (/srv, /var/cache/nsbox) on this host, and in the test
// host, with machines and a base as a user would have them, and at the end
// checks that everything a user has there is exactly as it was.

// seedWeb and seedDB are the machines seeded as a user's: web made as a
// new user would (create web --release bookworm --include nginx, which
// also caches a base of its own), left stopped, and db a clone of it,
// running. Their names are not the scenarios' (e2e-...).
const seedWeb, seedDB = "e2eseed-web", "e2eseed-db"

// seedMark is a file in the seeded base, and so in the seeded machines:
// what a killed run left is known by it.
const seedMark = "etc/nsbox-e2e-seed"

// userHost is nsbox's default root and cache directories on one host,
// where a user keeps their machines and bases.
type userHost struct {
	where  string   // "this host" or "the test host"
	prefix []string // runs a command there (nil: this host)
	nsbox  string   // nsbox there
	root   string   // the user's root directory
	cache  string   // the user's cache directory
	// What the seeding added, and removes again: bases (keys), and
	// directories nsbox made for them.
	seededBases []string
	madeDirs    []string
	// before is how the user's things were once seeded.
	before map[string]string
}

// suiteNamesTaken lists what nsbox keeps on this host for machines named
// as the scenarios name theirs.
func suiteNamesTaken() []string {
	var found []string
	for _, g := range []string{"/var/lib/nsbox/names/e2e-*", "/etc/systemd/nspawn/e2e-*.nspawn", "/var/lib/machines/e2e-*",
		"/run/nsbox/machines/e2e-*.json", "/etc/systemd/system/nsbox@e2e-*.service"} {
		m, _ := filepath.Glob(g)
		found = append(found, m...)
	}
	return found
}

// plainPackages are the packages of a plain create's base, in nsbox's
// order (bootstrap.BasePackages).
const plainPackages = "systemd,systemd-sysv,dbus,iproute2,libnss-systemd"

// suiteBase makes sure the suite's cache holds the bookworm base the
// scenarios copy, bootstrapping it (once, for every later run) with a
// create in a directory of its own, and returns its key.

func suiteBase() (string, error) {
	if err := os.MkdirAll(suiteCache, 0o700); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-base-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	nsb := func(args ...string) ([]byte, error) {
		cmd := exec.Command(nsboxBin, append([]string{"--root-dir", dir, "--cache-dir", suiteCache, "-q"}, args...)...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("nsbox %s: %v\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out, nil
	}
	find := func() (string, error) {
		out, err := nsb("cache", "list", "--output", "json")
		if err != nil {
			return "", err
		}
		var bases []struct {
			Key, Release, Variant, Mirror string
			Packages                      []string
		}
		if err := json.Unmarshal(out, &bases); err != nil {
			return "", fmt.Errorf("nsbox cache list: %w", err)
		}
		// A plain create's: no mirror, the default variant, the packages
		// every machine gets and no other (a base of an earlier nsbox,
		// which gave machines fewer, is not it).
		for _, b := range bases {
			if b.Release == "bookworm" && b.Variant == "minbase" && b.Mirror == "" && strings.Join(b.Packages, ",") == plainPackages {
				return b.Key, nil
			}
		}
		return "", nil
	}
	if key, err := find(); key != "" || err != nil {
		return key, err
	}
	fmt.Fprintf(os.Stderr, "e2e: bootstrapping the suite's bookworm base into %s (cached for later runs)\n", suiteCache)
	for _, args := range [][]string{{"create", "e2e-base", "--release", "bookworm"}, {"remove", "e2e-base"}} {
		if _, err := nsb(args...); err != nil {
			return "", err
		}
	}
	key, err := find()
	if err == nil && key == "" {
		err = errors.New("no bookworm base in the suite's cache after a create")
	}
	return key, err
}

// seedUser seeds a host (through prefix) with machines and a base of a
// user's, made by nsbox in its default places as a user makes them, and
// records how everything a user has there is. base is the suite's base
// there: the seeded base is a copy of it (no second bootstrap).
func seedUser(where string, prefix []string, nsbox, base string) (*userHost, error) {
	u := &userHost{where: where, prefix: prefix, nsbox: nsbox, root: "/srv", cache: "/var/cache/nsbox"}
	if prefix == nil {
		// A user who set these keeps their machines there.
		if v := os.Getenv("NSBOX_ROOT"); v != "" {
			u.root = v
		}
		if v := os.Getenv("NSBOX_CACHE_DIR"); v != "" {
			u.cache = v
		}
	}
	start := time.Now()
	if err := u.sweep(); err != nil {
		return nil, err
	}
	for _, n := range []string{seedWeb, seedDB} {
		if out, err := u.sh("test ! -e " + shellQuote(u.root+"/"+n) + " && test ! -e /var/lib/nsbox/names/" + n); err != nil {
			return nil, fmt.Errorf("%s: a machine %s is there already, and the suite seeds one by that name (remove it: nsbox remove %s) %s", where, n, n, out)
		}
	}
	dirs := []string{u.cache, u.cache + "/bases", u.cache + "/debs", u.cache + "/debs/debian-bookworm", u.root + "/.nsbox"}
	var missing []string
	for _, d := range dirs {
		if _, err := u.sh("test -e " + shellQuote(d)); err != nil {
			missing = append(missing, d)
		}
	}
	had, err := u.bases()
	if err != nil {
		return nil, err
	}
	// debootstrap is replaced for the one create by a copy of the suite's
	// base: the create that caches the base is nsbox's own, the download
	// is not repeated.
	stub := "#!/bin/sh\n" +
		"# debootstrap, for the nsbox e2e suite's seeding: a copy of its own base\n" +
		"set -e\nfor target; do :; done\n" +
		"cp -a " + shellQuote(base) + "/. \"$target/\"\n" +
		"echo 'seeded by the nsbox e2e suite as a base of a user, removed at its end' > \"$target/" + seedMark + "\"\n"
	script := "set -e; stub=$(mktemp -d /tmp/nsbox-e2e-stub.XXXXXX); trap 'rm -rf \"$stub\"' EXIT\n" +
		"printf '%s' " + shellQuote(stub) + " > \"$stub/debootstrap\"; chmod 755 \"$stub/debootstrap\"\n" +
		"PATH=\"$stub:$PATH\" " + u.cmdline("-q", "create", seedWeb, "--release", "bookworm", "--include", "nginx", "--bootstrapper", "debootstrap") + "\n" +
		u.cmdline("-q", "clone", seedWeb, seedDB) + "\n" +
		u.cmdline("-q", "boot", seedDB) + "\n"
	out, err := u.sh(script)
	if err != nil {
		err = fmt.Errorf("%s: %v %s", where, err, out)
	}
	// What the seeding made is recorded even when it failed half way,
	// and then removed.
	now, lerr := u.bases()
	for k := range now {
		if _, ok := had[k]; !ok {
			u.seededBases = append(u.seededBases, k)
		}
	}
	for _, d := range missing {
		if _, err := u.sh("test -d " + shellQuote(d)); err == nil {
			u.madeDirs = append(u.madeDirs, d)
		}
	}
	if err = errors.Join(err, lerr); err == nil {
		u.before, err = u.snapshot()
	}
	if err != nil {
		return nil, errors.Join(err, u.remove())
	}
	fmt.Fprintf(os.Stderr, "e2e: %s: seeded a user's %s (stopped), %s (running) and base %s in %s (%s)\n",
		where, seedWeb, seedDB, strings.Join(u.seededBases, " "), time.Since(start).Round(100*time.Millisecond), u.summary())
	return u, nil
}

// sweep removes what a killed run seeded: machines and bases that carry
// the seed mark.
func (u *userHost) sweep() error {
	for _, n := range []string{seedDB, seedWeb} {
		if u.seeded(n) {
			fmt.Fprintf(os.Stderr, "e2e: %s: removing %s, seeded by an earlier run\n", u.where, n)
			if out, err := u.nsb("remove", "--force", n); err != nil {
				return fmt.Errorf("remove %s: %v %s", n, err, out)
			}
		}
	}
	bases, err := u.bases()
	if err != nil {
		return err
	}
	for k, root := range bases {
		if _, err := u.sh("test -e " + shellQuote(root+"/"+seedMark)); err == nil {
			fmt.Fprintf(os.Stderr, "e2e: %s: removing base %s, seeded by an earlier run\n", u.where, k)
			if out, err := u.nsb("cache", "remove", k); err != nil {
				return fmt.Errorf("cache remove %s: %v %s", k, err, out)
			}
		}
	}
	return nil
}

// seeded reports whether machine n carries the seed mark: in its tree,
// or, for an overlay machine whose tree is not mounted, in its base.
func (u *userHost) seeded(n string) bool {
	if _, err := u.sh("test -e " + shellQuote(u.root+"/.nsbox/"+n+"/"+seedMark)); err == nil {
		return true
	}
	out, err := u.nsb("status", n, "--output", "json")
	var st struct {
		Base string `json:"base"`
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Base == "" {
		return false
	}
	bases, err := u.bases()
	if err != nil || bases[st.Base] == "" {
		return false
	}
	_, err = u.sh("test -e " + shellQuote(bases[st.Base]+"/"+seedMark))
	return err == nil
}

// remove removes what the suite seeded, and only that.
func (u *userHost) remove() error {
	if u == nil {
		return nil
	}
	var errs []error
	for _, n := range []string{seedDB, seedWeb} {
		// One by one: a seeding that failed half way made only some.
		if _, err := u.sh("test -L " + shellQuote(u.root+"/"+n)); err != nil {
			continue
		}
		if out, err := u.nsb("remove", "--force", n); err != nil {
			errs = append(errs, fmt.Errorf("remove the seeded %s: %v %s", n, err, out))
		}
	}
	for _, k := range u.seededBases {
		if out, err := u.nsb("cache", "remove", k); err != nil {
			errs = append(errs, fmt.Errorf("remove the seeded base: %v %s", err, out))
		}
		// The base's lock file is the seeding's too.
		u.sh("rm -f " + shellQuote(u.cache+"/bases/.#"+k+".lck"))
	}
	for i := len(u.madeDirs) - 1; i >= 0; i-- {
		if out, err := u.sh("rmdir " + shellQuote(u.madeDirs[i])); err != nil {
			errs = append(errs, fmt.Errorf("the seeding made %s: %v %s", u.madeDirs[i], err, out))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", u.where, err)
	}
	return nil
}

// check compares everything a user has in the default places with how it
// was once seeded: each machine's state and files, each base.
func (u *userHost) check() error {
	after, err := u.snapshot()
	if err != nil {
		return err
	}
	var diffs []string
	for k, v := range u.before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: was %s, now gone", k, v))
		} else if w != v {
			diffs = append(diffs, fmt.Sprintf("%s: was %s, now %s", k, v, w))
		}
	}
	for k, v := range after {
		if _, ok := u.before[k]; !ok && !strings.Contains(k, ":") {
			diffs = append(diffs, fmt.Sprintf("%s: appeared: %s", k, v))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fmt.Errorf("%s: the suite changed a user's machines or bases in %s and %s:\n  %s", u.where, u.root, u.cache, strings.Join(diffs, "\n  "))
	}
	return nil
}

// report checks the user's things and says how they are: the exit status
// for the run.
func (u *userHost) report() int {
	if u == nil {
		return 0
	}
	if err := u.check(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: %s: a user's machines and bases are as they were (%s)\n", u.where, u.summary())
	return 0
}

// summary says what the user has there.
func (u *userHost) summary() string {
	var m, b int
	for k := range u.before {
		if strings.HasPrefix(k, "machine ") && !strings.Contains(k, ":") {
			m++
		}
		if strings.HasPrefix(k, "base ") && !strings.Contains(k, ":") {
			b++
		}
	}
	return fmt.Sprintf("%d machines in %s, %d bases in %s", m, u.root, b, u.cache)
}

// fingerprints are shell functions that print "what<TAB>how it is": a
// tree (every entry's type, mode, owner, size, time and link target,
// hashed), a file (its content hashed, or where it links) and a network
// link (its addresses).
const fingerprints = `tree() { printf '%s\ttree %s\n' "$1" "$(find -H "$2" -xdev -printf '%P %y %m %U:%G %s %T@ %l\n' | LC_ALL=C sort | sha256sum | cut -c1-16)"; }
file() { if [ -L "$2" ]; then v="link to $(readlink "$2")"; elif [ -e "$2" ]; then v="content $(sha256sum < "$2" | cut -c1-16)"; else v=absent; fi; printf '%s\t%s\n' "$1" "$v"; }
link() { printf '%s\t%s\n' "$1" "$(ip -4 -o addr show dev "$2" 2>&1 | awk '{print $4}' | LC_ALL=C sort | tr '\n' ' ')"; }
`

// snapshot describes everything a user has in the default places: each
// machine as list shows it (a stopped one's tree, a running one's host
// end of its link) with the files nsbox keeps for it, and each base with
// its tree. A running machine's tree changes as it runs; its leader must
// not.
func (u *userHost) snapshot() (map[string]string, error) {
	state := map[string]string{}
	out, err := u.nsb("list", "--output", "json")
	if err != nil {
		return nil, fmt.Errorf("%s: nsbox list: %v", u.where, err)
	}
	var infos []info
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		return nil, fmt.Errorf("%s: nsbox list: %v\n%s", u.where, err, out)
	}
	var script strings.Builder
	script.WriteString(fingerprints)
	say := func(fn, what, path string) {
		fmt.Fprintf(&script, "%s %s %s\n", fn, shellQuote(what), shellQuote(path))
	}
	for _, i := range infos {
		if !i.Managed {
			// Running from another root directory (list shows those
			// too): not in the user's places here.
			continue
		}
		k := "machine " + i.Name
		state[k] = fmt.Sprintf("%s, leader %d, unit %q, root %s, %s %s", i.State, i.Leader, i.Unit, i.Root, i.OS, i.Version)
		if i.State == "stopped" {
			say("tree", k+": tree", i.Root)
			// An overlay machine's own files, when it is one.
			say("tree", k+": upper", u.root+"/.nsbox/.overlay/"+i.Name+"/upper")
		}
		for _, l := range i.Interfaces {
			say("link", k+": "+l, l)
		}
		for _, f := range []string{i.Root, "/etc/systemd/nspawn/" + i.Name + ".nspawn", "/var/lib/machines/" + i.Name,
			"/var/lib/nsbox/names/" + i.Name, "/var/lib/nsbox/network/" + i.Name, "/var/lib/nsbox/limits/" + i.Name + ".json",
			"/etc/systemd/system/nsbox@" + i.Name + ".service", "/run/nsbox/machines/" + i.Name + ".json",
			"/var/lib/nsbox/storage/" + i.Name + ".json"} {
			say("file", k+": "+f, f)
		}
	}
	bases, err := u.baseInfos()
	if err != nil {
		return nil, err
	}
	for _, b := range bases {
		k := "base " + b.Key
		state[k] = fmt.Sprintf("%s %s, %s, made %s, %d bytes", b.Distro, b.Release, strings.Join(b.Packages, ","), b.Created.Format(time.RFC3339), b.Size)
		say("tree", k+": tree", b.Root)
		say("file", k+": base.json", filepath.Dir(b.Root)+"/base.json")
	}
	out, err = u.sh(script.String())
	if err != nil {
		return nil, fmt.Errorf("%s: fingerprints: %v %s", u.where, err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if what, how, ok := strings.Cut(l, "\t"); ok {
			state[what] = how
		}
	}
	return state, nil
}

// baseInfo is the part of "nsbox cache list --output json" seeding reads.
type baseInfo struct {
	Key      string    `json:"key"`
	Distro   string    `json:"distro"`
	Release  string    `json:"release"`
	Packages []string  `json:"packages"`
	Created  time.Time `json:"created"`
	Size     int64     `json:"size_bytes"`
	Root     string    `json:"root"`
	Current  bool      `json:"current"`
}

func (u *userHost) baseInfos() ([]baseInfo, error) {
	out, err := u.nsb("cache", "list", "--output", "json")
	if err != nil {
		return nil, fmt.Errorf("%s: nsbox cache list: %v", u.where, err)
	}
	var all []baseInfo
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		return nil, fmt.Errorf("%s: nsbox cache list: %v\n%s", u.where, err, out)
	}
	// Earlier versions kept for overlay machines are listed after
	// their base; the base is what a user has.
	var bases []baseInfo
	for _, b := range all {
		if b.Current {
			bases = append(bases, b)
		}
	}
	return bases, nil
}

// bases maps the user's cached bases to their roots.
func (u *userHost) bases() (map[string]string, error) {
	infos, err := u.baseInfos()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, b := range infos {
		out[b.Key] = b.Root
	}
	return out, nil
}

// cmdline is nsbox in the user's places, with the backend nsbox picks.
func (u *userHost) cmdline(args ...string) string {
	q := []string{u.nsbox, "--root-dir", shellQuote(u.root), "--cache-dir", shellQuote(u.cache)}
	for _, a := range args {
		q = append(q, shellQuote(a))
	}
	return strings.Join(q, " ")
}

// nsb runs nsbox in the user's places and returns its stdout.
func (u *userHost) nsb(args ...string) (string, error) {
	return u.sh(u.cmdline(args...))
}

// sh runs a script there and returns its stdout, and stderr with an error.
func (u *userHost) sh(script string) (string, error) {
	argv := append(append([]string{}, u.prefix...), "sh", "-c", script)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return errb.String(), err
	}
	return out.String(), nil
}
