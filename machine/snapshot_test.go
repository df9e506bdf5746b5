package machine

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

func TestSnapshotNaming(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"before-upgrade", true}, {"20261130-023501", true}, {"v1.2", true},
		{"", false}, {".hidden", false}, {"a/b", false}, {"..", false}, {"-x", false}, {strings.Repeat("a", 65), false},
	} {
		err := validateSnapshotName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("validateSnapshotName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "snapshot name") || strings.Contains(err.Error(), "machine name")) {
			t.Errorf("validateSnapshotName(%q): %v; want ErrInvalidOption about a snapshot name", tc.name, err)
		}
	}
	at := time.Date(2026, 11, 30, 2, 35, 1, 0, time.Local)
	if got := snapshotName(at); got != "20261130-023501" || ValidateName(got) != nil {
		t.Errorf("snapshotName = %q", got)
	}
}

func TestSnapshotNamesReadsOnlySnapshots(t *testing.T) {
	p := Paths{RootDir: t.TempDir()}
	if got := p.SnapshotNames("web"); got == nil || len(got) != 0 {
		t.Errorf("no snapshots: %#v, want []", got)
	}
	dir := p.snapshotDir("web")
	for _, d := range []string{"b", "a", ".#c.123", ".#restore.9"} {
		os.MkdirAll(filepath.Join(dir, d), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	if got := strings.Join(p.SnapshotNames("web"), " "); got != "a b" {
		t.Errorf("SnapshotNames = %q, want \"a b\"", got)
	}
	if got := p.SnapshotNames("../web"); len(got) != 0 {
		t.Errorf("a bad machine name read %v", got)
	}
}

// snapshotManager is a test Manager that copies with cp, as root (the
// store is root's).
func snapshotManager(t *testing.T) (*Manager, *fakeMachined) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("snapshots are taken as root")
	}
	if _, err := exec.LookPath("cp"); err != nil {
		t.Skip("no cp")
	}
	f := &fakeMachined{machines: map[string]dbusapi.Machine{}}
	m, _ := newTestManager(t, f)
	m.Runner = host.ExecRunner{}
	return m, f
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noSnapshotStaging fails when a snapshot command left work in progress.
func noSnapshotStaging(t *testing.T, m *Manager, name string) {
	t.Helper()
	ents, _ := os.ReadDir(m.snapshotDir(name))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".#") {
			t.Errorf("left in %s: %s", m.snapshotDir(name), e.Name())
		}
	}
}

