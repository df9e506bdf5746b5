//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// fleetScenario holds what nsbox guarantees an orchestrator (README
// "Exit status", docs/remote.md "Fleets"): a create run again with the
// same source succeeds and changes nothing, with another source it is
// the "exists" status; boot of a running machine and what refuses a
// running machine have the "running" status, stop of a stopped one "not
// running", an unknown name "no such machine". The machine is an app
// machine from the suite's OCI layout (appImage): no network.
func fleetScenario(t *testing.T, e *env) {
	dir := appImage(t, e)
	src := "oci:" + dir
	const name, other = "e2e-fleet", "e2e-fleet-2"
	defer e.nsb(t, "remove", "--force", name, other)
	staging := func() string {
		return e.sh(t, "ls -a "+e.rootDir+"/.nsbox | grep '^\\.#e2e-fleet' | grep -v '\\.lck$'").stdout
	}

	t.Run("create twice from one image", func(t *testing.T) {
		// A copy: its tree is there to mark from the host. The creates
		// again leave --storage out: how it is kept is not its source.
		e.mustNsb(t, "create", name, "--from", src, "--storage", "copy")
		e.mustSh(t, "touch "+e.rootDir+"/"+name+"/e2e-mine")
		r := e.nsb(t, "create", name, "--from", src)
		if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, name+" exists already, made from "+src+" (sha256:") ||
			!strings.Contains(r.stderr, "nothing changed") {
			t.Errorf("a create again from the same image:\n%s", r)
		}
		var res struct {
			Name    string `json:"name"`
			Created bool   `json:"created"`
			Origin  struct {
				Kind, Source, Platform, Digest string
			} `json:"origin"`
		}
		r = e.mustNsb(t, "create", name, "--from", src, "-o", "json")
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Name != name || res.Created || res.Origin.Kind != "image" ||
			res.Origin.Source != src || !strings.HasPrefix(res.Origin.Digest, "sha256:") || res.Origin.Platform == "" {
			t.Errorf("create -o json of a machine that exists: %v %+v\n%s", err, res, r)
		}
		n := 0
		for m := range list(t, e) {
			if strings.HasPrefix(m, "e2e-fleet") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d machines after three creates of one", n)
		}
		e.mustSh(t, "test -e "+e.rootDir+"/"+name+"/e2e-mine")
		if s := staging(); s != "" {
			t.Errorf("staging trees left: %s", s)
		}
	})

	t.Run("create from another source", func(t *testing.T) {
		says := "made from " + src + " (sha256:"
		wantFail(t, e.nsb(t, "create", name, "--from", src+":e2e-other-tag"), exitExists, says)
		wantFail(t, e.nsb(t, "create", name, "--release", "bookworm"), exitExists, says)
		// Refused before any pull: the registry does not exist.
		wantFail(t, e.nsb(t, "create", name, "--from", "docker://e2e-fleet.invalid/x:1"), exitExists, "not docker://e2e-fleet.invalid/x:1")
		e.mustSh(t, "test -e "+e.rootDir+"/"+name+"/e2e-mine")
	})

	t.Run("two creates at once", func(t *testing.T) {
		r := e.sh(t, fmt.Sprintf(`for i in 1 2; do (%s >/var/tmp/e2e-fleet.$i 2>&1; echo "exit $?" >>/var/tmp/e2e-fleet.$i) & done; wait
			cat /var/tmp/e2e-fleet.*; rm -f /var/tmp/e2e-fleet.*`, e.cmdline("create", other, "--from", src)))
		if strings.Count(r.stdout, "exit 0\n") != 2 || strings.Count(r.stdout, "created "+other) != 1 ||
			strings.Count(r.stdout, other+" exists already") != 1 {
			t.Errorf("two creates of one name from one image:\n%s", r.stdout)
		}
		if s := staging(); s != "" {
			t.Errorf("staging trees left: %s", s)
		}
	})

	t.Run("running", func(t *testing.T) {
		e.mustNsb(t, "boot", name)
		wantFail(t, e.nsb(t, "boot", name), exitRunning, "is running")
		wantFail(t, e.nsb(t, "remove", name), exitRunning, "is running")
		wantFail(t, e.nsb(t, "rename", name, "e2e-fleet-r"), exitRunning, "is running")
		wantFail(t, e.nsb(t, "clone", name, "e2e-fleet-c"), exitRunning, "is running")
		// A create of it again is still "there": 0, and it runs on.
		if r := e.nsb(t, "create", name, "--from", src); r.code != 0 || !strings.Contains(r.stderr, "exists already") {
			t.Errorf("a create again of a running machine:\n%s", r)
		}
		// Several machines: the status their failures share.
		e.mustNsb(t, "boot", other)
		if r := e.nsb(t, "boot", name, other); r.code != exitRunning || strings.Count(r.stderr, "is running") != 2 {
			t.Errorf("boot of two running machines:\n%s", r)
		}
		if i := status(t, e, name); i.State != "running" {
			t.Errorf("after the refused commands %s is %s", name, i.State)
		}
		e.mustNsb(t, "stop", name, other)
		r := e.nsb(t, "stop", name, other)
		if r.code != exitNotRunning || strings.Count(r.stderr, "not running") != 2 {
			t.Errorf("stop of two stopped machines:\n%s", r)
		}
		wantFail(t, e.nsb(t, "boot", "e2e-fleet-nope"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "status", "e2e-fleet-nope"), exitNotFound, "no such machine")
		e.mustSh(t, "test ! -e "+e.rootDir+"/e2e-fleet-r && test ! -e "+e.rootDir+"/e2e-fleet-c")
	})

	t.Run("remove", func(t *testing.T) {
		e.mustNsb(t, "remove", name, other)
		wantFail(t, e.nsb(t, "remove", name), exitNotFound, "no such machine")
		// Gone, a create makes it anew.
		if r := e.mustNsb(t, "create", name, "--from", src); !strings.Contains(r.stderr, "created "+name) {
			t.Errorf("a create after remove:\n%s", r)
		}
	})
}
