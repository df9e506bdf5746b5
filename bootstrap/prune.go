package bootstrap

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// Found is told each leftover a prune finds: its kind ("staging", "base"
// or "packages"), its path, the bytes it holds, and how to remove it.
// Found calls remove itself, or not for a dry run, while the caller still
// holds the lock that keeps the leftover unused.
type Found func(kind, path string, size int64, remove func() error)

// Leftovers finds what the cache keeps that nothing needs, and tells
// found of each: trees of bootstraps and refreshes that were killed, the
// earlier versions of bases that no machine or run is over, and cached
// packages no current base has installed. What a bootstrap, refresh or
// prune holds (the base's lock, the package cache's lock) is left.
func (c *BaseCache) Leftovers(ctx context.Context, found Found) {
	c.stagingLeftovers(found)
	for _, key := range c.keys() {
		l, err := host.LockFile(ctx, c.lockPath(key), true, false)
		if err != nil {
			continue // a bootstrap or refresh of it runs
		}
		for _, v := range c.Versions(key) {
			if v.InUse() {
				continue
			}
			dir := filepath.Dir(v.Root)
			size, _ := host.DiskUsage(dir)
			found("base", dir, size, func() error { return c.dropVersion(key, v.Version) })
		}
		// An image base no machine was made from: its image is one pull
		// away, its layers in the layer cache while kept.
		if b, err := c.read(key); err == nil && b.Image != nil {
			if !b.InUse() {
				dir := c.dir(b.Key)
				size, _ := host.DiskUsage(dir)
				found("base", dir, size, func() error { return c.dropBase(b.Key) })
			}
		}
		l.Unlock()
	}
	bases, _ := c.List()
	c.packageLeftovers(ctx, bases, found)
}

// lockPath is the file a base's lock is taken on.
func (c *BaseCache) lockPath(key string) string { return filepath.Join(c.Dir, ".#"+key+".lck") }

// buildTemp matches the trees bootstraps make in the cache: os.MkdirTemp's
// ".#KEY." and digits, as build makes them and dropVersion moves an
// earlier version to. oldBase matches where a refresh moves the base it
// replaces.
var (
	buildTemp = regexp.MustCompile(`^\.#([a-z0-9][a-z0-9-]*)\.[0-9]+$`)
	oldBase   = regexp.MustCompile(`^\.#old-([a-z0-9][a-z0-9-]*)$`)
)

// stagingLeftovers finds the trees of bootstraps and refreshes that were
// killed: those whose base's lock nobody holds.
func (c *BaseCache) stagingLeftovers(found Found) {
	ents, _ := os.ReadDir(c.Dir)
	for _, e := range ents {
		m := oldBase.FindStringSubmatch(e.Name())
		if m == nil {
			m = buildTemp.FindStringSubmatch(e.Name())
		}
		if m == nil || !e.IsDir() {
			continue
		}
		l, err := host.LockFile(context.Background(), c.lockPath(m[1]), true, false)
		if err != nil {
			continue
		}
		dir := filepath.Join(c.Dir, e.Name())
		// A receive's tree, filled without the base's lock, has its own.
		sl, err := host.LockFile(context.Background(), stagingLock(dir), true, false)
		if err != nil {
			l.Unlock()
			continue
		}
		size, _ := host.DiskUsage(dir)
		found("staging", dir, size, func() error {
			host.UnmountUnder(dir)
			return host.RemoveTree(dir)
		})
		sl.Unlock()
		l.Unlock()
	}
}

// dropVersion removes earlier version of base key. It is first renamed
// out of the versions kept, to a name the next bootstrap of the base (or
// prune) sweeps, so a removal cut short never leaves a half version that
// looks whole. The caller holds the base's lock.
func (c *BaseCache) dropVersion(key, version string) error {
	dir := filepath.Join(c.versionsDir(key), version)
	trash := filepath.Join(c.Dir, ".#"+key+"."+digits(version))
	if err := host.RemoveTree(trash); err != nil {
		return err
	}
	if err := os.Rename(dir, trash); err != nil {
		return err
	}
	if err := host.RemoveTree(trash); err != nil {
		return err
	}
	_ = os.Remove(c.versionsDir(key)) // when it was the last
	_ = os.Remove(c.dir(key))         // when it had no current base either
	return nil
}

