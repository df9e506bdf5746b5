package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine/host"

	"github.com/sirupsen/logrus"
)

// BaseCache keeps pristine bootstrapped roots, one per distro, release,
// architecture, variant, mirror and package set, so that creating a machine
// costs a copy instead of a bootstrap.
type BaseCache struct {
	Dir    string // e.g. /var/cache/nsbox/bases
	Runner host.Runner
	// LookPath finds programs (mmdebstrap); exec.LookPath in production.
	LookPath func(string) (string, error)
	// Users names the machines whose lower layer is version of base key
	// (overlay machines): such a version is kept when the base is
	// refreshed, and refused to cache remove and prune. Nil: none.
	Users func(key, version string) []string
}

// BaseInfo describes one cached base; it is stored as base.json beside the
// base's root.
type BaseInfo struct {
	Key          string    `json:"key"`
	Distro       string    `json:"distro"`
	Release      string    `json:"release"`
	Arch         string    `json:"arch"`
	Variant      string    `json:"variant"`
	Mirror       string    `json:"mirror"`
	Packages     []string  `json:"packages"`
	Bootstrapper string    `json:"bootstrapper"`
	Created      time.Time `json:"created"`
	Size         int64     `json:"size_bytes"`
	Root         string    `json:"root"`
	// Version names this bootstrap of the base (its time); Current is
	// false for an earlier version kept for the machines over it, which
	// Machines names. Runs is true while throwaway runs are over it.
	Version string `json:"version"`
	Current bool   `json:"current"`
	// ID tells this bootstrap from every other, on every host: a version
	// sent to another host keeps it (see Identify).
	ID       string   `json:"id,omitempty"`
	Machines []string `json:"machines"`
	Runs     bool     `json:"runs"`
	// Image is set for a base flattened from a container image (create
	// --from): what it was made of. Such a base has no release.
	Image *ImageBase `json:"image,omitempty"`
}

// ImageBase is what a base made from a container image was made of: the
// image's manifest digest and platform (its key follows from them, see
// ImageKey), the source it was first pulled from, and its layers in the
// order they were applied, each a blob of the image layer cache.
type ImageBase struct {
	Digest   string       `json:"digest"`
	Platform string       `json:"platform"`
	Source   string       `json:"source"`
	Layers   []ImageLayer `json:"layers"`
}

// ImageLayer is one layer of an image base: its digest and compressed size.
type ImageLayer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// imageKeyPrefix starts the key of every base made from an image; release
// bases start with their distro's name.
const imageKeyPrefix = "image-"

// ImageKey names the base flattened from the image with manifest digest
// ("sha256:HEX") for platform (OS/ARCH[/VARIANT]): image-, 16 hex digits
// of the digest, and the platform, so two creates from one image share it.
func ImageKey(digest, platform string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > 16 {
		hex = hex[:16]
	}
	slug := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, platform)
	return imageKeyPrefix + strings.ToLower(hex) + "-" + slug
}

// IsImageKey reports whether key names a base made from an image.
func IsImageKey(key string) bool { return strings.HasPrefix(key, imageKeyPrefix) }

// InUse reports whether machines or runs are over the version.
func (b BaseInfo) InUse() bool { return len(b.Machines) > 0 || b.Runs }

// runsLock is the file that throwaway runs over the version whose tree
// is root hold shared while they run. It lies in the version's directory
// and moves with it when a refresh makes the version an earlier one.
func runsLock(root string) string { return filepath.Join(filepath.Dir(root), "runs.lck") }

