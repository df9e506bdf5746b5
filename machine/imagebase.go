package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/oci"
	"github.com/nsbox/nsbox/machine/storage"
)

// A container image becomes a base of the base cache, as a release does:
// its layers flattened once into CACHE/bases/image-DIGEST-PLATFORM/root,
// under the base's lock and published whole (bootstrap.BaseCache.GetBuilt),
// with the image's digest, platform, source and layers in its base.json.
// Every machine from that image is then made over it without a pull of
// its layers or an application of them: an overlay (the default), a
// btrfs snapshot where the root and cache directories are on btrfs, or a
// copy. The base is kept while a machine of any kind records it as its
// base (so diff has it), and goes with prune once none does.

// checkImageStorage refuses, before any pull, what o asks of the storage
// that a machine from an image cannot have.
func (m *Manager) checkImageStorage(o CreateOptions) error {
	switch {
	case o.NoCache && o.Storage != "" && o.Storage != storage.Copy:
		return fmt.Errorf("%w: --storage %s is made over a cached base: leave out --no-cache", ErrInvalidOption, o.Storage)
	case o.Storage == storage.Btrfs && (!bootstrap.OnBtrfs(m.RootDir) || !bootstrap.OnBtrfs(m.CacheDir)):
		return fmt.Errorf("%w: --storage btrfs needs the root directory (%s) and the cache (%s) on btrfs", ErrInvalidOption, m.RootDir, m.CacheDir)
	}
	return nil
}

// createOnImageBase makes machine name over the base of image img, which
// flatten makes (into its tree, within the space of the directory where)
// when it is not cached yet, choosing the storage as Create chooses it for
// a release. It returns what flattened the image, or nil when the base was
// cached.
func (m *Manager) createOnImageBase(ctx context.Context, name string, img *oci.Image, o CreateOptions, flatten func(tree, where, label string) (*image.Layers, error)) (*image.Layers, error) {
	bases := m.Bases()
	key := bootstrap.ImageKey(img.Digest, img.Platform)
	var layers *image.Layers
	get := func() (string, bootstrap.BaseInfo, func(), error) {
		if err := host.PrivateDir(bases.Dir); err != nil {
			return "", bootstrap.BaseInfo{}, nil, err
		}
		root, info, unlock, err := bases.GetBuilt(ctx, key, func(ctx context.Context, root string) (bootstrap.BaseInfo, error) {
			var err error
			if layers, err = flatten(root, bases.Dir, bases.Dir); err != nil {
				return bootstrap.BaseInfo{}, err
			}
			return bootstrap.BaseInfo{Arch: platformArch(img.Platform), Image: imageBase(img)}, nil
		})
		if err == nil && layers == nil {
			logrus.Infof("%s: over the cached base %s, nothing applied", o.From, key)
		}
		return root, info, unlock, err
	}
	switch o.Storage {
	case "":
		// As for a release: a snapshot where the base and the machine
		// share btrfs, an overlay elsewhere, a copy where overlayfs
		// cannot serve.
		if bootstrap.OnBtrfs(m.RootDir) && bootstrap.OnBtrfs(m.CacheDir) {
			break
		}
		err := m.overlayOnBase(ctx, name, get)
		if !errors.Is(err, storage.ErrUnsupported) {
			return layers, err
		}
		logrus.Warnf("%v: made %s a copy of its base instead (--storage copy does so without trying)", err, name)
	case storage.Overlay:
		return layers, m.overlayOnBase(ctx, name, get)
	}
	// A copy, or a snapshot of a subvolume base (CopyTree). The base's
	// lock is held until the machine records it, so that no prune takes
	// a base a machine is being made from.
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	var from bootstrap.BaseInfo
	err := m.newTree(ctx, name, func(tmp string) error {
		root, info, un, err := get()
		if err != nil {
			return err
		}
		unlock, from = un, info
		if o.Progress != nil {
			o.Progress(bootstrap.Stage{Phase: "copying base " + info.Key})
		}
		return bootstrap.CopyTree(ctx, m.Runner, root, tmp)
	})
	if err == nil {
		m.recordBase(name, storage.Record{Base: from.Key, Version: from.Version, Bases: bases.Dir})
	}
	return layers, err
}

// overlayOnBase makes machine name an overlay over the base get returns,
// holding the base's lock until the machine's storage record names it.
func (m *Manager) overlayOnBase(ctx context.Context, name string, get func() (string, bootstrap.BaseInfo, func(), error)) error {
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	return m.newOverlay(ctx, name, func() (storage.Record, error) {
		root, info, un, err := get()
		if err != nil {
			return storage.Record{}, err
		}
		unlock = un
		return storage.Record{Base: info.Key, Version: info.Version, Lower: root, Bases: m.Bases().Dir}, nil
	}, nil)
}

