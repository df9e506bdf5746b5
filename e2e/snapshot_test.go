//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// snapshotScenario takes, restores and removes snapshots of a copy machine
// and an overlay machine, stopped and running (--live), and checks the
// mistakes a user can make change nothing.
func snapshotScenario(t *testing.T, e *env) {
	store := e.rootDir + "/.nsbox/.snapshots"
	inside := func(t *testing.T, name, script string) string {
		t.Helper()
		return e.mustNsb(t, "shell", name, "--", "sh", "-c", script).stdout
	}
	snapshots := func(t *testing.T, name string) []string {
		t.Helper()
		var list []struct {
			Name    string `json:"name"`
			Created string `json:"created"`
			Size    int64  `json:"size_bytes"`
		}
		r := e.mustNsb(t, "snapshot", "list", name, "-o", "json")
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || list == nil {
			t.Fatalf("snapshot list -o json: %v\n%s", err, r.stdout)
		}
		var names []string
		for _, s := range list {
			if s.Created == "" || s.Size <= 0 {
				t.Errorf("snapshot %+v: no time or size", s)
			}
			names = append(names, s.Name)
		}
		return names
	}

	for _, tc := range []struct{ name, storage string }{{"e2e-snap-copy", "copy"}, {"e2e-snap-ov", "overlay"}} {
		t.Run(tc.storage, func(t *testing.T) {
			name := tc.name
			e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", tc.storage)
			defer e.nsb(t, "remove", "--force", name)
			inside(t, name, "echo one > /root/kept && echo gone > /etc/e2e-gone && rm /etc/issue.net")
			e.mustNsb(t, "snapshot", name, "s1")
			if got := snapshots(t, name); strings.Join(got, " ") != "s1" {
				t.Fatalf("snapshots %v, want [s1]", got)
			}
			var st struct {
				Snapshots []string `json:"snapshots"`
			}
			json.Unmarshal([]byte(e.mustNsb(t, "status", name, "-o", "json").stdout), &st)
			if strings.Join(st.Snapshots, " ") != "s1" {
				t.Errorf("status -o json: snapshots %q, want [s1]", st.Snapshots)
			}
			inside(t, name, "echo two > /root/kept && rm /etc/e2e-gone && echo back > /etc/issue.net && echo new > /root/new")

			// Mistakes: one line each, and nothing changes.
			wantFail(t, e.nsb(t, "snapshot", "restore", name, "nope"), exitNotFound, "no snapshot nope of "+name+" (see: nsbox snapshot list "+name+")")
			wantFail(t, e.nsb(t, "snapshot", name, "s1"), exitExists, "snapshot s1 of "+name+" exists")
			wantFail(t, e.nsb(t, "snapshot", name, "bad/name"), 1, "snapshot name")
			wantFail(t, e.nsb(t, "snapshot", "e2e-snap-nope"), exitNotFound, "no such machine")

			e.mustNsb(t, "snapshot", "restore", name, "s1")
			got := inside(t, name, "cat /root/kept /etc/e2e-gone; test -e /etc/issue.net && echo issue; test -e /root/new && echo new; true")
			if got != "one\ngone\n" {
				t.Errorf("after restore: %q, want %q", got, "one\ngone\n")
			}

			// Live: a running machine, frozen for the moment of the copy.
			e.mustNsb(t, "boot", name)
			wantFail(t, e.nsb(t, "snapshot", name, "s2"), exitRunning, "--live")
			inside(t, name, "echo live > /root/live && sync")
			e.mustNsb(t, "snapshot", name, "s2", "--live")
			if st := inside(t, name, "systemctl is-system-running || true"); !strings.Contains(st, "running") && !strings.Contains(st, "degraded") {
				t.Errorf("after a live snapshot the machine is %q", st)
			}
			wantFail(t, e.nsb(t, "snapshot", "restore", name, "s2"), exitRunning, "machine is running")
			e.mustNsb(t, "stop", name)
			inside(t, name, "rm /root/live && echo three > /root/kept")
			e.mustNsb(t, "snapshot", "restore", name, "s2")
			if got := inside(t, name, "cat /root/live /root/kept"); got != "live\none\n" {
				t.Errorf("after the live snapshot's restore: %q", got)
			}

			e.mustNsb(t, "snapshot", "remove", name, "s1")
			wantFail(t, e.nsb(t, "snapshot", "remove", name, "s1"), exitNotFound, "no snapshot s1 of "+name)
			if got := snapshots(t, name); strings.Join(got, " ") != "s2" {
				t.Errorf("snapshots %v, want [s2]", got)
			}
			e.mustNsb(t, "remove", name)
			if out := e.query(t, "ls -A "+store+" 2>/dev/null | grep -x "+name); out != "" {
				t.Errorf("remove left the snapshots of %s: %s", name, out)
			}
		})
	}
	// A machine whose last snapshot went with snapshot remove leaves no
	// snapshot directory when it goes.
	e.mustNsb(t, "create", "e2e-snap-last", "--release", "bookworm")
	e.mustNsb(t, "snapshot", "e2e-snap-last", "s")
	e.mustNsb(t, "snapshot", "remove", "e2e-snap-last", "s")
	e.mustNsb(t, "remove", "e2e-snap-last")
	e.mustSh(t, "test ! -e "+store)
}
