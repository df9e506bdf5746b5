package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/oci"
	"github.com/sirupsen/logrus"
)

// DefaultImageCap is what an image's layers may write at most, unless
// create --max-size says otherwise.
const DefaultImageCap = 64 << 30

// IsImageSource reports whether create --from names a container image.
func IsImageSource(s string) bool { return oci.IsSource(s) }

// ImageRecord is what nsbox keeps of the image a machine was made from
// (StateDir/image/NAME.json): its source, manifest digest, platform,
// layers and the configuration that says how to run it.
type ImageRecord = oci.Image

// imagePath is where nsbox keeps the image record of machine name.
func (m *Manager) imagePath(name string) string {
	return filepath.Join(m.StateDir, "image", name+".json")
}

// ImageOf returns the record of the image machine name was made from, or
// nil for a machine made otherwise.
func (m *Manager) ImageOf(name string) *ImageRecord {
	b, err := os.ReadFile(m.imagePath(name))
	if err != nil {
		return nil
	}
	var rec ImageRecord
	if json.Unmarshal(b, &rec) != nil {
		return nil
	}
	return &rec
}

// ImageCache is the cache of image layers, shared by all images.
func (m *Manager) ImageCache() *oci.Cache {
	return &oci.Cache{Dir: filepath.Join(m.CacheDir, "oci")}
}

// createFromImage makes machine name from the container image o.From:
// its layers pulled into the layer cache (those not there yet), then
// flattened into a base of the base cache keyed by the image's manifest
// digest and platform (once: machines from one image share it, see
// imagebase.go), which the machine is made over as a machine of a release
// is: an overlay, a btrfs snapshot or a copy. With --no-cache the layers
// are applied straight into the machine's tree. Each member is checked as
// an import checks it and against what the layers before made
// (image.Layers), within the free space and o.MaxImageBytes. The image's
// configuration is recorded beside the machine.
func (m *Manager) createFromImage(ctx context.Context, name string, o CreateOptions) error {
	src, err := oci.ParseSource(o.From)
	if err != nil {
		return fmt.Errorf("%w: --from %v", ErrInvalidOption, err)
	}
	platform, err := oci.ParsePlatform(o.Platform, o.Arch)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidOption, err)
	}
	if err := m.checkImageStorage(o); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	if err := m.ensureStore(); err != nil {
		return err
	}
	if err := m.taken(name); err != nil {
		return err
	}
	cache := m.ImageCache()
	// Held shared from the pull until the machine's image record names
	// its layers: prune, which takes it exclusive without waiting, never
	// removes a layer a create is about to apply.
	if err := os.MkdirAll(cache.Dir, 0o700); err != nil {
		return err
	}
	cacheLock, err := host.LockFile(ctx, filepath.Join(cache.Dir, ".lck"), false, true)
	if err != nil {
		return err
	}
	defer cacheLock.Unlock()
	img, err := cache.Pull(ctx, src, oci.Options{Platform: platform, Progress: func(p oci.Progress) {
		if o.Progress == nil {
			return
		}
		st := bootstrap.Stage{Phase: fmt.Sprintf("layer %d/%d %s", p.Layer, p.Layers, shortDigest(p.Digest))}
		switch {
		case p.Cached:
			st.Package = "cached"
		case p.Finished:
			st.Package = fmt.Sprintf("%s fetched", image.FormatSize(p.Size))
		default:
			st.Package = fmt.Sprintf("%s of %s", image.FormatSize(p.Done), image.FormatSize(p.Size))
		}
		st.Line = st.Phase + ": " + st.Package
		o.Progress(st)
	}})
	if err != nil {
		return err
	}
	cached := 0
	for _, l := range img.Layers {
		if l.Cached {
			cached++
		}
	}
	logrus.Infof("%s: %d layers, %s fetched, %d were cached", o.From, len(img.Layers), image.FormatSize(img.Downloaded), cached)
	m.touchLayers(img)
	flatten := func(tree, where, label string) (*image.Layers, error) {
		return m.flattenImage(ctx, img, cache, tree, where, label, o)
	}
	var layers *image.Layers
	if o.NoCache {
		err = m.newTree(ctx, name, func(tmp string) error {
			layers, err = flatten(tmp, m.Store(), m.RootDir)
			return err
		})
	} else {
		layers, err = m.createOnImageBase(ctx, name, img, o, flatten)
	}
	if err != nil {
		return err
	}
	if err := m.writeImageRecord(name, img); err != nil {
		logrus.Warnf("%s: remember its image: %v", name, err)
	}
	if layers != nil && (layers.Checker.Devices > 0 || layers.Checker.Xattrs > 0) {
		c := layers.Checker
		logrus.Warnf("create %s: left out %d device nodes and %d trusted.* extended attributes of %s (a machine gets its own /dev and cannot use them)", name, c.Devices, c.Xattrs, o.From)
	}
	if _, ok := m.readOSReleaseOf(name, m.Tree(name), m.storageOf(name)); !ok {
		logrus.Warnf("%s has no os-release: it will not boot as a system (application images are for a later nsbox)", o.From)
	}
	return nil
}

