//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCreate holds the creates that bootstrap for real: the base cache on
// btrfs, and creates killed or interrupted mid-bootstrap. It works on this
// host in directories of its own, so on a host without systemd it runs
// beside TestMachined, whose machines live in the test host.
func TestCreate(t *testing.T) {
	backend := "direct"
	if systemdBooted() {
		backend = "machined"
	} else {
		t.Parallel()
	}
	e := hostEnv(t, backend)
	t.Run("base cache on btrfs", func(t *testing.T) { baseCache(t, e) })
	interrupts(t, e)
}

// baseCache checks, on a btrfs of its own, that concurrent creates of one
// release bootstrap its base once, that bases are subvolumes and machines
// and clones snapshots of them that boot, and cache refresh and remove.
func baseCache(t *testing.T, e *env) {
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs (just deps installs btrfs-progs)")
	}
	dir, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-btrfs-")
	if err != nil {
		t.Fatal(err)
	}
	img, mnt := dir+"/fs.img", dir+"/mnt"
	cache := mnt + "/cache"
	// debootstrap's downloads are the suite's cache's: the base is new,
	// the .debs need not be.
	debs := e.cacheDir + "/debs"
	e.mustSh(t, "truncate -s 3G "+img+" && mkfs.btrfs -q "+img+" && mkdir "+mnt+" && mount -o loop "+img+" "+mnt+
		" && mkdir -m 0700 "+mnt+"/srv && mkdir -p "+debs+" "+cache+"/debs && mount --bind "+debs+" "+cache+"/debs")
	// rm only once both are unmounted: the bind holds the suite's downloads.
	defer e.sh(t, "umount "+cache+"/debs && umount "+mnt+" && rm -rf --one-file-system "+dir)
	bt := *e
	bt.rootDir, bt.cacheDir = mnt+"/srv", cache
	nsb := func(args ...string) result {
		return e.run(t, bt.argv(args...)...)
	}
	must := func(args ...string) result {
		t.Helper()
		r := nsb(args...)
		if r.code != 0 {
			t.Fatalf("nsbox failed:\n%s", r)
		}
		return r
	}

	r := e.sh(t, fmt.Sprintf(`for n in e2e-ca e2e-cb; do %s --root-dir %s --cache-dir %s create $n --release bookworm >/var/tmp/$n.log 2>&1 & done; wait
		grep -l retrieving /var/tmp/e2e-ca.log /var/tmp/e2e-cb.log | wc -l; grep -l 'copying base' /var/tmp/e2e-ca.log /var/tmp/e2e-cb.log | wc -l; cat /var/tmp/e2e-c?.log; rm -f /var/tmp/e2e-c?.log`,
		e.nsbox, bt.rootDir, cache))
	defer nsb("remove", "--force", "e2e-ca")
	defer nsb("remove", "--force", "e2e-cb")
	if !strings.HasPrefix(r.stdout, "1\n2\n") {
		t.Fatalf("want one bootstrap and two copies:\n%s", r.stdout)
	}
	must("clone", "e2e-cb", "e2e-cc")
	defer nsb("remove", "--force", "e2e-cc")

	type base struct {
		Key      string    `json:"key"`
		Packages []string  `json:"packages"`
		Created  time.Time `json:"created"`
	}
	bases := func() map[string]base {
		var bs []base
		if err := json.Unmarshal([]byte(must("cache", "list", "-o", "json").stdout), &bs); err != nil {
			t.Fatal(err)
		}
		out := map[string]base{}
		for _, b := range bs {
			out[b.Key] = b
		}
		return out
	}
	bs := bases()
	if len(bs) != 1 {
		t.Fatalf("want one base, have %v", bs)
	}
	var key string
	for k := range bs {
		key = k
	}
	e.mustSh(t, "btrfs subvolume show "+cache+"/bases/"+key+"/root")
	for _, n := range []string{"e2e-ca", "e2e-cb", "e2e-cc"} {
		// A snapshot shows its parent subvolume's UUID.
		out := e.mustSh(t, "btrfs subvolume show "+bt.rootDir+"/"+n)
		if !strings.Contains(out, "Parent UUID:") || strings.Contains(out, "Parent UUID: \t\t-") {
			t.Errorf("%s is not a snapshot:\n%s", n, out)
		}
	}
	must("boot", "e2e-cc", "--network", "none")
	if r := nsb("shell", "e2e-cc", "--", "hostname"); r.stdout != "e2e-cc\n" {
		t.Errorf("snapshot machine: %s", r)
	}
	must("stop", "e2e-cc")
	btrfsStorage(t, e, &bt)

	// An overlay machine and a throwaway run over the base while it is
	// refreshed: both keep the version they are over, which cache list
	// shows and remove and prune leave, until they are gone.
	must("create", "e2e-co", "--release", "bookworm", "--storage", "overlay")
	defer nsb("remove", "--force", "e2e-co")
	must("boot", "e2e-co", "--network", "none")
	// The run reads a line before it looks at its tree again.
	full := bt.argv("run", "--release", "bookworm", "--", "sh", "-c", "read go; ls /usr/bin | wc -l")
	runCmd := exec.Command(full[0], full[1:]...)
	var runStdout, runStderr strings.Builder
	runCmd.Stdout, runCmd.Stderr = &runStdout, &runStderr
	goOn, err := runCmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := runCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { goOn.Close(); _ = runCmd.Wait() }()
	// The run is up once cache list says so.
	type version struct {
		Key      string    `json:"key"`
		Created  time.Time `json:"created"`
		Version  string    `json:"version"`
		Current  bool      `json:"current"`
		Machines []string  `json:"machines"`
		Runs     bool      `json:"runs"`
	}
	versions := func() []version {
		var vs []version
		if err := json.Unmarshal([]byte(must("cache", "list", "-o", "json").stdout), &vs); err != nil {
			t.Fatal(err)
		}
		return vs
	}
	waitFor(t, 60*time.Second, "the run over the base", func() (bool, string) {
		vs := versions()
		return len(vs) == 1 && vs[0].Runs, fmt.Sprint(vs)
	})
	current := func() version {
		for _, v := range versions() {
			if v.Current {
				return v
			}
		}
		t.Fatal("no current version")
		return version{}
	}
	was := current()
	old := was.Version
	must("cache", "refresh", key)
	if now := current(); !now.Created.After(was.Created) || now.Version == old {
		t.Errorf("refresh did not renew the base: %+v then %+v", was, now)
	}
	vs := versions()
	var cur, earlier version
	for _, v := range vs {
		if v.Current {
			cur = v
		} else {
			earlier = v
		}
	}
	if len(vs) != 2 || earlier.Version != old || strings.Join(earlier.Machines, ",") != "e2e-co" || !earlier.Runs || !cur.Current || cur.Runs || len(cur.Machines) != 0 {
		t.Errorf("after a refresh under an overlay machine and a run, want the earlier version kept for both: %+v", vs)
	}
	if r := nsb("shell", "e2e-co", "--", "sh", "-c", "cat /etc/debian_version >/dev/null && ls /usr/bin | wc -l"); r.code != 0 || len(r.stdout) < 3 {
		t.Errorf("the overlay machine after the refresh: %s", r)
	}
	wantFail(t, nsb("cache", "remove", key), 1, "e2e-co")
	if r := must("cache", "prune", "--dry-run"); strings.Contains(r.stdout, old) {
		t.Errorf("prune would remove the version in use:\n%s", r)
	}
	must("stop", "e2e-co")
	must("remove", "e2e-co")
	// The run alone keeps it now.
	wantFail(t, nsb("cache", "remove", key), 1, "throwaway run")
	if r := must("cache", "prune"); strings.Contains(r.stdout, old) {
		t.Errorf("prune removed the version a run is over:\n%s", r)
	}
	// Let the run end: its tree was whole to the end.
	fmt.Fprintln(goOn, "go")
	goOn.Close()
	if err := runCmd.Wait(); err != nil {
		t.Errorf("the run over the refreshed base: %v\n%s", err, runStderr.String())
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(runStdout.String())); n < 100 {
		t.Errorf("the run over the refreshed base saw %q in /usr/bin", runStdout.String())
	}
	if r := must("cache", "prune"); !strings.Contains(r.stdout, old) {
		t.Errorf("prune did not remove the version nothing is over:\n%s", r)
	}
	if vs := versions(); len(vs) != 1 || !vs[0].Current {
		t.Errorf("after prune: %+v", vs)
	}
	must("cache", "remove", key)
	if _, ok := bases()[key]; ok {
		t.Error("base still listed after remove")
	}
	if i := list(t, &bt)["e2e-ca"]; i.State != "stopped" {
		t.Errorf("a machine made from the removed base: %+v", i)
	}
	must("remove", "e2e-cc")
	e.mustSh(t, "test ! -e "+bt.rootDir+"/e2e-cc")
}

