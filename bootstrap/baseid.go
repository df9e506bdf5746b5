package bootstrap

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nsbox/nsbox/machine/host"
)

// A base version's ID says which bootstrap it is, on every host: a random
// value given when it is made (or first asked for), kept in its base.json,
// and carried with the tree when the version is sent to another host. Two
// hosts with a version of one key and the same ID have the same tree, so a
// send of an overlay machine over it need carry only the machine's upper.
// Versions bootstrapped apart have other IDs, even of the same key and
// second. A base flattened from an image is the exception: its image's
// digest and platform make its tree, and its ID (imageBaseID), on every
// host that flattened it.

var (
	baseKeyRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,127}$`)
	baseVersionRE = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z$`)
	baseIDRE      = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// ErrBaseRef is a base key, version or ID that is not of the form nsbox
// gives them (from another host: it becomes a path here).
var ErrBaseRef = errors.New("not a base reference")

// CheckBaseRef checks a base's key, version and ID as another host sent
// them.
func CheckBaseRef(key, version, id string) error {
	switch {
	case !baseKeyRE.MatchString(key):
		return fmt.Errorf("%w: key %q", ErrBaseRef, key)
	case !baseVersionRE.MatchString(version):
		return fmt.Errorf("%w: version %q", ErrBaseRef, version)
	case !baseIDRE.MatchString(id):
		return fmt.Errorf("%w: id %q", ErrBaseRef, id)
	}
	return nil
}

// imageBaseID is the ID of a base flattened from an image: its manifest
// digest and platform make the tree, so every host that flattened that
// image has the same one, whether it pulled the image or was sent the
// base.
func imageBaseID(img *ImageBase) string {
	sum := sha256.Sum256([]byte("nsbox image base\x00" + img.Digest + "\x00" + img.Platform))
	return hex.EncodeToString(sum[:16])
}

func newBaseID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// versionDir is the directory of version of base key (its base.json and
// root): the current base's, or that of an earlier version kept.
func (c *BaseCache) versionDir(key, version string) (string, error) {
	if info, err := c.read(key); err == nil && info.Version == version {
		return c.dir(key), nil
	}
	dir := filepath.Join(c.versionsDir(key), version)
	if _, err := os.Stat(filepath.Join(dir, "base.json")); err != nil {
		return "", fmt.Errorf("version %s of base %s is gone", version, key)
	}
	return dir, nil
}

// Identify describes version of base key with its ID, giving it one first
// when it has none (made by an nsbox from before IDs). It takes the base's
// lock while it writes.
func (c *BaseCache) Identify(ctx context.Context, key, version string) (BaseInfo, error) {
	if info, err := c.VersionInfo(key, version); err == nil && info.ID != "" {
		return info, nil
	}
	l, err := c.lock(ctx, key)
	if err != nil {
		return BaseInfo{}, err
	}
	defer l.Unlock()
	info, err := c.VersionInfo(key, version)
	if err != nil || info.ID != "" {
		return info, err
	}
	dir, err := c.versionDir(key, version)
	if err != nil {
		return BaseInfo{}, err
	}
	path := filepath.Join(dir, "base.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return BaseInfo{}, err
	}
	// The file as it is, plus the ID: fields of a later nsbox stay.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return BaseInfo{}, fmt.Errorf("%s: %w", path, err)
	}
	info.ID = newBaseID()
	if info.Image != nil {
		info.ID = imageBaseID(info.Image)
	}
	raw["id"], _ = json.Marshal(info.ID)
	out, _ := json.MarshalIndent(raw, "", "  ")
	if err := host.WriteFileAtomic(path, append(out, '\n'), 0o644); err != nil {
		return BaseInfo{}, err
	}
	return info, nil
}

// FindID finds the version of base key whose ID is id.
func (c *BaseCache) FindID(key, id string) (BaseInfo, bool) {
	if id == "" {
		return BaseInfo{}, false
	}
	for _, v := range c.all(key) {
		if v.ID == id {
			return v, true
		}
	}
	return BaseInfo{}, false
}

