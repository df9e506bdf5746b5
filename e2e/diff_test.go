//go:build e2e

package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// diffReport is the part of nsbox diff -o json the tests read.
type diffReport struct {
	Machine string `json:"machine"`
	Storage string `json:"storage"`
	Base    string `json:"base"`
	Path    string `json:"path"`
	Entries []struct {
		Path    string   `json:"path"`
		Change  string   `json:"change"`
		What    []string `json:"what"`
		Type    string   `json:"type"`
		OldType string   `json:"old_type"`
		Mode    string   `json:"mode"`
		OldMode string   `json:"old_mode"`
		UID     *int     `json:"uid"`
		OldUID  *int     `json:"old_uid"`
		Target  *string  `json:"target"`
	} `json:"entries"`
	Summary struct {
		Added, Modified, Deleted int
		TypeChanged              int   `json:"type_changed"`
		AddedBytes               int64 `json:"added_bytes"`
	} `json:"summary"`
}

// diffScenario is nsbox diff on an overlay and a copy machine: what a
// shell into the machine added, changed (content, mode, owner), deleted
// and turned into another type is reported, and nothing else of the
// tree's (a copy re-owned to its user range by nspawn is not "changed"),
// as text, JSON and counts, limited to a path; a link the machine planted
// is reported, never followed; a machine imported without a base, an
// unknown machine and bad paths are one line each.
func diffScenario(t *testing.T, e *env) {
	changes := "echo more >> /etc/issue && chmod 600 /etc/issue.net && chown 33:33 /etc/motd" +
		" && rm -r /usr/share/doc/apt/examples && rm /etc/debian_version && mkdir /etc/debian_version" +
		" && echo hi > /etc/e2e-added && ln -s /etc/shadow /root/escape"
	for _, storage := range []string{"overlay", "copy"} {
		name := "e2e-diff-" + storage
		t.Run(storage, func(t *testing.T) {
			e.mustNsb(t, "create", name, "--release", "bookworm", "--storage", storage)
			defer e.nsb(t, "remove", "--force", name)
			e.mustNsb(t, "shell", name, "--", "sh", "-c", changes)

			out := e.mustNsb(t, "diff", name).stdout
			for _, want := range []string{
				"A /etc/e2e-added",
				"T /etc/debian_version (file -> directory)",
				"M /etc/issue (content)",
				"M /etc/issue.net (mode 0644 -> 0600)",
				"M /etc/motd (owner 0 -> 33, group 0 -> 33)",
				"A /root/escape",
				"D /usr/share/doc/apt/examples",
				"D /usr/share/doc/apt/examples/apt.conf",
			} {
				if !strings.Contains("\n"+out, "\n"+want+"\n") {
					t.Errorf("%s: no %q in:\n%s", storage, want, out)
				}
			}
			// Owners are compared as the machine sees them: a copy nspawn
			// re-owned to its range is not a tree of owner changes.
			lines := strings.Split(strings.TrimSpace(out), "\n")
			for _, l := range lines {
				if strings.Contains(l, "owner") && !strings.HasPrefix(l, "M /etc/motd ") {
					t.Errorf("%s: an owner change nobody made: %s", storage, l)
				}
			}
			if len(lines) > 40 {
				t.Errorf("%s: %d changes, more than the shell made:\n%s", storage, len(lines), out)
			}

			var rep diffReport
			js := e.mustNsb(t, "diff", name, "-o", "json").stdout
			if err := json.Unmarshal([]byte(js), &rep); err != nil {
				t.Fatalf("diff -o json is not JSON: %v\n%s", err, js)
			}
			if rep.Machine != name || rep.Storage != storage || rep.Base != suiteBaseKey || rep.Path != "/" || len(rep.Entries) != len(lines) {
				t.Errorf("diff -o json: %s, %s, %s, %s, %d entries for %d lines", rep.Machine, rep.Storage, rep.Base, rep.Path, len(rep.Entries), len(lines))
			}
			n := rep.Summary.Added + rep.Summary.Modified + rep.Summary.Deleted + rep.Summary.TypeChanged
			if n != len(lines) || rep.Summary.AddedBytes < 3 {
				t.Errorf("summary %+v for %d lines", rep.Summary, len(lines))
			}
			for _, en := range rep.Entries {
				switch en.Path {
				case "/etc/motd":
					if en.Change != "modified" || en.UID == nil || *en.UID != 33 || en.OldUID == nil || *en.OldUID != 0 {
						t.Errorf("/etc/motd: %+v", en)
					}
				case "/root/escape":
					if en.Change != "added" || en.Type != "symlink" || en.Target == nil || *en.Target != "/etc/shadow" {
						t.Errorf("/root/escape: %+v", en)
					}
				case "/etc/debian_version":
					if en.Change != "type_changed" || en.Type != "directory" || en.OldType != "file" {
						t.Errorf("/etc/debian_version: %+v", en)
					}
				}
			}

			stat := e.mustNsb(t, "diff", name, "--stat").stdout
			if !regexp.MustCompile(`^\d+ added \(\S+\), \d+ modified \(\S+\), \d+ deleted \(\S+\), 1 type changed\n$`).MatchString(stat) {
				t.Errorf("diff --stat: %q", stat)
			}
			ex := "D /usr/share/doc/apt/examples"
			if got := e.mustNsb(t, "diff", name, "/usr/share/doc").stdout; got != ex+"\n"+ex+"/apt.conf\n"+ex+"/configure-index\n"+ex+"/preferences\n"+ex+"/sources.list\n" {
				t.Errorf("diff %s /usr/share/doc:\n%s", name, got)
			}
			wantFail(t, e.nsb(t, "diff", name, "/root/escape/x"), 1, "/root/escape is a symbolic link to /etc/shadow in the machine")
			wantFail(t, e.nsb(t, "diff", name, "/bin/sh"), 1, "/bin is a symbolic link to usr/bin")
			wantFail(t, e.nsb(t, "diff", name, "/no/such"), 1, "no /no/such in the machine or its base")
		})
	}

	t.Run("errors", func(t *testing.T) {
		min := "/var/tmp/e2e-diff-min"
		e.mustSh(t, "rm -rf "+min+" && mkdir -p "+min+"/root/etc && echo ID=e2e > "+min+"/root/etc/os-release && tar -C "+min+"/root -cf "+min+"/min.tar .")
		defer e.sh(t, "rm -rf "+min)
		e.mustNsb(t, "import", "e2e-diff-imp", min+"/min.tar")
		defer e.nsb(t, "remove", "e2e-diff-imp")
		wantFail(t, e.nsb(t, "diff", "e2e-diff-imp"), 1, "e2e-diff-imp was not made from a cached base")
		wantFail(t, e.nsb(t, "diff", "e2e-diff-none"), exitNotFound, "no such machine")
		wantFail(t, e.nsb(t, "diff", "../etc"), 2, "invalid machine name")
		wantFail(t, e.nsb(t, "diff"), 2, "usage: nsbox diff NAME")
		wantFail(t, e.nsb(t, "diff", "e2e-diff-imp", "/etc", "x"), 2, "usage: nsbox diff NAME")
		wantFail(t, e.nsb(t, "diff", "e2e-diff-imp", ""), 2, "PATH: an empty path")
		wantFail(t, e.nsb(t, "diff", "e2e-diff-imp", "-o", "yaml"), 2, "--output")
	})
}
