//go:build e2e

package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// cpScenario is nsbox cp on a stopped and a running machine of each
// storage kind: host to machine, machine to host and to another machine,
// tar streams both ways; modes, owners (mapped to the machine's range),
// hard links and holes kept; setuid bits dropped on the way out; links
// the machine planted resolved in it, never on the host; cp's errors.
func cpScenario(t *testing.T, e *env) {
	work := "/var/tmp/e2e-cp-" + e.name
	e.mustSh(t, "rm -rf "+work+" && mkdir -p "+work+"/src/sub && cd "+work+
		" && echo hello > src/sub/f && chown 1000:1001 src/sub/f && chmod 4750 src/sub/f && ln src/sub/f src/sub/hard"+
		" && truncate -s 64M src/sparse && printf end >> src/sparse && ln -s sub/f src/link && echo payload > payload")
	defer e.sh(t, "rm -rf "+work)
	cp := func(args ...string) result { return e.nsb(t, append([]string{"cp"}, args...)...) }
	mustCp := func(args ...string) {
		t.Helper()
		if r := cp(args...); r.code != 0 || r.stdout != "" {
			t.Fatalf("nsbox cp failed:\n%s", r)
		}
	}
	inside := func(name, script string) string {
		t.Helper()
		return e.mustNsb(t, "shell", name, "--", "sh", "-c", script).stdout
	}
	// What nsbox cp must not leave: its temporary names, anywhere.
	noTemps := func(t *testing.T) {
		t.Helper()
		if out := e.query(t, "find "+e.rootDir+"/.nsbox "+work+" -xdev -name '.#nsbox-cp.*' 2>/dev/null"); out != "" {
			t.Errorf("left behind: %s", out)
		}
	}

	for _, storage := range []string{"copy", "overlay"} {
		name := "e2e-cp-" + storage
		t.Run(storage, func(t *testing.T) {
			e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", storage)
			defer e.nsb(t, "remove", "--force", name)

			for _, state := range []string{"stopped", "running"} {
				if state == "running" {
					e.mustNsb(t, "boot", name, "--network", "none")
				}
				dir := "/root/" + state
				inside(name, "mkdir "+dir)
				mustCp(work+"/src", name+":"+dir)
				got := inside(name, "cd "+dir+"/src && stat -c '%u %g %a %h' sub/f && stat -c '%u %g' . && cat sub/f && readlink link && du -k sparse | cut -f1 && stat -c %s sparse")
				f := strings.Fields(got)
				if len(f) != 10 || strings.Join(f[:4], " ") != "1000 1001 4750 2" || strings.Join(f[4:6], " ") != "0 0" ||
					f[6] != "hello" || f[7] != "sub/f" || f[9] != strconv.Itoa(64<<20+3) {
					t.Errorf("%s, %s: the copy in the machine (owner, group, mode, links of sub/f; owner of the top; content; link; sparse KiB and size):\n%s", storage, state, got)
				}
				if kib, _ := strconv.Atoi(f[8]); kib > 1024 {
					t.Errorf("%s, %s: the sparse file takes %d KiB in the machine", storage, state, kib)
				}
				// And out again: ids as the machine sees them, no setuid.
				out := work + "/out-" + storage + "-" + state
				mustCp(name+":"+dir+"/src", out)
				if got := e.mustSh(t, "stat -c '%u %g %a %h' "+out+"/sub/f"); got != "1000 1001 750 2\n" {
					t.Errorf("%s, %s: copied out: %s", storage, state, got)
				}
				// diff reads a running machine as it is, without stopping it.
				if got := e.mustNsb(t, "diff", name, dir+"/src/sub").stdout; got != "A "+dir+"/src/sub\nA "+dir+"/src/sub/f\nA "+dir+"/src/sub/hard\n" {
					t.Errorf("%s, %s: diff of what cp brought:\n%s", storage, state, got)
				}
			}

			// The machine's own mounts: its /tmp is a tmpfs of its own.
			mustCp(work+"/payload", name+":/tmp/payload")
			if got := inside(name, "cat /tmp/payload"); got != "payload\n" {
				t.Errorf("%s: copied into its /tmp: %q", storage, got)
			}
			tree := e.rootDir + "/.nsbox/" + name
			if storage == "overlay" {
				tree = e.rootDir + "/.nsbox/.overlay/" + name + "/upper"
			}
			e.mustSh(t, "test ! -e "+tree+"/tmp/payload")

			// Links the machine's root planted resolve in the machine.
			inside(name, "ln -s /etc /root/etc-link && ln -s /etc/shadow /root/shadow-link && ln -s ../../../../../../etc /root/dots")
			mustCp(work+"/payload", name+":/root/etc-link/e2e-cp-payload")
			mustCp(work+"/payload", name+":/root/dots/e2e-cp-payload2")
			if got := inside(name, "cat /etc/e2e-cp-payload /etc/e2e-cp-payload2"); got != "payload\npayload\n" {
				t.Errorf("%s: through the machine's links: %q", storage, got)
			}
			e.mustSh(t, "test ! -e /etc/e2e-cp-payload && test ! -e /etc/e2e-cp-payload2")
			mustCp(name+":/root/etc-link/hostname", work+"/hostname-"+storage)
			if got := e.mustSh(t, "cat "+work+"/hostname-"+storage); got != name+"\n" {
				t.Errorf("%s: /root/etc-link/hostname came from %q, want the machine's", storage, got)
			}
			mustCp(name+":/root/shadow-link", work+"/shadow-"+storage)
			e.mustSh(t, "test -L "+work+"/shadow-"+storage)

			// --owner, by name in the machine.
			mustCp("--owner", "nobody:nogroup", work+"/payload", name+":/root/owned")
			if got := inside(name, "stat -c '%U %G' /root/owned"); got != "nobody nogroup\n" {
				t.Errorf("%s: --owner nobody:nogroup: %q", storage, got)
			}

			// Tar streams, both ways.
			if got := e.mustSh(t, e.cmdline("cp", name+":/root/running/src", "-")+" | tar -tvf - | awk '{print $2, $6}' | sort"); !strings.Contains(got, "1000/1001 src/sub/f") || !strings.Contains(got, "0/0 src/sub/") {
				t.Errorf("%s: the tar stream out:\n%s", storage, got)
			}
			e.mustSh(t, "tar -C "+work+"/src -c . | "+e.cmdline("cp", "-", name+":/root/running"))
			if got := inside(name, "stat -c '%u %a' /root/running/sub/f /root/running/sub/hard | sort -u"); got != "1000 4750\n" {
				t.Errorf("%s: the tar stream in: %q", storage, got)
			}

			// Errors, each one line, nothing made.
			wantFail(t, cp(work+"/nope", name+":/root"), 1, "No such file or directory")
			wantFail(t, cp(work+"/src", name+":/etc/hostname"), 1, "cannot overwrite non-directory with directory")
			wantFail(t, cp(work+"/payload", name+":/nope/x"), 1, "No such file or directory")
			wantFail(t, cp("--owner", "e2e-nobody", work+"/payload", name+":/root/"), 1, "no user")
			e.mustNsb(t, "stop", name)
			e.mustNsb(t, "read-only", name, "true")
			wantFail(t, cp(work+"/payload", name+":/root/"), 1, "read-only")
			e.mustNsb(t, "read-only", name, "false")
			noTemps(t)
		})
	}

	t.Run("between machines and usage errors", func(t *testing.T) {
		e.mustNsb(t, "create", "e2e-cp-a", "--release", "bookworm", "--storage", "overlay")
		defer e.nsb(t, "remove", "--force", "e2e-cp-a")
		e.mustNsb(t, "create", "e2e-cp-b", "--release", "bookworm", "--storage", "copy")
		defer e.nsb(t, "remove", "--force", "e2e-cp-b")
		e.mustNsb(t, "boot", "e2e-cp-a", "--network", "none")
		mustCp(work+"/src", "e2e-cp-a:/root/")
		mustCp("e2e-cp-a:/root/src", "e2e-cp-b:/root/from-a")
		if got := inside("e2e-cp-b", "stat -c '%u %g %a' /root/from-a/sub/f"); got != "1000 1001 4750\n" {
			t.Errorf("from one machine to another: %q", got)
		}
		wantFail(t, cp(work+"/a", work+"/b"), 2, "neither")
		wantFail(t, cp("-", "-"), 2, "only one side")
		wantFail(t, cp("e2e-nope:/etc/hostname", work), exitNotFound, "no such machine")
		wantFail(t, cp("bad_name!:/x", work), 2, "host path with a colon")
		wantFail(t, cp(work+"/payload"), 2, "usage")
		noTemps(t)
	})
}
