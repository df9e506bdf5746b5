package machine

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

// pruneFixture plants, under a test Manager's directories, a leftover of
// every kind prune takes and, beside each, what looks alike but is in
// use or not nsbox's, which it must leave.
type pruneFixture struct {
	m      *Manager
	remove []string // what prune must remove
	keep   []string // what it must leave
	held   []*host.FileLock
}

func (f *pruneFixture) file(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func (f *pruneFixture) link(t *testing.T, path, target string) string {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// hold takes the lock on path for the rest of the test.
func (f *pruneFixture) hold(t *testing.T, path string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	l, err := host.LockFile(context.Background(), path, true, false)
	if err != nil {
		t.Fatal(err)
	}
	f.held = append(f.held, l)
	t.Cleanup(l.Unlock)
}

func (f *pruneFixture) record(t *testing.T, name string, rec storage.Record) string {
	t.Helper()
	b, _ := json.Marshal(rec)
	return f.file(t, f.m.storagePath(name), string(b))
}

func newPruneFixture(t *testing.T) *pruneFixture {
	t.Helper()
	up := dbusapi.Machine{Name: "up", Class: "container", Service: "nsbox", Leader: os.Getpid()}
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{"up": up}})
	f := &pruneFixture{m: m}
	rm := func(p string) { f.remove = append(f.remove, p) }
	keep := func(p string) { f.keep = append(f.keep, p) }
	mkMachine(t, m, "web") // stopped
	mkMachine(t, m, "up")  // running

	// Staging trees: a killed create's, in the store and (an earlier
	// nsbox's) in the root directory; one a create holds; a user's file
	// of another shape.
	f.file(t, filepath.Join(m.Store(), ".#gone.0123456789abcdef", "etc", "x"), "x")
	rm(filepath.Join(m.Store(), ".#gone.0123456789abcdef"))
	rm(filepath.Dir(f.file(t, filepath.Join(m.RootDir, ".#old.123", "x"), "x")))
	busy := filepath.Dir(f.file(t, filepath.Join(m.Store(), ".#busy.fedcba9876543210", "x"), "x"))
	f.hold(t, lockPath(busy))
	keep(busy)
	keep(filepath.Dir(f.file(t, filepath.Join(m.RootDir, ".#notours", "x"), "x")))

	// The killed overlay create of gone left its record and upper too;
	// renamed's record and upper, without a staging tree, are what a
	// rename cut short leaves: a machine's data.
	rm(f.record(t, "gone", storage.Record{Kind: storage.Overlay, Tree: m.Tree("gone")}))
	f.file(t, filepath.Join(m.layout("gone").Dir, "upper", "f"), "f")
	rm(m.layout("gone").Dir)
	keep(f.record(t, "renamed", storage.Record{Kind: storage.Overlay, Tree: m.Tree("renamed")}))
	keep(f.file(t, filepath.Join(m.layout("renamed").Dir, "upper", "f"), "f"))
	// A record of a remove cut short; one of a machine under another root.
	rm(f.record(t, "plain", storage.Record{Kind: storage.Overlay, Tree: m.Tree("plain")}))
	keep(f.record(t, "elsewhere", storage.Record{Kind: storage.Overlay, Tree: "/elsewhere/.nsbox/elsewhere"}))

	// Records by name of machines that are gone; of one that is stopped,
	// one that runs, and a machinectl image nsbox may have booted.
	rm(f.link(t, m.namePath("gone"), m.RootDir))
	keep(f.link(t, m.namePath("other"), "/some/other/root"))
	rm(f.file(t, m.limitsPath("gone"), "{}"))
	rm(f.file(t, m.linkPath("gone"), "10.89.0.0/30"))
	rm(f.file(t, filepath.Join(m.LogDir, "gone.log"), "log"))
	keep(f.file(t, m.limitsPath("web"), "{}"))
	keep(f.file(t, m.limitsPath("up"), "{}"))
	keep(f.file(t, filepath.Join(m.LogDir, "up.log"), "log"))
	keep(filepath.Dir(f.file(t, filepath.Join(m.ImagesDir, "foreign", "etc", "os-release"), "ID=debian\n")))
	keep(f.file(t, m.limitsPath("foreign"), "{}"))
	// nsbox's links to trees that are gone; a user's link.
	rm(f.link(t, m.Path("gone"), storeLink("gone")))
	rm(f.link(t, filepath.Join(m.ImagesDir, "gone"), m.Tree("gone")))
	keep(f.link(t, m.Path("mine"), "/etc"))

	// The direct backend's state: a machine whose processes are dead,
	// and one that lives (this process stands for it).
	dead, _ := json.Marshal(map[string]any{"name": "dead", "supervisor": backend.Proc{PID: 1 << 30}})
	rm(f.file(t, filepath.Join(m.RunDir, "machines", "dead.json"), string(dead)))
	self, err := backend.ProcOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	live, _ := json.Marshal(map[string]any{"name": "live", "supervisor": self})
	keep(f.file(t, filepath.Join(m.RunDir, "machines", "live.json"), string(live)))
	keep(f.file(t, m.limitsPath("live"), "{}"))

	// Lock files of killed boots and runs; ones that are held.
	rm(f.file(t, filepath.Join(m.RunDir, "uids", "123.lck"), ""))
	rm(f.file(t, filepath.Join(m.RunDir, "boot", "gone.lck"), ""))
	keep(f.file(t, filepath.Join(m.RunDir, "uids", "456.lck"), ""))
	f.hold(t, filepath.Join(m.RunDir, "uids", "456.lck"))

	// An ephemeral boot of web the host died under; one of up, running.
	f.file(t, filepath.Join(m.ephemeralDir("web"), "upper", "f"), "f")
	rm(m.ephemeralDir("web"))
	f.file(t, m.ephemeralPath("web"), `{"lowers":[{"path":"/x"}]}`)
	keep(f.file(t, filepath.Join(m.ephemeralDir("up"), "upper", "f"), "f"))
	keep(f.file(t, m.ephemeralPath("up"), `{"lowers":[{"path":"/x"}]}`))

	// Snapshots: a killed snapshot command's tree, the empty directory of
	// a machine that is gone; snapshots, even of a machine that is gone.
	rm(filepath.Dir(f.file(t, filepath.Join(m.snapshotDir("web"), ".#s2.tmp", "x"), "x")))
	keep(f.file(t, filepath.Join(m.snapshotDir("web"), "s1", "snapshot.json"), "{}"))
	os.MkdirAll(m.snapshotDir("gone"), 0o700)
	rm(m.snapshotDir("gone"))
	keep(f.file(t, filepath.Join(m.snapshotDir("renamedaway"), "s1", "snapshot.json"), "{}"))

	// The base cache: a base with an earlier version nothing is over and
	// one web is over; a killed bootstrap's tree and one a bootstrap
	// holds; packages of the current base's versions, superseded ones,
	// those of a release without a base, and a user's file.
	bases := filepath.Join(m.CacheDir, "bases")
	const key = "debian-bookworm-amd64-minbase-00000000"
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	info := func(created time.Time) string {
		b, _ := json.Marshal(bootstrap.BaseInfo{Key: key, Distro: "debian", Release: "bookworm", Created: created})
		return string(b)
	}
	f.file(t, filepath.Join(bases, key, "base.json"), info(now))
	f.file(t, filepath.Join(bases, key, "root", "var", "lib", "dpkg", "status"),
		"Package: dash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.5.12-2\n\nPackage: login\nArchitecture: amd64\nVersion: 1:4.13+dfsg1-1\n")
	v1, v2 := "20261001T000000Z", "20261015T000000Z"
	f.file(t, filepath.Join(bases, key, "versions", v1, "base.json"), info(now.AddDate(0, -1, 0)))
	rm(filepath.Dir(f.file(t, filepath.Join(bases, key, "versions", v1, "root", "x"), "x")) + "/..")
	f.file(t, filepath.Join(bases, key, "versions", v2, "base.json"), info(now.AddDate(0, 0, -17)))
	keep(f.file(t, filepath.Join(bases, key, "versions", v2, "root", "x"), "x"))
	f.record(t, "web", storage.Record{Kind: storage.Overlay, Tree: m.Tree("web"), Base: key, Version: v2, Bases: bases})
	rm(filepath.Dir(f.file(t, filepath.Join(bases, ".#"+key+".12345", "root", "x"), "x")) + "/..")
	const other = "debian-trixie-amd64-minbase-11111111"
	keep(filepath.Dir(f.file(t, filepath.Join(bases, ".#"+other+".999", "x"), "x")))
	f.hold(t, filepath.Join(bases, ".#"+other+".lck"))
	debs := filepath.Join(m.CacheDir, "debs")
	keep(f.file(t, filepath.Join(debs, "debian-bookworm", "dash_0.5.12-2_amd64.deb"), "deb"))
	keep(f.file(t, filepath.Join(debs, "debian-bookworm", "login_1%3a4.13+dfsg1-1_amd64.deb"), "deb"))
	rm(f.file(t, filepath.Join(debs, "debian-bookworm", "dash_0.5.11-1_amd64.deb"), "deb"))
	rm(f.file(t, filepath.Join(debs, "debian-bookworm", "dash_0.5.12-2_i386.deb"), "deb"))
	keep(f.file(t, filepath.Join(debs, "debian-bookworm", "notes.txt"), "mine"))
	rm(f.file(t, filepath.Join(debs, "debian-trixie", "dash_0.5.12-3_amd64.deb"), "deb"))
	// A link named as a release's cache leads nowhere prune goes.
	elsewhere := t.TempDir()
	keep(f.file(t, filepath.Join(elsewhere, "dash_0.5.12-3_amd64.deb"), "deb"))
	keep(f.link(t, filepath.Join(debs, "debian-buster"), elsewhere))
	// A bootstrap of sid fills its cache now.
	keep(f.file(t, filepath.Join(debs, "debian-sid", "dash_0.5.12-9_amd64.deb"), "deb"))
	f.hold(t, filepath.Join(debs, ".#debian-sid.lck"))
	for i, p := range f.remove {
		f.remove[i] = filepath.Clean(p)
	}
	return f
}