// dropBase removes base key whole, renamed first to a name the next make
// of the base (or prune) sweeps, as dropVersion does. The caller holds the
// base's lock.
func (c *BaseCache) dropBase(key string) error {
	trash := filepath.Join(c.Dir, ".#"+key+".0")
	if err := host.RemoveTree(trash); err != nil {
		return err
	}
	if err := os.Rename(c.dir(key), trash); err != nil {
		return err
	}
	return host.RemoveTree(trash)
}

// digits keeps the digits of s ("0" when it has none).
func digits(s string) string {
	out := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
	if out == "" {
		return "0"
	}
	return out
}

// DebsDir is the package cache of the bootstraps of distro's release, as
// debootstrap --cache-dir fills it, beside the bases in basesDir.
func DebsDir(basesDir, distro, release string) string {
	return filepath.Join(filepath.Dir(basesDir), "debs", distro+"-"+release)
}

// debsLock is the lock bootstraps hold shared on the package cache dir
// while they fill it, and prune exclusive while it empties it.
func debsLock(dir string) string {
	return filepath.Join(filepath.Dir(dir), ".#"+filepath.Base(dir)+".lck")
}

// releaseDir matches the package cache directories DebsDir names.
var releaseDir = regexp.MustCompile(`^[a-z][a-z0-9]*-[a-z][a-z0-9]*$`)

// debFile matches the packages debootstrap keeps: NAME_VERSION_ARCH.deb,
// the epoch's colon written %3a.
var debFile = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*_[A-Za-z0-9.+~%-]+_[a-z0-9-]+\.deb$`)

// packageLeftovers finds the cached packages (.deb files of debootstrap's
// naming, nothing else) that no current base of their release has
// installed, in that exact version and architecture: superseded versions,
// packages only a removed base or a --no-cache create needed, and those
// of releases that have no base at all. A release whose bases' package
// lists cannot be read is left whole; so is the cache while a bootstrap
// fills it.
func (c *BaseCache) packageLeftovers(ctx context.Context, bases []BaseInfo, found Found) {
	debs := filepath.Join(filepath.Dir(c.Dir), "debs")
	ents, _ := os.ReadDir(debs)
	for _, e := range ents {
		if !e.IsDir() || !releaseDir.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(debs, e.Name())
		installed := map[string]bool{}
		readable := true
		for _, b := range bases {
			if b.Distro+"-"+b.Release != e.Name() {
				continue
			}
			if err := installedDebs(b.Root, installed); err != nil {
				readable = false
			}
		}
		if !readable {
			continue
		}
		l, err := host.LockFile(ctx, debsLock(dir), true, false)
		if err != nil {
			continue // a bootstrap fills it
		}
		// Files are removed relative to the directory as opened, without
		// following a link: a directory swapped for one meanwhile leads
		// nowhere else.
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			l.Unlock()
			continue
		}
		d := os.NewFile(uintptr(fd), dir)
		names, _ := d.Readdirnames(-1)
		sort.Strings(names)
		for _, name := range names {
			var st unix.Stat_t
			if !debFile.MatchString(name) || installed[name] ||
				unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue
			}
			found("packages", filepath.Join(dir, name), st.Blocks*512, func() error {
				if err := unix.Unlinkat(fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
					return &os.PathError{Op: "remove", Path: filepath.Join(dir, name), Err: err}
				}
				return nil
			})
		}
		d.Close()
		_ = unix.Rmdir(dir) // when nothing is left in it
		l.Unlock()
	}
}

// installedDebs adds the packages installed in the tree root to set, as
// the names debootstrap gives their .deb files in its cache.
func installedDebs(root string, set map[string]bool) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := r.Open("var/lib/dpkg/status")
	if err != nil {
		return err
	}
	defer f.Close()
	var pkg, version, arch string
	add := func() {
		if pkg != "" && version != "" && arch != "" {
			set[pkg+"_"+strings.Replace(version, ":", "%3a", 1)+"_"+arch+".deb"] = true
		}
		pkg, version, arch = "", "", ""
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			add()
		case strings.HasPrefix(line, "Package: "):
			pkg = strings.TrimSpace(line[len("Package: "):])
		case strings.HasPrefix(line, "Version: "):
			version = strings.TrimSpace(line[len("Version: "):])
		case strings.HasPrefix(line, "Architecture: "):
			arch = strings.TrimSpace(line[len("Architecture: "):])
		}
	}
	add()
	return sc.Err()
}
