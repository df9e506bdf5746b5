package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeBase writes a bootstrapped base as build leaves it: base.json and a
// root holding one file, in dir.
func fakeBase(t *testing.T, dir, key string, created time.Time, marker string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root", "marker"), []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(BaseInfo{Key: key, Created: created, Version: versionOf(created)})
	if err := os.WriteFile(filepath.Join(dir, "base.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRefreshKeepsVersionsInUse: a new version of a base replaces the
// current one; the one overlay machines are over is kept with the earlier
// versions they use (and found again by its name), the one nothing uses
// goes; remove is refused while any version has machines, and prune
// removes only versions nothing uses.
func TestRefreshKeepsVersionsInUse(t *testing.T) {
	dir := t.TempDir()
	const key = "debian-bookworm-amd64-minbase-00000000"
	t1 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(24 * time.Hour)
	t3 := t2.Add(24 * time.Hour)
	users := map[string][]string{versionOf(t1): {"web"}}
	c := &BaseCache{Dir: dir, Users: func(k, v string) []string {
		if k != key {
			t.Errorf("users of %s asked", k)
		}
		return users[v]
	}}
	fakeBase(t, filepath.Join(dir, key), key, t1, "one")

	install := func(created time.Time, marker string) {
		t.Helper()
		tmp := filepath.Join(dir, ".#"+key+".new")
		fakeBase(t, tmp, key, created, marker)
		if err := c.install(key, tmp); err != nil {
			t.Fatal(err)
		}
	}
	install(t2, "two") // v1 is web's: kept
	root, err := c.VersionRoot(key, versionOf(t1))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "marker")); string(b) != "one" {
		t.Errorf("version 1 holds %q", b)
	}
	if root, _ := c.VersionRoot(key, versionOf(t2)); root != filepath.Join(dir, key, "root") {
		t.Errorf("the current version is at %s", root)
	}
	install(t3, "three") // v2 is nobody's: gone; v1 still kept
	if _, err := c.VersionRoot(key, versionOf(t2)); err == nil {
		t.Error("version 2, which no machine used, is still there")
	}
	vs := c.Versions(key)
	if len(vs) != 1 || vs[0].Version != versionOf(t1) || vs[0].Current || !slices.Equal(vs[0].Machines, []string{"web"}) {
		t.Errorf("versions: %+v", vs)
	}
	if err := c.Remove(context.Background(), key); !errors.Is(err, ErrBaseInUse) {
		t.Errorf("remove of a base web is over: %v", err)
	}
	if gone, err := c.Prune(context.Background(), false); err != nil || len(gone) != 0 {
		t.Errorf("prune removed %+v (%v) while web uses its version", gone, err)
	}
	users = nil // web removed
	if gone, err := c.Prune(context.Background(), true); err != nil || len(gone) != 1 {
		t.Errorf("prune --dry-run: %+v, %v", gone, err)
	}
	if _, err := c.VersionRoot(key, versionOf(t1)); err != nil {
		t.Errorf("a dry run removed version 1: %v", err)
	}
	if gone, err := c.Prune(context.Background(), false); err != nil || len(gone) != 1 {
		t.Errorf("prune: %+v, %v", gone, err)
	}
	if _, err := os.Stat(filepath.Join(dir, key, "versions")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("versions directory left after the last version went: %v", err)
	}
	if err := c.Remove(context.Background(), key); err != nil {
		t.Errorf("remove of a base nothing uses: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("left in the cache: %v", left)
	}
}

// TestRefreshKeepsVersionsARunIsOver: a throwaway run holds the version
// it is over; a refresh keeps that version (the lock goes with its
// directory), remove is refused and prune leaves it until the run ends.
func TestRefreshKeepsVersionsARunIsOver(t *testing.T) {
	dir := t.TempDir()
	const key = "debian-bookworm-amd64-minbase-00000000"
	t1 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(24 * time.Hour)
	c := &BaseCache{Dir: dir}
	fakeBase(t, filepath.Join(dir, key), key, t1, "one")
	info, err := c.read(key)
	if err != nil {
		t.Fatal(err)
	}
	if info.Runs || info.InUse() {
		t.Errorf("a base no run is over: %+v", info)
	}
	release, err := HoldForRun(info.Root)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c.read(key); !info.Runs {
		t.Errorf("a base a run is over: %+v", info)
	}
	tmp := filepath.Join(dir, ".#"+key+".new")
	fakeBase(t, tmp, key, t2, "two")
	if err := c.install(key, tmp); err != nil {
		t.Fatal(err)
	}
	vs := c.Versions(key)
	if len(vs) != 1 || vs[0].Version != versionOf(t1) || !vs[0].Runs || len(vs[0].Machines) != 0 {
		t.Fatalf("versions after a refresh under a run: %+v", vs)
	}
	if b, _ := os.ReadFile(filepath.Join(vs[0].Root, "marker")); string(b) != "one" {
		t.Errorf("the run's version holds %q", b)
	}
	if cur, _ := c.read(key); cur.Runs {
		t.Errorf("the new version is not the run's: %+v", cur)
	}
	if err := c.Remove(context.Background(), key); !errors.Is(err, ErrBaseInUse) || !strings.Contains(err.Error(), "throwaway run") {
		t.Errorf("remove of a base a run is over: %v", err)
	}
	if gone, err := c.Prune(context.Background(), false); err != nil || len(gone) != 0 {
		t.Errorf("prune removed %+v (%v) under a run", gone, err)
	}
	release()
	if gone, err := c.Prune(context.Background(), false); err != nil || len(gone) != 1 {
		t.Errorf("prune after the run: %+v, %v", gone, err)
	}
	if err := c.Remove(context.Background(), key); err != nil {
		t.Errorf("remove after the run: %v", err)
	}
}
