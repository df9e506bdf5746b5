//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// imagesScenario is one inventory of machinectl's images and nsbox's
// machines: an image machinectl made (machinectl clone of nsbox's
// machine src on machined; a copy by hand in /var/lib/machines on the
// direct backend, as machinectl import-tar leaves one) and a raw image are
// listed stopped and marked *, status reports them, commands that change
// a machine refuse them with the hint to adopt, adopt's errors change
// nothing, and adopt makes the image an nsbox machine that machinectl
// still finds and nsbox boots. src is stopped.
func imagesScenario(t *testing.T, e *env, src string) {
	const img, raw = "e2e-mctl", "e2e-mraw"
	machined := e.name == "machined"
	// Only the suite's own names in /var/lib/machines are touched.
	e.mustSh(t, "test ! -e /var/lib/machines/"+img+" && test ! -e /var/lib/machines/"+raw+".raw")
	defer func() {
		e.nsb(t, "remove", "--force", img)
		e.sh(t, "rm -rf /var/lib/machines/"+img+" /var/lib/machines/"+raw+".raw /var/lib/machines/.#"+img+".lck")
	}()
	if machined {
		e.mustSh(t, "machinectl clone "+src+" "+img)
	} else {
		e.mustSh(t, "mkdir -p /var/lib/machines && cp -a --reflink=auto "+e.rootDir+"/.nsbox/"+src+" /var/lib/machines/"+img)
	}
	e.mustSh(t, "truncate -s 1M /var/lib/machines/"+raw+".raw")
	if machined {
		// machinectl sees both: what nsbox lists is machinectl's inventory.
		out := e.mustSh(t, "machinectl list-images --no-legend")
		if !strings.Contains(out, img) || !strings.Contains(out, raw) {
			t.Fatalf("machinectl list-images lacks the images:\n%s", out)
		}
	}

	ls := list(t, e)
	i, ok := ls[img]
	if !ok || i.Managed || i.State != "stopped" || i.ImageDir != "/var/lib/machines" || i.ImageType != "directory" ||
		i.Root != "/var/lib/machines/"+img || i.OS != "debian" {
		t.Fatalf("list: %s is %+v", img, i)
	}
	if r, ok := ls[raw]; !ok || r.Managed || r.ImageType != "raw" || r.Root != "/var/lib/machines/"+raw+".raw" {
		t.Errorf("list: %s is %+v", raw, r)
	}
	if s := ls[src]; !s.Managed || s.ImageType != "" {
		t.Errorf("nsbox's own machine (its link in /var/lib/machines) is no image: %+v", s)
	}
	if out := e.mustNsb(t, "list").stdout; !strings.Contains(out, img+"*") || !strings.Contains(out, raw+"*") {
		t.Errorf("the table does not mark the images with *:\n%s", out)
	}
	if s := status(t, e, img); s.Managed || s.ImageType != "directory" || s.State != "stopped" {
		t.Errorf("status %s: %+v", img, s)
	}
	if out := e.mustNsb(t, "status", img).stdout; !strings.Contains(out, "nsbox adopt "+img) {
		t.Errorf("status does not say how to adopt:\n%s", out)
	}

	// What would change the image refuses it, and changes nothing.
	hint := "adopt it first (nsbox adopt " + img + ")"
	wantFail(t, e.nsb(t, "boot", img), 1, hint)
	wantFail(t, e.nsb(t, "remove", img), 1, hint)
	wantFail(t, e.nsb(t, "rename", img, "e2e-other"), 1, hint)
	wantFail(t, e.nsb(t, "shell", img, "--", "true"), 1, hint)
	wantFail(t, e.nsb(t, "boot", raw), 1, "raw disk image")
	wantFail(t, e.nsb(t, "clone", src, img), exitExists, "nsbox adopt "+img)
	wantFail(t, e.nsb(t, "adopt", raw), 1, "raw disk image")
	wantFail(t, e.nsb(t, "adopt", "e2e-nope"), exitNotFound, "no image")
	wantFail(t, e.nsb(t, "adopt", img, src), exitExists, "already exists")
	wantFail(t, e.nsb(t, "adopt", src), exitExists, "an nsbox machine already")
	wantFail(t, e.nsb(t, "adopt", "../etc"), 1, "invalid machine name")
	wantFail(t, e.nsb(t, "adopt"), 2, "adopt takes")
	e.mustSh(t, "test -d /var/lib/machines/"+img+"/usr && test ! -L /var/lib/machines/"+img+
		" && test ! -e "+e.rootDir+"/"+img+" && test ! -e "+e.rootDir+"/.nsbox/"+img)

	e.mustNsb(t, "adopt", img)
	if got := strings.TrimSpace(e.mustSh(t, "readlink /var/lib/machines/"+img)); got != e.rootDir+"/.nsbox/"+img {
		t.Errorf("/var/lib/machines/%s links to %q, want nsbox's tree", img, got)
	}
	if a := list(t, e)[img]; !a.Managed || a.ImageType != "" || a.Storage != "copy" || a.OS != "debian" {
		t.Errorf("list after adopt: %+v", a)
	}
	if machined {
		if out := e.mustSh(t, "machinectl list-images --no-legend"); !strings.Contains(out, img) {
			t.Errorf("machinectl lost the image:\n%s", out)
		}
	}
	e.mustNsb(t, "boot", img)
	if r := e.nsb(t, "shell", img, "--", "systemctl", "is-system-running"); !strings.Contains(r.stdout, "running") && !strings.Contains(r.stdout, "degraded") {
		t.Errorf("adopted machine: %s", r)
	}
	e.mustNsb(t, "remove", "--force", img)
	e.mustSh(t, "test ! -e /var/lib/machines/"+img+" && test ! -e "+e.rootDir+"/"+img)
}