// btrfsStorage checks, on the btrfs file system of the base cache test,
// the commands of the storage round on btrfs machines: snapshots are
// subvolume snapshots, restore is atomic and keeps the snapshot, an
// ephemeral boot and a run over the machine leave its tree as it was.
func btrfsStorage(t *testing.T, e *env, bt *env) {
	const name = "e2e-cc"
	if i := status(t, bt, name); i.Storage != "btrfs" {
		t.Errorf("a machine made on btrfs: storage %q, want btrfs", i.Storage)
	}
	bt.mustNsb(t, "shell", name, "--", "sh", "-c", "echo one > /root/mark")
	bt.mustNsb(t, "snapshot", name, "s1")
	if out := e.mustSh(t, "btrfs subvolume show "+bt.rootDir+"/.nsbox/.snapshots/"+name+"/s1/tree"); strings.Contains(out, "Parent UUID: \t\t-") {
		t.Errorf("snapshot s1 is not a btrfs snapshot:\n%s", out)
	}
	bt.mustNsb(t, "shell", name, "--", "sh", "-c", "echo two > /root/mark; rm /etc/issue")
	bt.mustNsb(t, "boot", name, "--network", "none")
	wantFail(t, bt.nsb(t, "snapshot", "restore", name, "s1"), exitRunning, "machine is running")
	bt.mustNsb(t, "snapshot", name, "live", "--live")
	bt.mustNsb(t, "stop", name)
	bt.mustNsb(t, "snapshot", "restore", name, "s1")
	if r := bt.mustNsb(t, "shell", name, "--", "sh", "-c", "cat /root/mark; test -e /etc/issue && echo back"); r.stdout != "one\nback\n" {
		t.Errorf("after restoring s1: %s", r)
	}
	bt.mustNsb(t, "snapshot", "restore", name, "live")
	if r := bt.mustNsb(t, "shell", name, "--", "cat", "/root/mark"); r.stdout != "two\n" {
		t.Errorf("after restoring the live snapshot: %s", r)
	}
	// A run over the machine and an ephemeral boot see it and change
	// nothing of it.
	sum := "cd " + bt.rootDir + "/" + name + " && find . -xdev -printf '%p %U %s %T@\\n' 2>/dev/null | sort | md5sum"
	tree := e.mustSh(t, sum)
	if r := bt.mustNsb(t, "run", "--from", name, "--", "sh", "-c", "cat /root/mark; echo x > /root/mark"); r.stdout != "two\n" {
		t.Errorf("run --from a btrfs machine: %s", r)
	}
	bt.mustNsb(t, "boot", "--ephemeral", name, "--network", "none")
	bt.mustNsb(t, "shell", name, "--", "sh", "-c", "echo eph > /root/mark")
	bt.mustNsb(t, "stop", name)
	if got := e.mustSh(t, sum); got != tree {
		t.Error("a run and an ephemeral boot changed the btrfs machine's tree")
	}
	bt.mustNsb(t, "snapshot", "remove", name, "s1")
	bt.mustNsb(t, "snapshot", "remove", name, "live")
}