// HoldForRun marks the version whose tree is root (as Get returned it) as
// in use by a throwaway run until release is called: a refresh keeps it,
// and prune and remove leave it. The caller holds the base's lock, as Get
// returned it, so that no refresh moves the version meanwhile.
func HoldForRun(root string) (release func(), err error) {
	f, err := host.HoldShared(runsLock(root))
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// versionOf names a bootstrap by its time, as base.json keeps it.
func versionOf(created time.Time) string { return created.UTC().Format("20060102T150405Z") }

// Age is how long ago the base was bootstrapped.
func (b BaseInfo) Age() time.Duration { return time.Since(b.Created) }

// debArch names the host's architecture as Debian does.
func debArch() string {
	switch runtime.GOARCH {
	case "386":
		return "i386"
	case "arm":
		return "armhf"
	case "ppc64le":
		return "ppc64el"
	}
	return runtime.GOARCH
}

// BaseKey names the base for o: readable, with a hash of everything that
// changes its contents.
func BaseKey(o Options) string {
	pkgs := o.Packages()
	sort.Strings(pkgs)
	sum := sha256.Sum256([]byte(strings.Join([]string{o.Release.Distro.Name, o.Release.Name, o.arch(), o.variant(), o.Mirror, strings.Join(pkgs, ",")}, "\x00")))
	return fmt.Sprintf("%s-%s-%s-%s-%s", o.Release.Distro.Name, o.Release.Name, o.arch(), o.variant(), hex.EncodeToString(sum[:4]))
}

func (c *BaseCache) dir(key string) string { return filepath.Join(c.Dir, key) }

// lock takes the base's lock, waiting for another nsbox that bootstraps
// or refreshes it.
func (c *BaseCache) lock(ctx context.Context, key string) (*host.FileLock, error) {
	if err := host.PrivateDir(c.Dir); err != nil {
		return nil, err
	}
	return host.LockFile(ctx, c.lockPath(key), true, true)
}

// Get returns the root of the base for o, bootstrapping it first when it
// is not cached. Concurrent callers for one base bootstrap it once: the
// others wait for the lock and then find it. The returned unlock must be
// called once the caller has copied the base.
func (c *BaseCache) Get(ctx context.Context, o Options, progress func(Stage)) (root string, info BaseInfo, unlock func(), err error) {
	key := BaseKey(o)
	l, err := c.lock(ctx, key)
	if err != nil {
		return "", info, nil, fmt.Errorf("base %s: %w", key, err)
	}
	if info, err := c.read(key); err == nil {
		// A base cached by an earlier nsbox still carries the machine id
		// of its bootstrap.
		if err := UnshareMachineID(info.Root); err != nil {
			logrus.Warnf("base %s: %v", key, err)
		}
		return info.Root, info, l.Unlock, nil
	}
	info, err = c.build(ctx, key, o, progress)
	if err != nil {
		l.Unlock()
		return "", info, nil, err
	}
	return info.Root, info, l.Unlock, nil
}

// GetBuilt returns the root of base key, made first by fill when it is not
// cached: fill gets an empty tree directory (a btrfs subvolume where the
// cache is on btrfs) and says what it made (Image; the key, time, version
// and size are set here). As for Get, concurrent callers make the base
// once, under the base's lock, and a base is published whole (renamed into
// place with its base.json) or not at all. The returned unlock must be
// called once the caller is done with the base.
func (c *BaseCache) GetBuilt(ctx context.Context, key string, fill func(ctx context.Context, root string) (BaseInfo, error)) (root string, info BaseInfo, unlock func(), err error) {
	l, err := c.lock(ctx, key)
	if err != nil {
		return "", info, nil, fmt.Errorf("base %s: %w", key, err)
	}
	if info, err := c.read(key); err == nil {
		return info.Root, info, l.Unlock, nil
	}
	info, err = c.stageBase(ctx, key, fill)
	if err != nil {
		l.Unlock()
		return "", info, nil, err
	}
	return info.Root, info, l.Unlock, nil
}

// read loads a base's description; a base without one is incomplete.
func (c *BaseCache) read(key string) (BaseInfo, error) {
	var info BaseInfo
	b, err := os.ReadFile(filepath.Join(c.dir(key), "base.json"))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, err
	}
	info.Root = filepath.Join(c.dir(key), "root")
	if fi, err := os.Stat(info.Root); err != nil || !fi.IsDir() {
		return info, fmt.Errorf("base %s has no root", key)
	}
	c.describe(&info, true)
	return info, nil
}

// describe fills what base.json does not keep.
func (c *BaseCache) describe(info *BaseInfo, current bool) {
	if info.Version == "" {
		info.Version = versionOf(info.Created)
	}
	info.Current = current
	info.Runs = info.Root != "" && host.Held(runsLock(info.Root))
	info.Machines = []string{}
	if c.Users != nil {
		if u := c.Users(info.Key, info.Version); u != nil {
			info.Machines = u
		}
	}
}

// versionsDir holds the earlier versions of base key that machines use.
func (c *BaseCache) versionsDir(key string) string { return filepath.Join(c.dir(key), "versions") }