// HasVersion reports whether base key has a version named version, of any
// ID.
func (c *BaseCache) HasVersion(key, version string) bool {
	_, err := c.versionDir(key, version)
	return err == nil
}

// Hold takes base key's lock (as a create does while it copies the base):
// no refresh moves a version and no prune removes one until unlock.
func (c *BaseCache) Hold(ctx context.Context, key string) (unlock func(), err error) {
	l, err := c.lock(ctx, key)
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
}

// ErrVersionTaken is a received version whose name this cache has for
// another bootstrap of the base.
var ErrVersionTaken = errors.New("version name taken by another bootstrap")

// VersionHold keeps a version of a base while a receive reads a machine
// over it: a shared hold of the version's runs lock (as a throwaway run
// takes), so that prune, remove and a refresh keep it, without the base's
// lock, which would keep every create, refresh and prune of the base
// waiting for the network.
type VersionHold struct {
	c            *BaseCache
	key, version string
	f            *os.File
	added        bool // the receive added the version
}

// Release lets go of the version. One that this receive added is
// removed again unless keep (a machine over it was recorded), when no
// machine and no other hold is over it by then.
func (h *VersionHold) Release(keep bool) {
	if h == nil || h.f == nil {
		return
	}
	h.f.Close()
	h.f = nil
	if !h.added || keep {
		return
	}
	// A bootstrap of the base holds its lock for minutes: a failed
	// receive does not wait for it, and leaves the version to prune.
	ctx, cancel := context.WithTimeout(context.Background(), releaseWait)
	defer cancel()
	l, err := h.c.lock(ctx, h.key)
	if err != nil {
		logrus.Warnf("base %s: version %s, which a failed receive added, is left for prune: %v", h.key, h.version, err)
		return
	}
	defer l.Unlock()
	if v, err := h.c.VersionInfo(h.key, h.version); err == nil && !v.Current && !v.InUse() {
		_ = h.c.dropVersion(h.key, h.version)
	}
}

// releaseWait is how long Release waits for the base's lock.
var releaseWait = 10 * time.Second

// holdID holds the version of base key whose ID is id, if there is one.
// The caller holds the base's lock, so that no refresh moves the version
// between the lookup and the hold.
func (c *BaseCache) holdID(key, id string) (BaseInfo, *VersionHold, bool, error) {
	v, ok := c.FindID(key, id)
	if !ok {
		return BaseInfo{}, nil, false, nil
	}
	f, err := host.HoldShared(runsLock(v.Root))
	if err != nil {
		return BaseInfo{}, nil, true, err
	}
	return v, &VersionHold{c: c, key: key, version: v.Version, f: f}, true, nil
}

// HoldID finds the version of base key whose ID is id and holds it until
// the hold's Release.
func (c *BaseCache) HoldID(ctx context.Context, key, id string) (BaseInfo, *VersionHold, error) {
	if !baseKeyRE.MatchString(key) || !baseIDRE.MatchString(id) {
		return BaseInfo{}, nil, fmt.Errorf("%w: key %q, id %q", ErrBaseRef, key, id)
	}
	l, err := c.lock(ctx, key)
	if err != nil {
		return BaseInfo{}, nil, fmt.Errorf("base %s: %w", key, err)
	}
	defer l.Unlock()
	v, h, ok, err := c.holdID(key, id)
	if err == nil && !ok {
		err = fmt.Errorf("base %s has no version of id %s", key, id)
	}
	return v, h, err
}

// stagingLock is the lock a receive holds on its staging tree dir while
// it fills it without the base's lock: sweep and prune leave the tree
// while it is held.
func stagingLock(dir string) string { return dir + ".lck" }