// flattenImage applies img's layers in order into tree, which does not
// exist yet, within the free space of where (label names it in messages)
// and o.MaxImageBytes; it returns what applied them, whose checker counts
// what was left out.
func (m *Manager) flattenImage(ctx context.Context, img *oci.Image, cache *oci.Cache, tree, where, label string, o CreateOptions) (*image.Layers, error) {
	space, err := image.FreeSpace(where, label)
	if err != nil {
		return nil, err
	}
	maxBytes := o.MaxImageBytes
	if maxBytes <= 0 {
		maxBytes = DefaultImageCap
	}
	layers := &image.Layers{Runner: m.Runner, Checker: image.ArchiveChecker{Space: &space, Cap: maxBytes}}
	// 0755 whatever the umask, as a machine's root is. A base's tree
	// exists already (a btrfs subvolume, where the cache is on btrfs).
	if err := os.Mkdir(tree, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := os.Chmod(tree, 0o755); err != nil {
		return nil, err
	}
	if err := image.NoCasefold(tree); err != nil {
		return nil, err
	}
	layers.Dir = tree
	for i, l := range img.Layers {
		if o.Progress != nil {
			ph := fmt.Sprintf("applying layer %d/%d", i+1, len(img.Layers))
			o.Progress(bootstrap.Stage{Phase: ph, Line: ph})
		}
		if err := m.applyLayer(ctx, cache, layers, l); err != nil {
			return nil, fmt.Errorf("%s: layer %d of %d (%s): %w", o.From, i+1, len(img.Layers), l.Digest, err)
		}
	}
	// The tree's root is root's, whatever a layer said (see Import).
	if err := os.Lchown(tree, 0, 0); err != nil {
		return nil, err
	}
	return layers, ensureEtc(tree)
}

// applyLayer applies one cached layer; a cached blob that is not what
// its digest says is removed, so the next create fetches it anew.
func (m *Manager) applyLayer(ctx context.Context, cache *oci.Cache, layers *image.Layers, l oci.Layer) error {
	f, err := cache.Open(l.Digest)
	if err != nil {
		return err
	}
	defer f.Close()
	err = layers.Apply(ctx, f, l.Digest)
	if errors.Is(err, image.ErrDigest) {
		if p, perr := cache.Blob(l.Digest); perr == nil {
			_ = os.Remove(p)
		}
		return fmt.Errorf("%w (the cached copy was damaged and is removed: create again to fetch it anew)", err)
	}
	return err
}

// ensureEtc makes /etc in a tree that has none (an image of a single
// program), where the hostname and machine id go.
func ensureEtc(tree string) error {
	r, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.Mkdir("etc", 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// writeImageRecord keeps img as the record of machine name.
func (m *Manager) writeImageRecord(name string, img *oci.Image) error {
	if err := os.MkdirAll(filepath.Dir(m.imagePath(name)), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return err
	}
	return host.WriteFileAtomic(m.imagePath(name), append(b, '\n'), 0o600)
}

// shortDigest is a digest's first 12 hex digits, as docker shows them.
func shortDigest(d string) string {
	if len(d) > 7+12 {
		return d[7 : 7+12]
	}
	return d
}