// imageBase is what an image base keeps of img.
func imageBase(img *oci.Image) *bootstrap.ImageBase {
	ib := &bootstrap.ImageBase{Digest: img.Digest, Platform: img.Platform, Source: img.Source, Layers: []bootstrap.ImageLayer{}}
	for _, l := range img.Layers {
		ib.Layers = append(ib.Layers, bootstrap.ImageLayer{Digest: l.Digest, Size: l.Size})
	}
	return ib
}

// platformArch is the architecture of an OS/ARCH[/VARIANT] platform.
func platformArch(p string) string {
	parts := strings.Split(p, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

// touchLayers marks img's layers used now (their blobs' modification
// time), which cache list shows as LAST USED.
func (m *Manager) touchLayers(img *oci.Image) {
	now := time.Now()
	for _, l := range img.Layers {
		if p, err := m.ImageCache().Blob(l.Digest); err == nil {
			_ = os.Chtimes(p, now, now)
		}
	}
}

// BaseImage is the image a base version was flattened from: what push
// needs to send a machine over it as the base's layers and its own.
type BaseImage struct {
	// Key and Version name the base version.
	Key     string `json:"key"`
	Version string `json:"version"`
	// Digest and Platform are the image's manifest digest and platform,
	// Source where it was first pulled from.
	Digest   string `json:"digest"`
	Platform string `json:"platform"`
	Source   string `json:"source"`
	// Layers are the image's layers in order, bottom first.
	Layers []BaseLayer `json:"layers"`
}

// BaseLayer is one layer of a base image.
type BaseLayer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	// Blob is the layer as it was pulled (compressed, as its digest
	// says), in the image layer cache.
	Blob string `json:"blob"`
}

// ErrNotImageBase is returned by BaseLayers for a machine whose base was
// not made from an image (a release's), or that has no base.
var ErrNotImageBase = errors.New("not over an image base")

// BaseLayers returns the layers of the base version machine name was made
// from, when that base was flattened from a container image: the blobs are
// in the layer cache (its image record and the base both name them, so
// prune keeps them). The base version is found in the cache the machine
// recorded, whatever this Manager's --cache-dir.
func (m *Manager) BaseLayers(name string) (BaseImage, error) {
	rec := m.storageOf(name)
	if rec.Base == "" || rec.Version == "" {
		return BaseImage{}, fmt.Errorf("%w: %s was not made from a cached base", ErrNotImageBase, name)
	}
	bc := m.Bases()
	if rec.Bases != "" {
		bc = m.basesIn(rec.Bases)
	}
	return m.VersionLayers(bc, rec.Base, rec.Version)
}

// VersionLayers returns the layers of version of base key in bc, as
// BaseLayers does for a machine's base.
func (m *Manager) VersionLayers(bc *bootstrap.BaseCache, key, version string) (BaseImage, error) {
	info, err := bc.VersionInfo(key, version)
	if err != nil {
		return BaseImage{}, err
	}
	if info.Image == nil {
		return BaseImage{}, fmt.Errorf("%w: base %s is release %s %s", ErrNotImageBase, key, info.Distro, info.Release)
	}
	out := BaseImage{Key: key, Version: version, Digest: info.Image.Digest, Platform: info.Image.Platform, Source: info.Image.Source, Layers: []BaseLayer{}}
	for _, l := range info.Image.Layers {
		p, err := m.ImageCache().Blob(l.Digest)
		if err != nil {
			return out, err
		}
		out.Layers = append(out.Layers, BaseLayer{Digest: l.Digest, Size: l.Size, Blob: p})
	}
	return out, nil
}

// LayerInfo is one cached image layer, as cache list --layers shows it.
// The JSON shape is part of nsbox's interface (docs/json.md).
type LayerInfo struct {
	Digest   string    `json:"digest"`
	Size     int64     `json:"size_bytes"`
	LastUsed time.Time `json:"last_used"`
	// Images are the images (their sources) whose machines or bases
	// name the layer; Machines and Bases those machines and image bases.
	Images   []string `json:"images"`
	Machines []string `json:"machines"`
	Bases    []string `json:"bases"`
}

// InUse reports whether a machine's image or an image base names it.
func (l LayerInfo) InUse() bool { return len(l.Machines) > 0 || len(l.Bases) > 0 }

// layerUsers says, by a layer's digest, who names it: machines' image
// records and image bases. ok is false when a record cannot be read (then
// nothing may be taken as unused).
func (m *Manager) layerUsers(skipBase func(dir string) bool) (users map[string]*LayerInfo, ok bool) {
	users = map[string]*LayerInfo{}
	at := func(d string) *LayerInfo {
		if users[d] == nil {
			users[d] = &LayerInfo{Digest: d, Images: []string{}, Machines: []string{}, Bases: []string{}}
		}
		return users[d]
	}
	ok = true
	for _, f := range listDir(filepath.Dir(m.imagePath("x"))) {
		name, isJSON := strings.CutSuffix(f, ".json")
		if !isJSON || strings.HasPrefix(f, ".") {
			continue
		}
		img := m.ImageOf(name)
		if img == nil {
			ok = false
			continue
		}
		for _, l := range img.Layers {
			u := at(l.Digest)
			u.Machines = appendNew(u.Machines, name)
			u.Images = appendNew(u.Images, img.Source)
		}
	}
	bases, err := m.Bases().List()
	if err != nil {
		ok = false
	}
	for _, b := range bases {
		if b.Image == nil || skipBase != nil && skipBase(filepath.Dir(b.Root)) {
			continue
		}
		for _, l := range b.Image.Layers {
			u := at(l.Digest)
			u.Bases = appendNew(u.Bases, b.Key)
			u.Images = appendNew(u.Images, b.Image.Source)
		}
	}
	for _, u := range users {
		sort.Strings(u.Images)
		sort.Strings(u.Machines)
		sort.Strings(u.Bases)
	}
	return users, ok
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// ImageLayers describes every layer in the image layer cache, largest
// first.
func (m *Manager) ImageLayers() ([]LayerInfo, error) {
	dir := filepath.Join(m.ImageCache().Dir, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return []LayerInfo{}, nil
	}
	if err != nil {
		return nil, err
	}
	users, _ := m.layerUsers(nil)
	out := []LayerInfo{}
	for _, e := range ents {
		if !isSHA256Hex(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		d := "sha256:" + e.Name()
		li := LayerInfo{Digest: d, Images: []string{}, Machines: []string{}, Bases: []string{}}
		if u := users[d]; u != nil {
			li = *u
		}
		li.Size, li.LastUsed = fi.Size(), fi.ModTime().UTC()
		out = append(out, li)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Size != out[j].Size {
			return out[i].Size > out[j].Size
		}
		return out[i].Digest < out[j].Digest
	})
	return out, nil
}

// ErrLayerInUse is returned by RemoveLayer for a layer a machine's image
// or an image base names.
var ErrLayerInUse = errors.New("layer in use")

// RemoveLayer removes a cached image layer (sha256:HEX) that nothing
// names, under the image cache's lock, taken without waiting: a create
// from an image holds it while it pulls and applies.
func (m *Manager) RemoveLayer(ctx context.Context, digest string) error {
	if err := m.requireRoot(); err != nil {
		return err
	}
	c := m.ImageCache()
	p, err := c.Blob(digest)
	if err != nil {
		return fmt.Errorf("%w: %q is not a layer digest (sha256:HEX, see: nsbox cache list --layers)", ErrInvalidOption, digest)
	}
	if _, err := os.Lstat(p); err != nil {
		return fmt.Errorf("no cached layer %s (see: nsbox cache list --layers)", digest)
	}
	l, err := host.LockFile(ctx, c.LockPath(), true, false)
	if errors.Is(err, host.ErrLocked) {
		return fmt.Errorf("%w: a create from an image is using the layer cache; try again once it has ended", ErrBusy)
	}
	if err != nil {
		return err
	}
	defer l.Unlock()
	users, ok := m.layerUsers(nil)
	if u := users[digest]; u != nil && u.InUse() {
		var who []string
		if len(u.Machines) > 0 {
			who = append(who, "machines "+strings.Join(u.Machines, ", "))
		}
		if len(u.Bases) > 0 {
			who = append(who, "image bases "+strings.Join(u.Bases, ", "))
		}
		return fmt.Errorf("%w: the images of %s name it (remove them first)", ErrLayerInUse, strings.Join(who, " and "))
	}
	if !ok {
		return fmt.Errorf("%w: a machine's image record cannot be read, so %s may be in use", ErrLayerInUse, digest)
	}
	return removeFile(p)
}

// machineBaseUsers are the machines of any kind (overlay, copy, btrfs)
// whose storage record names version of base key in the cache bases: an
// image base is kept for them all, as diff compares with it.
func (m *Manager) machineBaseUsers(bases, key, version string) []string {
	var names []string
	files, _ := filepath.Glob(filepath.Join(m.StateDir, "storage", "*.json"))
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		rec := m.storageOf(name)
		if _, err := os.Lstat(rec.Tree); err != nil {
			continue
		}
		if rec.Base == key && rec.Version == version && (rec.Bases == "" || filepath.Clean(rec.Bases) == filepath.Clean(bases)) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