// tree lists every path under dir with its kind and content, to tell that
// nothing changed.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		s := p + " " + d.Type().String()
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			s += " " + string(b)
		}
		out = append(out, s)
		return nil
	})
	return out
}

// TestPrune: a dry run lists every leftover, with its size, and changes
// nothing; prune removes exactly those, keeps what is in use and what is
// not nsbox's, and a second prune finds nothing.
func TestPrune(t *testing.T) {
	f := newPruneFixture(t)
	ctx := context.Background()
	top := filepath.Dir(f.m.RootDir)
	before := tree(t, top)
	items, err := f.m.Prune(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if after := tree(t, top); !slices.Equal(before, after) {
		t.Errorf("a dry run changed things:\nbefore %q\nafter  %q", before, after)
	}
	var paths []string
	for _, it := range items {
		paths = append(paths, it.Path)
		if it.Removed || it.Error != "" {
			t.Errorf("dry run: %+v", it)
		}
		if it.Bytes <= 0 && it.Kind != PruneState {
			t.Errorf("no size: %+v", it)
		}
	}
	want := slices.Clone(f.remove)
	sort.Strings(want)
	sort.Strings(paths)
	if !slices.Equal(paths, want) {
		t.Errorf("dry run lists\n%s\nwant\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}

	items, err = f.m.Prune(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if !it.Removed {
			t.Errorf("not removed: %+v", it)
		}
	}
	for _, p := range f.remove {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there", p)
		}
	}
	for _, p := range f.keep {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	if _, err := os.Lstat(f.m.ephemeralPath("web")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("the record of web's ephemeral boot is still there")
	}
	if again, err := f.m.Prune(ctx, false); err != nil || len(again) != 0 {
		t.Errorf("a second prune: %+v, %v", again, err)
	}
	// What the bases kept is whole: the version web is over, and the
	// versions directory still lists it.
	if vs := f.m.Bases().Versions("debian-bookworm-amd64-minbase-00000000"); len(vs) != 1 || vs[0].Version != "20261015T000000Z" {
		t.Errorf("versions after prune: %+v", vs)
	}
}

// TestPruneNotRoot: one clear error, nothing looked at.
func TestPruneNotRoot(t *testing.T) {
	f := newPruneFixture(t)
	f.m.Euid = 1000
	before := tree(t, filepath.Dir(f.m.RootDir))
	if items, err := f.m.Prune(context.Background(), false); !errors.Is(err, ErrNotRoot) || items != nil {
		t.Errorf("not root: %v, %+v", err, items)
	}
	if after := tree(t, filepath.Dir(f.m.RootDir)); !slices.Equal(before, after) {
		t.Error("changed things")
	}
}

// TestPrunerGoesOn: a removal that fails is recorded with its error, the
// next ones are still made, and the prune fails at the end naming it.
func TestPrunerGoesOn(t *testing.T) {
	p := &pruner{}
	var done []string
	p.found(PruneStaging, "/a", 10, func() error { return errors.New("busy") })
	p.found(PruneState, "/b", 1, func() error { done = append(done, "/b"); return nil })
	if len(p.items) != 2 || p.items[0].Removed || p.items[0].Error != "busy" || !p.items[1].Removed || len(done) != 1 {
		t.Errorf("items %+v, done %v", p.items, done)
	}
	if !slices.Equal(p.failed, []string{"/a"}) {
		t.Errorf("failed %v", p.failed)
	}
	dry := &pruner{dryRun: true}
	dry.found(PruneBase, "/c", 5, func() error { t.Error("a dry run removed"); return nil })
	if len(dry.items) != 1 || dry.items[0].Removed {
		t.Errorf("dry %+v", dry.items)
	}
}

func TestPruneImageLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("prune needs root")
	}
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	// A machine made from an image: its record names the layer it used.
	mkMachine(t, m, "web")
	mkMachine(t, m, "db")
	dir := filepath.Join(m.ImageCache().Dir, "blobs", "sha256")
	os.MkdirAll(dir, 0o700)
	used, unused := strings.Repeat("a", 64), strings.Repeat("b", 64)
	for _, n := range []string{used, unused, ".#" + unused + ".123", "README"} {
		os.WriteFile(filepath.Join(dir, n), []byte("layer bytes"), 0o600)
	}
	os.MkdirAll(filepath.Dir(m.imagePath("web")), 0o700)
	os.WriteFile(m.imagePath("web"), []byte(`{"source":"docker://x","layers":[{"digest":"sha256:`+used+`","size":11}]}`), 0o600)
	layers := func(items []PruneItem) []string {
		var out []string
		for _, it := range items {
			if it.Kind == PruneLayers {
				out = append(out, filepath.Base(it.Path))
			}
		}
		sort.Strings(out)
		return out
	}
	want := []string{".#" + unused + ".123", unused}
	// A create from an image at work (the cache's lock held shared):
	// nothing of the cache is looked at.
	held, err := host.LockFile(ctx, filepath.Join(m.ImageCache().Dir, ".lck"), false, true)
	if err != nil {
		t.Fatal(err)
	}
	if items, _ := m.Prune(ctx, false); len(layers(items)) != 0 {
		t.Errorf("prune took layers while a create held the cache: %v", layers(items))
	}
	held.Unlock()
	items, err := m.Prune(ctx, true)
	if got := layers(items); err != nil || !slices.Equal(got, want) {
		t.Fatalf("dry run: %v, %v; want %v", got, err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, unused)); err != nil {
		t.Fatalf("a dry run removed a layer: %v", err)
	}
	items, err = m.Prune(ctx, false)
	if got := layers(items); err != nil || !slices.Equal(got, want) {
		t.Fatalf("prune: %v, %v; want %v", got, err, want)
	}
	left := listDir(dir)
	sort.Strings(left)
	if !slices.Equal(left, []string{"README", used}) {
		t.Errorf("left %v, want the layer a machine's image names and the file that is no layer", left)
	}
	// A record that cannot be read keeps every layer.
	os.WriteFile(filepath.Join(dir, unused), []byte("x"), 0o600)
	os.WriteFile(m.imagePath("db"), []byte("{"), 0o600)
	if items, _ := m.Prune(ctx, false); len(layers(items)) != 0 {
		t.Errorf("prune took layers though a record could not be read: %v", layers(items))
	}
}

// The layer export --format oci and push keep of a base version stays
// while the version does; the record of a version that is gone goes, and
// its layer with it.
func TestPruneKeepsBaseLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("prune needs root")
	}
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	bases := m.Bases().Dir
	const key = "debian-bookworm-amd64-minbase-00000000"
	os.MkdirAll(filepath.Join(bases, key, "root"), 0o755)
	os.WriteFile(filepath.Join(bases, key, "base.json"), []byte(`{"key":"`+key+`","version":"V1"}`), 0o644)
	dir := filepath.Join(m.ImageCache().Dir, "blobs", "sha256")
	os.MkdirAll(dir, 0o700)
	kept, gone := strings.Repeat("c", 64), strings.Repeat("d", 64)
	for _, n := range []string{kept, gone} {
		os.WriteFile(filepath.Join(dir, n), []byte("layer"), 0o600)
	}
	os.MkdirAll(m.baseLayersDir(), 0o700)
	rec := func(version, hex string) string {
		p := filepath.Join(m.baseLayersDir(), key+"@"+version+".json")
		os.WriteFile(p, []byte(`{"bases":"`+bases+`","base":"`+key+`","base_version":"`+version+`","layers":[{"digest":"sha256:`+hex+`","diff_id":"sha256:`+hex+`","size":5}]}`), 0o600)
		return p
	}
	keptRec, goneRec := rec("V1", kept), rec("V0", gone)
	items, err := m.Prune(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	var removed []string
	for _, it := range items {
		if it.Kind == PruneLayers {
			removed = append(removed, it.Path)
		}
	}
	sort.Strings(removed)
	want := []string{filepath.Join(dir, gone), goneRec}
	sort.Strings(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, p := range []string{keptRec, filepath.Join(dir, kept)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the layer of a version that is there: %v", err)
		}
	}
}
