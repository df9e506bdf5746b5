package bootstrap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/host"
)

// A base from before IDs gets one when first asked, kept in its base.json;
// a version received from another host keeps the sender's ID, as a kept
// version (never the base of its key: TestReceivedVersionIsNeverTheBase), not at all under a version name another bootstrap
// has here, and found, not stored again, when its ID is here.
func TestIdentifyAndAddReceived(t *testing.T) {
	ctx := context.Background()
	const key = "debian-bookworm-amd64-minbase-00000000"
	t1 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	here := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	fakeBase(t, filepath.Join(here.Dir, key), key, t1, "here")
	info, err := here.Identify(ctx, key, versionOf(t1))
	if err != nil || len(info.ID) != 32 {
		t.Fatalf("identify: %+v %v", info, err)
	}
	again, _ := here.Identify(ctx, key, versionOf(t1))
	if again.ID != info.ID {
		t.Errorf("the ID changed: %s then %s", info.ID, again.ID)
	}
	fill := func(marker string) func(string) error {
		return func(root string) error { return os.WriteFile(filepath.Join(root, "marker"), []byte(marker), 0o644) }
	}

	there := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	got, hold, err := there.AddReceived(ctx, info, fill("sent"))
	if err != nil {
		t.Fatal(err)
	}
	hold.Release(true)
	if got.Current || got.ID != info.ID || got.Version != info.Version {
		t.Errorf("received into an empty cache: %+v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(got.Root, "marker")); string(b) != "sent" {
		t.Errorf("its tree: %q", b)
	}
	// Found again by its ID, fill not called.
	_, hold, err = there.AddReceived(ctx, info, func(string) error { t.Error("filled again"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	hold.Release(false) // not added by this call: kept

	// Another bootstrap of the key under the same version name: refused.
	other := info
	other.ID = newBaseID()
	if _, _, err := there.AddReceived(ctx, other, fill("other")); !errors.Is(err, ErrVersionTaken) {
		t.Errorf("a version name taken: %v", err)
	}
	// Under another name: kept beside the first; drop removes it.
	other.Version = versionOf(t1.Add(time.Hour))
	got, hold, err = there.AddReceived(ctx, other, fill("other"))
	if err != nil || got.Current {
		t.Fatalf("a second version: %+v %v", got, err)
	}
	if v, ok := there.FindID(key, other.ID); !ok || v.Version != other.Version {
		t.Errorf("find it: %+v %v", v, ok)
	}
	hold.Release(false)
	if _, ok := there.FindID(key, other.ID); ok || len(there.Versions(key)) != 1 {
		t.Errorf("dropped, still there: %+v", there.Versions(key))
	}
	for _, bad := range []BaseInfo{{Key: "../x", Version: info.Version, ID: info.ID}, {Key: key, Version: "../../x", ID: info.ID}, {Key: key, Version: info.Version, ID: "x"}} {
		if _, _, err := there.AddReceived(ctx, bad, fill("bad")); !errors.Is(err, ErrBaseRef) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

// A version another host sent is never this host's base of its key: the
// key is what a create here would compute (BaseKey of a release, ImageKey
// of an image), so a sender that could make it the base would choose what
// every later create of that release is made from here, and what a
// refresh bootstraps (its mirror, packages and bootstrapper come from the
// sender's base.json). It is kept as an earlier version, for the machines
// over it alone, and prune removes it after them.
func TestReceivedVersionIsNeverTheBase(t *testing.T) {
	ctx := context.Background()
	key := BaseKey(Options{Release: Release{Name: "bookworm", Distro: Distros["debian"]}})
	t1 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	there := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	sent := BaseInfo{Key: key, Version: versionOf(t1), ID: newBaseID(), Mirror: "http://sender.invalid/debian"}
	got, hold, err := there.AddReceived(ctx, sent, func(root string) error {
		return os.WriteFile(filepath.Join(root, "marker"), []byte("sender's"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	hold.Release(true)
	if got.Current {
		t.Errorf("the received version is the base of %s here: %+v", key, got)
	}
	if cur, err := there.read(key); err == nil {
		t.Errorf("a create of %s here would use the sender's tree %s", key, cur.Root)
	}
	if v, ok := there.FindID(key, sent.ID); !ok || v.Version != sent.Version {
		t.Errorf("not found by its ID: %+v %v", v, ok)
	}
	// No machine over it: prune takes it, and leaves no directory of the key.
	gone, err := there.Prune(ctx, false)
	if err != nil || len(gone) != 1 || gone[0].ID != sent.ID {
		t.Errorf("prune: %+v %v", gone, err)
	}
	if _, err := os.Lstat(there.dir(key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("left after prune: %v", err)
	}
}

// A receive fills its staging tree without the base's lock, under the
// tree's own: sweep (of a create or another receive) and prune's
// leftovers leave it while it is held, and take it once its receive was
// killed (the lock died with it).
func TestReceiveStagingSurvivesSweepWhileHeld(t *testing.T) {
	ctx := context.Background()
	const key = "debian-bookworm-amd64-minbase-00000000"
	c := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	if err := host.PrivateDir(c.Dir); err != nil {
		t.Fatal(err)
	}
	live, killed := filepath.Join(c.Dir, ".#"+key+".111"), filepath.Join(c.Dir, ".#"+key+".222")
	for _, d := range []string{live, killed} {
		if err := os.MkdirAll(filepath.Join(d, "root"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := host.LockFile(ctx, stagingLock(live), true, false)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	c.Leftovers(ctx, func(kind, path string, _ int64, _ func() error) { found = append(found, path) })
	if len(found) != 1 || found[0] != killed {
		t.Errorf("leftovers: %v, want %s alone", found, killed)
	}
	c.sweep(key)
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live receive's tree was swept: %v", err)
	}
	if _, err := os.Stat(killed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed receive's tree is left: %v", err)
	}
	l.Unlock()
	c.sweep(key)
	if _, err := os.Stat(live); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("left once its lock is gone: %v", err)
	}
}

// Two receives of one version at once both read their streams (neither
// waits for the other's network); the first to finish stores it, the
// other finds it then, discards its own tree and holds the first's. The
// one that added it keeps it on a failure while the other is over it.
func TestTwoReceivesOfOneVersion(t *testing.T) {
	ctx := context.Background()
	const key = "debian-bookworm-amd64-minbase-00000000"
	c := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	info := BaseInfo{Key: key, Version: "20261101T000000Z", ID: newBaseID()}
	inFill, goOn := make(chan struct{}), make(chan struct{})
	type result struct {
		got  BaseInfo
		hold *VersionHold
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		got, hold, err := c.AddReceived(ctx, info, func(root string) error {
			close(inFill)
			<-goOn
			return os.WriteFile(filepath.Join(root, "marker"), []byte("slow"), 0o644)
		})
		slow <- result{got, hold, err}
	}()
	<-inFill
	fast, fastHold, err := c.AddReceived(ctx, info, func(root string) error {
		return os.WriteFile(filepath.Join(root, "marker"), []byte("fast"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	close(goOn)
	r := <-slow
	if r.err != nil || r.got.Root != fast.Root {
		t.Fatalf("the slow receive: %+v %v (the fast one stored %s)", r.got, r.err, fast.Root)
	}
	if b, _ := os.ReadFile(filepath.Join(fast.Root, "marker")); string(b) != "fast" {
		t.Errorf("the version's tree: %q", b)
	}
	// The fast one fails: the slow one is over the version, which stays.
	fastHold.Release(false)
	if _, ok := c.FindID(key, info.ID); !ok {
		t.Error("dropped while another receive holds it")
	}
	r.hold.Release(true)
	if left, _ := filepath.Glob(filepath.Join(c.Dir, ".#*")); len(left) != 0 {
		t.Errorf("left in the cache: %v", left)
	}
}

// A failed receive does not wait for a bootstrap of the base (which holds
// its lock for minutes) to remove the version it added: it leaves it, and
// prune takes it.
func TestReleaseDoesNotWaitForABootstrap(t *testing.T) {
	ctx := context.Background()
	defer func(w time.Duration) { releaseWait = w }(releaseWait)
	releaseWait = 200 * time.Millisecond
	const key = "debian-bookworm-amd64-minbase-00000000"
	c := &BaseCache{Dir: t.TempDir(), Runner: host.ExecRunner{}}
	info := BaseInfo{Key: key, Version: "20261101T000000Z", ID: newBaseID()}
	_, hold, err := c.AddReceived(ctx, info, func(string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := c.Hold(ctx, key) // a bootstrap of the base
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	hold.Release(false)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("release waited %v", d)
	}
	unlock()
	if gone, err := c.Prune(ctx, false); err != nil || len(gone) != 1 {
		t.Errorf("prune: %+v %v", gone, err)
	}
}