// Versions describes the earlier versions of base key kept for machines.
func (c *BaseCache) Versions(key string) []BaseInfo {
	ents, _ := os.ReadDir(c.versionsDir(key))
	var out []BaseInfo
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(c.versionsDir(key), e.Name())
		var info BaseInfo
		b, err := os.ReadFile(filepath.Join(dir, "base.json"))
		if err != nil || json.Unmarshal(b, &info) != nil {
			continue
		}
		info.Root = filepath.Join(dir, "root")
		info.Version = e.Name()
		c.describe(&info, false)
		out = append(out, info)
	}
	return out
}

// VersionRoot is the tree of version of base key: the current base's, or
// that of an earlier version kept for machines.
func (c *BaseCache) VersionRoot(key, version string) (string, error) {
	if info, err := c.read(key); err == nil && info.Version == version {
		return info.Root, nil
	}
	root := filepath.Join(c.versionsDir(key), version, "root")
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("version %s of base %s is gone", version, key)
	}
	return root, nil
}

// VersionInfo describes version of base key: the current base's, or an
// earlier version kept for machines.
func (c *BaseCache) VersionInfo(key, version string) (BaseInfo, error) {
	if info, err := c.read(key); err == nil && info.Version == version {
		return info, nil
	}
	for _, v := range c.Versions(key) {
		if v.Version == version {
			return v, nil
		}
	}
	return BaseInfo{}, fmt.Errorf("version %s of base %s is gone", version, key)
}

// build bootstraps the base into a temporary directory and renames it into
// place. The caller holds the base's lock.
func (c *BaseCache) build(ctx context.Context, key string, o Options, progress func(Stage)) (BaseInfo, error) {
	return c.stageBase(ctx, key, func(ctx context.Context, root string) (BaseInfo, error) {
		// Recorded, so a refresh uses the same bootstrapper.
		o.Bootstrapper = chooseBootstrapper(o, c.LookPath)
		if o.KeyringDir == "" {
			o.KeyringDir = KeyringsDir(filepath.Dir(c.Dir))
		}
		if err := Bootstrap(ctx, c.Runner, o, root, progress, c.LookPath); err != nil {
			return BaseInfo{}, err
		}
		if err := UnshareMachineID(root); err != nil {
			return BaseInfo{}, err
		}
		return BaseInfo{
			Distro: o.Release.Distro.Name, Release: o.Release.Name, Arch: o.arch(), Variant: o.variant(),
			Mirror: o.Mirror, Packages: o.Packages(), Bootstrapper: o.Bootstrapper,
		}, nil
	})
}

// stageBase makes base key in a temporary directory beside it, its tree
// filled by fill, and renames it into place with its base.json. The
// caller holds the base's lock.
func (c *BaseCache) stageBase(ctx context.Context, key string, fill func(ctx context.Context, root string) (BaseInfo, error)) (BaseInfo, error) {
	c.sweep(key)
	tmp, err := os.MkdirTemp(c.Dir, ".#"+key+".")
	if err != nil {
		return BaseInfo{}, err
	}
	ok := false
	defer func() {
		if !ok {
			host.UnmountUnder(tmp)
			_ = host.RemoveTree(tmp)
		}
	}()
	root := filepath.Join(tmp, "root")
	if err := MakeTreeDir(ctx, c.Runner, root); err != nil {
		return BaseInfo{}, err
	}
	info, err := fill(ctx, root)
	if err != nil {
		return BaseInfo{}, err
	}
	info.Key, info.Created = key, time.Now().UTC()
	info.Version, info.ID = versionOf(info.Created), newBaseID()
	if info.Image != nil {
		info.ID = imageBaseID(info.Image)
	}
	info.Size, _ = host.DiskUsage(root)
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "base.json"), append(b, '\n'), 0o644); err != nil {
		return BaseInfo{}, err
	}
	if err := c.install(key, tmp); err != nil {
		return BaseInfo{}, err
	}
	ok = true
	info.Root = filepath.Join(c.dir(key), "root")
	c.describe(&info, true)
	return info, nil
}