func TestSnapshotAndRestoreOfACopy(t *testing.T) {
	ctx := context.Background()
	m, _ := snapshotManager(t)
	mkMachine(t, m, "web")
	tree := m.Dir("web")
	// A link the machine's root made to what is a host file seen from
	// the host: copied as a link, never followed.
	hostFile := filepath.Join(t.TempDir(), "host-secret")
	os.WriteFile(hostFile, []byte("host"), 0o600)
	os.Symlink(hostFile, filepath.Join(tree, "evil"))
	os.WriteFile(filepath.Join(tree, "etc", "keep"), []byte("one"), 0o644)
	os.WriteFile(filepath.Join(tree, "etc", "gone"), []byte("here"), 0o644)

	snap, err := m.Snapshot(ctx, "web", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if ValidateName(snap) != nil || !strings.HasPrefix(snap, time.Now().Format("2006")) {
		t.Errorf("snapshot named %q", snap)
	}
	list, err := m.Snapshots(ctx, "web")
	if err != nil || len(list) != 1 || list[0].Name != snap || list[0].Kind != "copy" || list[0].Size <= 0 || list[0].Created.IsZero() {
		t.Fatalf("Snapshots = %+v, %v", list, err)
	}
	os.WriteFile(filepath.Join(tree, "etc", "keep"), []byte("two"), 0o644)
	os.Remove(filepath.Join(tree, "etc", "gone"))
	os.Remove(filepath.Join(tree, "evil"))
	os.Mkdir(filepath.Join(tree, "evil"), 0o755)
	os.WriteFile(filepath.Join(tree, "new"), nil, 0o644)

	if err := m.RestoreSnapshot(ctx, "web", snap); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(tree, "etc", "keep")); got != "one" {
		t.Errorf("restored keep = %q", got)
	}
	if got := readString(t, filepath.Join(tree, "etc", "gone")); got != "here" {
		t.Errorf("restored gone = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(tree, "new")); err == nil {
		t.Error("a file made after the snapshot survived its restore")
	}
	if l, err := os.Readlink(filepath.Join(tree, "evil")); err != nil || l != hostFile {
		t.Errorf("link restored as %q, %v", l, err)
	}
	if got := readString(t, hostFile); got != "host" {
		t.Errorf("the host file the link names was changed: %q", got)
	}
	// The snapshot stays, whole.
	if l, err := os.Readlink(filepath.Join(m.snapshotDir("web"), snap, "tree", "evil")); err != nil || l != hostFile {
		t.Errorf("the snapshot's link: %q, %v", l, err)
	}
	noSnapshotStaging(t, m, "web")
	if err := m.RestoreSnapshot(ctx, "web", snap); err != nil {
		t.Errorf("second restore: %v", err)
	}

	infos, err := m.List(ctx, ListOptions{})
	if err != nil || len(infos) != 1 || strings.Join(infos[0].Snapshots, ",") != snap {
		t.Errorf("list: %+v, %v", infos, err)
	}
	if err := m.RemoveSnapshot(ctx, "web", snap); err != nil {
		t.Fatal(err)
	}
	if got := m.SnapshotNames("web"); len(got) != 0 {
		t.Errorf("after remove: %v", got)
	}
}

func TestSnapshotMistakesChangeNothing(t *testing.T) {
	ctx := context.Background()
	m, f := snapshotManager(t)
	mkMachine(t, m, "web")
	if _, err := m.Snapshot(ctx, "web", "s1", false); err != nil {
		t.Fatal(err)
	}
	_, errExists := m.Snapshot(ctx, "web", "s1", false)
	_, errBadName := m.Snapshot(ctx, "web", "../s", false)
	_, errNoMachine := m.Snapshot(ctx, "nope", "s2", false)
	for _, tc := range []struct {
		what string
		err  error
		want error
		says string
	}{
		{"existing snapshot", errExists, ErrExists, "snapshot s1 of web exists (remove it first: nsbox snapshot remove web s1)"},
		{"bad name", errBadName, ErrInvalidOption, `snapshot name "../s"`},
		{"unknown machine", errNoMachine, ErrNotFound, `no such machine "nope"`},
		{"restore unknown", m.RestoreSnapshot(ctx, "web", "s9"), ErrNotFound, "no snapshot s9 of web (see: nsbox snapshot list web)"},
		{"remove unknown", m.RemoveSnapshot(ctx, "web", "s9"), ErrNotFound, "no snapshot s9 of web"},
		{"restore bad name", m.RestoreSnapshot(ctx, "web", ".."), ErrInvalidOption, "snapshot name"},
	} {
		if !errors.Is(tc.err, tc.want) || !strings.Contains(tc.err.Error(), tc.says) || strings.Contains(tc.err.Error(), "\n") {
			t.Errorf("%s: %v; want %v saying %q", tc.what, tc.err, tc.want, tc.says)
		}
	}
	if got := strings.Join(m.SnapshotNames("web"), " "); got != "s1" {
		t.Errorf("snapshots after the mistakes: %q", got)
	}

	// A running machine: refused without --live, and never restored.
	f.machines["web"] = dbusapi.Machine{Name: "web", Class: "container", RootDirectory: m.Dir("web"), Leader: os.Getpid()}
	_, err := m.Snapshot(ctx, "web", "s2", false)
	if !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), "--live") {
		t.Errorf("snapshot of a running machine: %v", err)
	}
	if err := m.RestoreSnapshot(ctx, "web", "s1"); !errors.Is(err, ErrRunning) {
		t.Errorf("restore of a running machine: %v", err)
	}
	if got := strings.Join(m.SnapshotNames("web"), " "); got != "s1" {
		t.Errorf("snapshots after the refusals: %q", got)
	}
	noSnapshotStaging(t, m, "web")
}

// failingCopy fails the copy of a restore, as a full disk or an
// interrupt would, after it wrote part of the tree.
type failingCopy struct{ host.ExecRunner }

func (f failingCopy) Run(ctx context.Context, c *host.Cmd) error {
	if c.Path == "cp" && strings.Contains(c.String(), ".#restore.") {
		dst := c.Args[len(c.Args)-1]
		os.MkdirAll(filepath.Join(dst, "etc"), 0o755)
		return &host.ExitError{Cmd: "cp", Status: 1, Tail: "No space left on device"}
	}
	return f.ExecRunner.Run(ctx, c)
}

