package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFormatVersion(t *testing.T) {
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{
			{Key: "-buildmode", Value: "exe"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "8dff129abcde0123456789abcdef0123456789ab"},
			{Key: "vcs.time", Value: "2026-11-29T21:43:15Z"},
			{Key: "vcs.modified", Value: modified},
		}
	}
	info := func(version string, settings []debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Path: "github.com/nsbox/nsbox", Version: version}, Settings: settings}
	}
	for _, tc := range []struct {
		what    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"no build info", "", nil, release},
		{"-buildvcs=false, or a tarball", "", info("(devel)", nil), release},
		{"a clone before Go 1.24", "", info("(devel)", vcs("false")), release + " (commit 8dff129, 2026-11-29)"},
		{"a clone with changes", "", info("(devel)", vcs("true")), release + " (commit 8dff129, 2026-11-29, modified)"},
		{"a clone between tags", "", info("v0.0.0-20261129214315-8dff129abcde", vcs("false")), release + " (commit 8dff129, 2026-11-29)"},
		{"a clone between tags, with changes", "", info("v0.0.0-20261129214315-8dff129abcde+dirty", vcs("true")), release + " (commit 8dff129, 2026-11-29, modified)"},
		{"a clone at a tag", "", info("v0.2.0", vcs("false")), "0.2.0 (commit 8dff129, 2026-11-29)"},
		{"a clone at a tag, with changes", "", info("v0.2.0+dirty", vcs("true")), "0.2.0 (commit 8dff129, 2026-11-29, modified)"},
		{"go install @v0.2.0", "", info("v0.2.0", nil), "0.2.0"},
		{"go install @v0.3.0-rc.1", "", info("v0.3.0-rc.1", nil), "0.3.0-rc.1"},
		{"go install @main", "", info("v0.0.0-20261129214315-8dff129abcde", nil), release + " (commit 8dff129, 2026-11-29)"},
		{"go install @main after a tag", "", info("v0.2.1-0.20261129214315-8dff129abcde", nil), release + " (commit 8dff129, 2026-11-29)"},
		{"-ldflags -X main.version", "0.1.0-1", info("(devel)", vcs("true")), "0.1.0-1 (commit 8dff129, 2026-11-29, modified)"},
		{"-ldflags -X main.version, module version", "0.1.0-1", info("v0.2.0", nil), "0.1.0-1"},
		{"a short revision", "", info("(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}), release + " (commit abc)"},
	} {
		if got := formatVersion(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.what, got, tc.want)
		}
	}
}

// nsbox --version prints "nsbox" and the version, nothing else.
func TestVersionFlag(t *testing.T) {
	out, code := capture(t, "--version")
	if code != 0 || out != "nsbox "+buildVersion()+"\n" {
		t.Errorf("--version: exit %d, %q; want nsbox %s", code, out, buildVersion())
	}
	// A test binary has no module version of its own: release it is.
	if !strings.HasPrefix(out, "nsbox "+release) {
		t.Errorf("--version: %q, want nsbox %s...", out, release)
	}
}