// install makes the bootstrapped tmp base key. The base it replaces goes,
// except a version machines are over, which moves to the versions kept,
// as do the versions it kept: machines mounted over them keep working
// (the kernel holds a lower layer by its inode, not its path). The caller
// holds the base's lock.
func (c *BaseCache) install(key, tmp string) error {
	dst := c.dir(key)
	if _, err := os.Lstat(dst); err != nil {
		return os.Rename(tmp, dst)
	}
	old := filepath.Join(c.Dir, ".#old-"+key)
	_ = host.RemoveTree(old)
	if err := os.Rename(dst, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Rename(old, dst)
		return err
	}
	if err := os.Rename(filepath.Join(old, "versions"), c.versionsDir(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		logrus.Warnf("base %s: keep its earlier versions: %v", key, err)
	}
	var prev BaseInfo
	if b, err := os.ReadFile(filepath.Join(old, "base.json")); err == nil && json.Unmarshal(b, &prev) == nil {
		prev.Key = key
		prev.Root = filepath.Join(old, "root")
		c.describe(&prev, false)
		if prev.InUse() {
			keep := filepath.Join(c.versionsDir(key), prev.Version)
			if err := os.MkdirAll(c.versionsDir(key), 0o700); err != nil {
				return err
			}
			if err := os.Rename(old, keep); err != nil {
				return fmt.Errorf("keep version %s of base %s for %s: %w", prev.Version, key, usersOf(prev), err)
			}
			return nil
		}
	}
	return host.RemoveTree(old)
}

// sweep removes temporary trees of key left by a killed nsbox. The caller
// holds the base's lock, so no live bootstrap owns them.
func (c *BaseCache) sweep(key string) {
	left, _ := filepath.Glob(filepath.Join(c.Dir, ".#"+key+".*"))
	for _, d := range left {
		if strings.HasSuffix(d, ".lck") {
			continue
		}
		// A receive fills its tree without the base's lock, under a
		// lock of the tree's own.
		l, err := host.LockFile(context.Background(), stagingLock(d), true, false)
		if err != nil {
			continue
		}
		host.UnmountUnder(d)
		if err := host.RemoveTree(d); err != nil {
			logrus.Warnf("could not remove %s: %v", d, err)
		}
		l.Unlock()
	}
}

// List describes every cached base.
func (c *BaseCache) List() ([]BaseInfo, error) {
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []BaseInfo
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if info, err := c.read(e.Name()); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// Find returns the bases whose key, or distro-release, matches name.
func (c *BaseCache) Find(name string) ([]BaseInfo, error) {
	all, err := c.List()
	if err != nil {
		return nil, err
	}
	var out []BaseInfo
	for _, b := range all {
		if name == "" || b.Key == name || b.Image == nil && (b.Release == name || b.Distro+"-"+b.Release == name) ||
			b.Image != nil && (b.Image.Source == name || b.Image.Digest == name) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Refresh bootstraps base key anew and swaps it in atomically; machines
// cloned from the old one are not touched.
func (c *BaseCache) Refresh(ctx context.Context, info BaseInfo, progress func(Stage)) (BaseInfo, error) {
	l, err := c.lock(ctx, info.Key)
	if err != nil {
		return info, err
	}
	defer l.Unlock()
	if info.Image != nil {
		return info, fmt.Errorf("%w: base %s is image %s flattened, which does not change (a new image is a new base: create from it)", ErrImageBase, info.Key, info.Image.Source)
	}
	rel, err := LookupRelease(info.Release, info.Distro)
	if err != nil {
		return info, err
	}
	base := make(map[string]bool)
	for _, p := range BasePackages {
		base[p] = true
	}
	var include []string
	for _, p := range info.Packages {
		if !base[p] {
			include = append(include, p)
		}
	}
	o := Options{Release: rel, Mirror: info.Mirror, Variant: info.Variant, Arch: info.Arch, Include: include, Bootstrapper: info.Bootstrapper,
		CacheDir: DebsDir(c.Dir, rel.Distro.Name, rel.Name)}
	// The new version is bootstrapped beside the old one, which serves
	// creates and machines until the swap (install).
	return c.build(ctx, info.Key, o, progress)
}

// Remove deletes a cached base, waiting for creates that copy it.
func (c *BaseCache) Remove(ctx context.Context, key string) error {
	l, err := c.lock(ctx, key)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if users := c.users(key); len(users) > 0 && IsImageKey(key) {
		return fmt.Errorf("%w: base %s is what %s were made from (remove them first)", ErrBaseInUse, key, strings.Join(users, ", "))
	} else if len(users) > 0 {
		return fmt.Errorf("%w: base %s is the lower layer of %s (remove them first)", ErrBaseInUse, key, strings.Join(users, ", "))
	}
	if c.runs(key) {
		return fmt.Errorf("%w: base %s is the lower layer of a throwaway run (nsbox run) or of a machine being received; try again once it has ended", ErrBaseInUse, key)
	}
	return c.dropBase(key)
}

// ErrBaseInUse is returned for a base that overlay machines are over.
var ErrBaseInUse = errors.New("base in use")

// ErrImageBase is returned by Refresh for a base made from an image.
var ErrImageBase = errors.New("not a release base")

// usersOf says who is over version b, for a message.
func usersOf(b BaseInfo) string {
	users := strings.Join(b.Machines, ", ")
	if b.Runs {
		users = strings.TrimPrefix(users+", a throwaway run", ", ")
	}
	return users
}

// all describes every version of base key: the current one (when it is
// complete) and the earlier ones kept.
func (c *BaseCache) all(key string) []BaseInfo {
	var out []BaseInfo
	if info, err := c.read(key); err == nil {
		out = append(out, info)
	}
	return append(out, c.Versions(key)...)
}

// runs reports whether throwaway runs are over any version of base key.
func (c *BaseCache) runs(key string) bool {
	for _, v := range c.all(key) {
		if v.Runs {
			return true
		}
	}
	return false
}

// users are the machines over any version of base key.
func (c *BaseCache) users(key string) []string {
	var out []string
	for _, v := range c.all(key) {
		out = append(out, v.Machines...)
	}
	sort.Strings(out)
	return out
}

// Prune removes the earlier versions of every base that no machine is
// over, and the bases made from images that no machine was made from, and
// returns them; with dryRun it only says which.
func (c *BaseCache) Prune(ctx context.Context, dryRun bool) ([]BaseInfo, error) {
	var gone []BaseInfo
	for _, key := range c.keys() {
		l, err := c.lock(ctx, key)
		if err != nil {
			return gone, err
		}
		for _, v := range c.Versions(key) {
			if v.InUse() {
				continue
			}
			if !dryRun {
				if err := c.dropVersion(key, v.Version); err != nil {
					l.Unlock()
					return gone, err
				}
			}
			gone = append(gone, v)
		}
		if cur, err := c.read(key); err == nil && cur.Image != nil && !cur.InUse() {
			if !dryRun {
				if err := c.dropBase(key); err != nil {
					l.Unlock()
					return gone, err
				}
			}
			gone = append(gone, cur)
		}
		l.Unlock()
	}
	return gone, nil
}

// CopyTree copies the tree src to dst, which must not exist. A btrfs
// subvolume on the same file system as dst becomes a snapshot; otherwise
// the copy keeps owners, modes, times, extended attributes and ACLs,
// device nodes, hard links and holes, and where the file system can share
// blocks (btrfs, XFS) it is a reflink and costs next to nothing.
func CopyTree(ctx context.Context, r host.Runner, src, dst string) error {
	// btrfs gives each subvolume a file system id of its own, so whether
	// src and dst share a file system is learnt by trying: a snapshot
	// across file systems fails and the copy below does the work.
	if IsSubvolume(src) && OnBtrfs(filepath.Dir(dst)) {
		if err := snapshot(ctx, r, src, dst); err == nil {
			return nil
		}
	}
	err := r.Run(ctx, &host.Cmd{Path: "cp", Args: []string{"--archive", "--reflink=auto", "--sparse=auto", "--one-file-system", "--no-target-directory", src, dst}})
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// UnshareMachineID leaves a base without a machine id of its own: the
// bootstrap generated one into /etc/machine-id and /var/lib/dbus/machine-id,
// and every machine copied from the base would boot with it. The first
// becomes empty, the second a link to it (LinkDBusMachineID). A base that
// has no D-Bus machine id file is left as it is.
func UnshareMachineID(root string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if fi, err := r.Lstat(DBusMachineID); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if err := host.WriteInRoot(r, "etc/machine-id", ""); err != nil {
		return fmt.Errorf("empty its machine id: %w", err)
	}
	if _, _, err := LinkDBusMachineID(r); err != nil {
		return fmt.Errorf("link %s: %w", DBusMachineID, err)
	}
	return nil
}