// interrupts checks that SIGINT and SIGTERM during a real bootstrap stop
// debootstrap and leave nothing: no tree, no temporary tree, no mount.
func interrupts(t *testing.T, e *env) {
	t.Run("create killed with SIGKILL, then run again", func(t *testing.T) {
		cmd := bootstrapping(t, e, "e2e-kill", nil)
		cmd.Process.Kill()
		cmd.Wait()
		// The next create of the name finds the tree, stops the orphaned
		// debootstrap, undoes its mounts and removes it.
		e.mustNsb(t, "create", "e2e-kill", "--release", "bookworm")
		if out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-kill").Output(); len(out) > 0 {
			t.Errorf("orphaned debootstrap still running: %s", out)
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "e2e-kill") {
			t.Error("mounts left under the stale tree")
		}
		e.mustSh(t, "! ls -A "+e.rootDir+" "+e.rootDir+"/.nsbox | grep -v '\\.lck$' | grep '^\\.#e2e-kill'")
		e.mustNsb(t, "remove", "e2e-kill")
	})

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("create interrupted by "+sig.String(), func(t *testing.T) {
			var stderr strings.Builder
			cmd := bootstrapping(t, e, "e2e-int", &stderr)
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			code := cmd.ProcessState.ExitCode()
			want := 130
			if sig == syscall.SIGTERM {
				want = 143
			}
			if code != want {
				t.Errorf("exit %d (%v), want %d; stderr: %s", code, err, want, stderr.String())
			}
			if out, _ := exec.Command("pgrep", "-f", "debootstrap.*e2e-int").Output(); len(out) > 0 {
				t.Errorf("debootstrap still running: %s", out)
			}
			ents, _ := os.ReadDir(e.rootDir)
			store, _ := os.ReadDir(e.rootDir + "/.nsbox")
			if ents = append(ents, store...); len(ents) > 0 {
				var names []string
				for _, d := range ents {
					if !strings.HasSuffix(d.Name(), ".lck") && strings.Contains(d.Name(), "e2e-int") {
						names = append(names, d.Name())
					}
				}
				if len(names) > 0 {
					t.Errorf("left in the root directory: %v", names)
				}
			}
			if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "e2e-int") {
				t.Error("mounts left under the temporary tree")
			}
		})
	}
}

// bootstrapping starts a create of name that bootstraps (no cache), and
// returns once debootstrap has worked in the temporary tree for a while.
func bootstrapping(t *testing.T, e *env, name string, stderr io.Writer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(e.nsbox, "--root-dir", e.rootDir, "--cache-dir", e.cacheDir, "create", name, "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap")
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "debootstrap running", func() (bool, string) {
		out, _ := exec.Command("pgrep", "-f", "debootstrap.*"+name).Output()
		return len(out) > 0, string(out)
	})
	time.Sleep(2 * time.Second)
	return cmd
}