// AddReceived stores a version of a base that another host sent: info
// (its key, version, ID and what it was made of, as the sender described
// it) and its tree, which fill writes into an empty directory (a btrfs
// subvolume where the cache is on btrfs). It is kept as an earlier
// version of its key, never as the base of the key, even where the cache
// has none: the sender chose the key, which is what a create here would
// compute, and the tree, which this host cannot check, so the version
// serves the machines received over it alone (prune removes it after the
// last). A version of that ID already here (or stored by another receive
// while fill ran) is returned as it is, and fill's tree discarded; fill
// is not called when it was here before.
//
// fill runs without the base's lock (it reads the network), in a staging
// tree of its own lock. The version is returned held (see VersionHold):
// Release(false) removes it again when this call added it and nothing
// else came over it (a send that failed after the base arrived).
func (c *BaseCache) AddReceived(ctx context.Context, info BaseInfo, fill func(root string) error) (BaseInfo, *VersionHold, error) {
	if err := CheckBaseRef(info.Key, info.Version, info.ID); err != nil {
		return BaseInfo{}, nil, err
	}
	key := info.Key
	l, err := c.lock(ctx, key)
	if err != nil {
		return BaseInfo{}, nil, fmt.Errorf("base %s: %w", key, err)
	}
	locked := true
	unlock := func() {
		if locked {
			l.Unlock()
			locked = false
		}
	}
	defer unlock()
	if v, h, ok, err := c.holdID(key, info.ID); ok || err != nil {
		return v, h, err
	}
	if c.HasVersion(key, info.Version) {
		return BaseInfo{}, nil, fmt.Errorf("%w: base %s version %s", ErrVersionTaken, key, info.Version)
	}
	c.sweep(key)
	tmp, err := os.MkdirTemp(c.Dir, ".#"+key+".")
	if err != nil {
		return BaseInfo{}, nil, err
	}
	sl, err := host.LockFile(ctx, stagingLock(tmp), true, false)
	if err != nil {
		_ = os.Remove(tmp)
		return BaseInfo{}, nil, err
	}
	defer func() {
		host.UnmountUnder(tmp)
		_ = host.RemoveTree(tmp) // gone already when it became the version
		sl.Unlock()
	}()
	unlock()
	root := filepath.Join(tmp, "root")
	if err := MakeTreeDir(ctx, c.Runner, root); err != nil {
		return BaseInfo{}, nil, err
	}
	if err := fill(root); err != nil {
		return BaseInfo{}, nil, err
	}
	rec := info
	rec.Root, rec.Current, rec.Machines, rec.Runs = "", false, nil, false
	rec.Size, _ = host.DiskUsage(root)
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "base.json"), append(b, '\n'), 0o644); err != nil {
		return BaseInfo{}, nil, err
	}
	if l, err = c.lock(ctx, key); err != nil {
		return BaseInfo{}, nil, fmt.Errorf("base %s: %w", key, err)
	}
	locked = true
	// Another receive may have stored it meanwhile.
	if v, h, ok, err := c.holdID(key, info.ID); ok || err != nil {
		return v, h, err
	}
	if c.HasVersion(key, info.Version) {
		return BaseInfo{}, nil, fmt.Errorf("%w: base %s version %s", ErrVersionTaken, key, info.Version)
	}
	if err := os.MkdirAll(c.versionsDir(key), 0o700); err != nil {
		return BaseInfo{}, nil, err
	}
	if err := os.Rename(tmp, filepath.Join(c.versionsDir(key), info.Version)); err != nil {
		return BaseInfo{}, nil, err
	}
	v, h, ok, err := c.holdID(key, info.ID)
	if err == nil && !ok {
		err = fmt.Errorf("version %s of base %s is gone", info.Version, key)
	}
	if err != nil {
		_ = c.dropVersion(key, info.Version)
		return BaseInfo{}, nil, err
	}
	h.added = true
	return v, h, nil
}

// keys are the keys of the bases this cache has: the current base, or
// only versions kept for machines (those received from other hosts).
func (c *BaseCache) keys() []string {
	ents, _ := os.ReadDir(c.Dir)
	var out []string
	for _, e := range ents {
		if e.IsDir() && baseKeyRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// KeptOnly describes the versions kept of the keys that have no current
// base here (versions received from other hosts, for the machines over
// them), which List leaves out.
func (c *BaseCache) KeptOnly() []BaseInfo {
	var out []BaseInfo
	for _, key := range c.keys() {
		if _, err := c.read(key); err == nil {
			continue
		}
		out = append(out, c.Versions(key)...)
	}
	return out
}