func TestRestoreCutShortLeavesTheMachine(t *testing.T) {
	ctx := context.Background()
	m, _ := snapshotManager(t)
	mkMachine(t, m, "web")
	tree := m.Dir("web")
	os.WriteFile(filepath.Join(tree, "etc", "keep"), []byte("one"), 0o644)
	if _, err := m.Snapshot(ctx, "web", "s1", false); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "etc", "keep"), []byte("two"), 0o644)
	m.Runner = failingCopy{}
	if err := m.RestoreSnapshot(ctx, "web", "s1"); err == nil {
		t.Fatal("restore with a failing copy succeeded")
	}
	if got := readString(t, filepath.Join(tree, "etc", "keep")); got != "two" {
		t.Errorf("a failed restore changed the machine: keep = %q", got)
	}
	if _, err := os.Stat(filepath.Join(tree, "usr")); err != nil {
		t.Errorf("a failed restore changed the machine: %v", err)
	}
	noSnapshotStaging(t, m, "web")

	// What a restore killed outright leaves is swept by the next command.
	left := filepath.Join(m.snapshotDir("web"), ".#restore.12345", "tree")
	os.MkdirAll(left, 0o755)
	m.Runner = host.ExecRunner{}
	if err := m.RestoreSnapshot(ctx, "web", "s1"); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(tree, "etc", "keep")); got != "one" {
		t.Errorf("restored keep = %q", got)
	}
	noSnapshotStaging(t, m, "web")
}

func TestSnapshotOfAnOverlayUpper(t *testing.T) {
	ctx := context.Background()
	m, _ := snapshotManager(t)
	name := "ov"
	const uidBase = 0x100000
	lay := m.layout(name)
	os.MkdirAll(m.Tree(name), 0o755)
	for _, d := range []string{lay.Upper(), lay.Work(), filepath.Join(lay.Upper(), "etc"), filepath.Join(lay.Upper(), "opt")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.writeStorage(name, storage.Record{Kind: storage.Overlay, Lower: t.TempDir(), UIDBase: uidBase, Tree: m.Tree(name)}); err != nil {
		t.Fatal(err)
	}
	upper := lay.Upper()
	os.WriteFile(filepath.Join(upper, "etc", "keep"), []byte("one"), 0o644)
	os.Lchown(filepath.Join(upper, "etc", "keep"), uidBase+5, uidBase+5)
	// A whiteout (the base's /etc/issue deleted) and an opaque directory.
	if err := unix.Mknod(filepath.Join(upper, "etc", "issue"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(upper, "opt"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("no trusted xattrs here: %v", err)
	}
	if _, err := m.Snapshot(ctx, name, "s1", false); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(upper, "etc", "issue"))
	os.WriteFile(filepath.Join(upper, "etc", "keep"), []byte("two"), 0o644)
	unix.Removexattr(filepath.Join(upper, "opt"), "trusted.overlay.opaque")

	// The machine got another range since (snapshot.json has the old one).
	rec := m.storageOf(name)
	rec.UIDBase = 0x200000
	m.writeStorage(name, rec)
	if err := m.RestoreSnapshot(ctx, name, "s1"); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(upper, "etc", "keep")); got != "one" {
		t.Errorf("keep = %q", got)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "etc", "issue"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 || st.Uid != 0 {
		t.Errorf("whiteout not restored: %+v, %v", st, err)
	}
	if unix.Lstat(filepath.Join(upper, "etc", "keep"), &st); st.Uid != 0x200000+5 {
		t.Errorf("keep owned by %d, want the machine's new range", st.Uid)
	}
	buf := make([]byte, 8)
	if n, err := unix.Getxattr(filepath.Join(upper, "opt"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque attribute: %q, %v", buf[:n], err)
	}
	if list, _ := m.Snapshots(ctx, name); len(list) != 1 || list[0].Kind != "overlay" {
		t.Errorf("Snapshots = %+v", list)
	}
	noSnapshotStaging(t, m, name)
}

func TestSnapshotsFollowTheMachine(t *testing.T) {
	ctx := context.Background()
	m, _ := snapshotManager(t)
	mkMachine(t, m, "web")
	if _, err := m.Snapshot(ctx, "web", "s1", false); err != nil {
		t.Fatal(err)
	}
	if err := m.Rename(ctx, "web", "app"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.SnapshotNames("app"), " "); got != "s1" || len(m.SnapshotNames("web")) != 0 {
		t.Errorf("after rename: app %v, web %v", m.SnapshotNames("app"), m.SnapshotNames("web"))
	}
	if err := m.RestoreSnapshot(ctx, "app", "s1"); err != nil {
		t.Errorf("restore after rename: %v", err)
	}
	// Snapshots left under a name (by hand, or an older nsbox) stop a
	// rename to it, before anything moves.
	mkMachine(t, m, "db")
	os.MkdirAll(m.snapshotDir("db2"), 0o700)
	if err := m.Rename(ctx, "db", "db2"); !errors.Is(err, ErrExists) {
		t.Errorf("rename onto left snapshots: %v", err)
	}
	if !m.exists("db") {
		t.Error("a refused rename moved the machine")
	}
	if err := m.Remove(ctx, "app", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(m.snapshotDir("app")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove left the snapshots: %v", err)
	}
}
