//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// pruneScenario is nsbox prune on leftovers planted as a crash leaves
// them, beside a running overlay machine and its base, in a root and
// cache directory of its own (the suite's cache is shared, and what is
// in it is not this test's): a killed create's staging tree, upper and
// records, the direct backend's state of a machine that died, an earlier
// base version nothing is over, superseded cached packages and those of
// a release without a base. A dry run lists them with their sizes and
// changes nothing; prune removes exactly them, its totals add up, and
// the running machine and what it is over are untouched. Not root, and a
// removal that fails (on this host: an immutable file), are one line.
func pruneScenario(t *testing.T, e *env) {
	work := "/var/tmp/e2e-prune-" + e.name
	pe := *e
	pe.rootDir, pe.cacheDir = work+"/root", work+"/cache"
	const up, gone = "e2e-pr-up", "e2e-pr-gone"
	key := suiteBaseKey
	base := pe.cacheDir + "/bases/" + key
	store := pe.rootDir + "/.nsbox"
	cleanup := func() {
		pe.nsb(t, "remove", "--force", up)
		e.sh(t, "chattr -i "+store+"/.#e2e-pr-stuck.1111111111111111/blob 2>/dev/null; rm -rf "+work+
			" /var/lib/nsbox/storage/"+gone+".json /var/lib/nsbox/names/"+gone+" /run/nsbox/machines/e2e-pr-dead.json")
	}
	cleanup()
	defer cleanup()
	// The base: the suite's, linked (or copied) into this cache.
	e.mustSh(t, "mkdir -p "+base+" "+pe.rootDir+" && cd "+e.cacheDir+"/bases/"+key+
		" && { cp -al root base.json "+base+"/ 2>/dev/null || cp -a --reflink=auto root base.json "+base+"/; }")
	pe.mustNsb(t, "create", up, "--release", "bookworm", "--storage", "overlay")
	pe.mustNsb(t, "boot", up, "--network", "none")

	// What a crash leaves.
	arch := strings.TrimSpace(e.mustSh(t, "dpkg --print-architecture"))
	dash := strings.TrimSpace(e.mustSh(t, "dpkg-query --admindir="+base+"/root/var/lib/dpkg -W -f '${Version}' dash"))
	staging := store + "/.#" + gone + ".0123456789abcdef"
	upper := store + "/.overlay/" + gone
	version := base + "/versions/20200101T000000Z"
	debs := pe.cacheDir + "/debs"
	kept := debs + "/debian-bookworm/dash_" + dash + "_" + arch + ".deb"
	superseded := debs + "/debian-bookworm/dash_0.0.1-1_" + arch + ".deb"
	noBase := debs + "/debian-trixie/dash_0.5.12-3_" + arch + ".deb"
	e.mustSh(t, fmt.Sprintf(`set -e
mkdir -p %[1]s/etc %[2]s/upper %[3]s/root %[4]s/debian-bookworm %[4]s/debian-trixie /var/lib/nsbox/storage /var/lib/nsbox/names /run/nsbox/machines
head -c 2000000 /dev/urandom > %[1]s/etc/blob
echo f > %[2]s/upper/f
printf '{"kind":"overlay","tree":"%[5]s/%[6]s"}' > /var/lib/nsbox/storage/%[6]s.json
ln -s %[7]s /var/lib/nsbox/names/%[6]s
printf '{"name":"e2e-pr-dead","supervisor":{"pid":1073741824,"start":1}}' > /run/nsbox/machines/e2e-pr-dead.json
cp %[8]s/base.json %[3]s/ && head -c 3000000 /dev/urandom > %[3]s/root/blob
head -c 100000 /dev/urandom > %[9]s
head -c 200000 /dev/urandom > %[10]s
head -c 300000 /dev/urandom > %[11]s`,
		staging, upper, version, debs, store, gone, pe.rootDir, base, kept, superseded, noBase))
	want := map[string]string{
		staging: "staging", upper: "staging", version: "base", superseded: "packages", noBase: "packages",
		"/var/lib/nsbox/storage/" + gone + ".json": "state", "/var/lib/nsbox/names/" + gone: "state",
		"/run/nsbox/machines/e2e-pr-dead.json": "state",
	}
	exists := func(paths ...string) string {
		return e.query(t, "for p in "+strings.Join(paths, " ")+"; do test -e $p -o -L $p && echo $p; done; true")
	}
	var planted []string
	for p := range want {
		planted = append(planted, p)
	}

	type item struct {
		Kind    string `json:"kind"`
		Path    string `json:"path"`
		Bytes   int64  `json:"bytes"`
		Removed bool   `json:"removed"`
		Error   string `json:"error"`
	}
	type report struct {
		DryRun     bool   `json:"dry_run"`
		Items      []item `json:"items"`
		FreedBytes int64  `json:"freed_bytes"`
	}
	// check: every planted leftover listed with its kind and a size, the
	// total adds up, and nothing of the running machine or its base.
	// failing is a leftover whose removal fails, "" for none.
	check := func(r result, dry bool, failing string) report {
		t.Helper()
		var rep report
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("prune -o json is not JSON: %v\n%s", err, r)
		}
		var sum int64
		seen := map[string]bool{}
		for _, it := range rep.Items {
			if it.Removed || dry {
				sum += it.Bytes
			}
			if it.Path == failing {
				if it.Removed || it.Error == "" {
					t.Errorf("the removal that fails: %+v", it)
				}
			} else if it.Removed == dry || it.Error != "" {
				t.Errorf("item %+v after a prune with dry run %v", it, dry)
			}
			if k, ok := want[it.Path]; ok {
				seen[it.Path] = true
				// A link's target fits in its inode: 0 bytes.
				if it.Kind != k || it.Bytes <= 0 && k != "state" {
					t.Errorf("item %+v, want kind %s and a size", it, k)
				}
			}
			if strings.Contains(it.Path, up) || it.Path == base || strings.HasPrefix(it.Path, base+"/root") || it.Path == kept {
				t.Errorf("prune takes what is in use: %+v", it)
			}
		}
		if sum != rep.FreedBytes || rep.DryRun != dry {
			t.Errorf("freed_bytes %d, the items add up to %d (dry run %v)", rep.FreedBytes, sum, rep.DryRun)
		}
		for p := range want {
			if !seen[p] {
				t.Errorf("%s not listed:\n%s", p, r)
			}
		}
		return rep
	}

	t.Run("not root", func(t *testing.T) {
		r := e.run(t, append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, pe.argv("prune")...)...)
		wantFail(t, r, 1, "must be run as root")
		if out := exists(planted...); strings.Count(out, "\n") != len(planted) {
			t.Errorf("not root changed things: only\n%s is left", out)
		}
	})

	t.Run("dry run", func(t *testing.T) {
		check(pe.mustNsb(t, "prune", "--dry-run", "-o", "json"), true, "")
		if out := exists(planted...); strings.Count(out, "\n") != len(planted) {
			t.Errorf("a dry run changed things: only\n%s is left", out)
		}
		r := pe.mustNsb(t, "prune", "--dry-run")
		for _, line := range []string{"would remove staging " + staging + " (", "would remove base " + version + " (3M)",
			"would remove packages " + debs + "/debian-trixie: 1 cached package (", "would free "} {
			if !strings.Contains(r.stdout, line) {
				t.Errorf("dry run says no %q:\n%s", line, r)
			}
		}
	})

	t.Run("a removal that fails", func(t *testing.T) {
		stuck := store + "/.#e2e-pr-stuck.1111111111111111"
		// nspawn takes CAP_LINUX_IMMUTABLE from the test host.
		if e.sh(t, "mkdir -p "+stuck+" && echo x > "+stuck+"/blob && chattr +i "+stuck+"/blob").code != 0 {
			e.sh(t, "rm -rf "+stuck)
			t.Skip("no chattr +i here")
		}
		r := pe.nsb(t, "prune", "--dry-run", "-o", "json")
		if r.code != 0 || !strings.Contains(r.stdout, stuck) {
			t.Fatalf("dry run with a stuck tree:\n%s", r)
		}
		r = pe.nsb(t, "prune", "-o", "json")
		var errLines []string
		for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
			if strings.HasPrefix(l, "nsbox: ") {
				errLines = append(errLines, l)
			}
		}
		if r.code != 1 || len(errLines) != 2 || !strings.HasPrefix(errLines[0], "nsbox: prune: could not remove "+stuck+": ") ||
			errLines[1] != "nsbox: prune: 1 of "+fmt.Sprint(len(check(r, false, stuck).Items))+" leftovers could not be removed (see above)" {
			t.Errorf("want the failure said, the rest removed, exit 1:\n%s", r)
		}
		if out := exists(planted...); out != "" {
			t.Errorf("left after a prune that went on: %s", out)
		}
		e.mustSh(t, "chattr -i "+stuck+"/blob")
		if r := pe.mustNsb(t, "prune"); !strings.Contains(r.stdout, "removed staging "+stuck) {
			t.Errorf("the stuck tree, once it can go:\n%s", r)
		}
	})

	t.Run("prune", func(t *testing.T) {
		if out := exists(planted...); out != "" {
			// Not removed above (no chattr here): now.
			check(pe.mustNsb(t, "prune", "-o", "json"), false, "")
		}
		if out := exists(planted...); out != "" {
			t.Errorf("left after prune: %s", out)
		}
		if out := exists(kept, base+"/root/etc/os-release", base+"/base.json"); strings.Count(out, "\n") != 3 {
			t.Errorf("prune took what the running machine is over: only %s is left", out)
		}
		if i := status(t, &pe, up); i.State != "running" {
			t.Errorf("the running machine after prune: %+v", i)
		}
		if r := pe.mustNsb(t, "shell", up, "--", "cat", "/etc/hostname"); r.stdout != up+"\n" {
			t.Errorf("shell into the running machine after prune: %s", r)
		}
		var rep report
		r := pe.mustNsb(t, "prune", "-o", "json")
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("prune -o json is not JSON: %v\n%s", err, r)
		}
		for _, it := range rep.Items {
			if strings.HasPrefix(it.Path, work) || strings.Contains(it.Path, "e2e-pr-") {
				t.Errorf("a second prune found %+v", it)
			}
		}
	})
}
