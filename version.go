package main

import (
	"regexp"
	"runtime/debug"
	"strings"
	"time"
)

// release is the version of nsbox this source tree is, bumped in this one
// place when a release is tagged (as v0.1.0, ...). A const in the tree
// and not only the module version Go stamps, because most builds have no
// release version from Go: a clone between tags gets a pseudo-version
// (v0.0.0-DATE-COMMIT, which says nothing of the release line), a
// tarball or -buildvcs=false build gets "(devel)".
const release = "0.1.0"

// version, set at link time (go build -ldflags "-X main.version=0.1.0-1"),
// is the version a packager gives the binary; it takes release's place.
var version string

// pseudoVersion matches the tail of a Go pseudo-version,
// ...-YYYYMMDDhhmmss-COMMIT12, with any build suffix (+dirty).
var pseudoVersion = regexp.MustCompile(`[-.](\d{14})-([0-9a-f]{12})(\+.*)?$`)

// buildVersion is what nsbox --version prints after "nsbox".
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	return formatVersion(version, bi)
}

// formatVersion says which nsbox a binary is: "0.1.0 (commit 8dff129,
// 2026-11-29, modified)". The number is stamped when it is set, else the
// module's version when Go built a release ("go install ...@v0.2.0"), else
// release. The commit, its date and whether the tree had changes come
// from the VCS stamps of a build in a git checkout (vcs.revision,
// vcs.time, vcs.modified), or from a pseudo-version; without either
// nothing is said of the commit. bi may be nil.
func formatVersion(stamped string, bi *debug.BuildInfo) string {
	v := stamped
	var rev, date string
	modified := false
	if bi != nil {
		mod, _, _ := strings.Cut(bi.Main.Version, "+") // "+dirty" is vcs.modified again
		pseudo := pseudoVersion.FindStringSubmatch(bi.Main.Version)
		if v == "" && strings.HasPrefix(mod, "v") && pseudo == nil {
			v = strings.TrimPrefix(mod, "v")
		}
		if pseudo != nil {
			rev = pseudo[2]
			if t, err := time.Parse("20060102150405", pseudo[1]); err == nil {
				date = t.Format(time.DateOnly)
			}
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					date = t.UTC().Format(time.DateOnly)
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = release
	}
	if rev == "" {
		return v
	}
	parts := []string{"commit " + rev[:min(7, len(rev))]}
	if date != "" {
		parts = append(parts, date)
	}
	if modified {
		parts = append(parts, "modified")
	}
	return v + " (" + strings.Join(parts, ", ") + ")"
}
