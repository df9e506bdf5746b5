package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine"
)

// TestPrintPrune: one line an item, the packages of one directory on one
// line, failed items left out, and the total of what went.
func TestPrintPrune(t *testing.T) {
	rep := pruneReport{Items: []machine.PruneItem{
		{Kind: machine.PruneStaging, Path: "/srv/.nsbox/.#web.0123456789abcdef", Bytes: 3 << 20, Removed: true},
		{Kind: machine.PruneState, Path: "/var/lib/nsbox/names/web", Bytes: 0, Error: "busy"},
		{Kind: machine.PrunePackages, Path: "/c/debs/debian-bookworm/a_1_all.deb", Bytes: 1 << 20, Removed: true},
		{Kind: machine.PrunePackages, Path: "/c/debs/debian-bookworm/b_1_all.deb", Bytes: 1 << 20, Removed: true},
		{Kind: machine.PrunePackages, Path: "/c/debs/debian-trixie/a_1_all.deb", Bytes: 2 << 20, Removed: true},
	}, FreedBytes: 7 << 20}
	var b strings.Builder
	printPrune(&b, rep)
	want := "removed staging /srv/.nsbox/.#web.0123456789abcdef (3M)\n" +
		"removed packages /c/debs/debian-bookworm: 2 cached packages (2M)\n" +
		"removed packages /c/debs/debian-trixie: 1 cached package (2M)\n" +
		"freed 7M\n"
	if b.String() != want {
		t.Errorf("got\n%swant\n%s", b.String(), want)
	}
	b.Reset()
	printPrune(&b, pruneReport{DryRun: true, Items: []machine.PruneItem{}})
	if b.String() != "nothing to prune\n" {
		t.Errorf("nothing: %q", b.String())
	}
}

// TestPruneUsage: arguments and a bad --output are usage errors.
func TestPruneUsage(t *testing.T) {
	root := t.TempDir()
	for _, args := range [][]string{{"prune", "web"}, {"prune", "-o", "yaml"}} {
		if _, code := capture(t, append([]string{"--root-dir", root}, args...)...); code != exitUsage {
			t.Errorf("%q: exit %d", args, code)
		}
	}
}

// TestPruneCompletion: completion offers prune, and no machine names
// after it (it takes none).
func TestPruneCompletion(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "web", "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "web", "etc", "os-release"), []byte("ID=debian\n"), 0o644)
	if c := newApp().Command("prune"); c == nil || c.Hidden {
		t.Error("prune is not a command completion offers")
	}
	if out, _ := capture(t, "--root-dir", root, "prune", "--generate-bash-completion"); strings.TrimSpace(out) != "" {
		t.Errorf("after prune: %q", out)
	}
}
