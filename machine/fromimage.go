package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

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

// shareImageCache takes the image cache's lock shared, waiting for a
// prune or cache remove that holds it: a create from an image and an
// export hold it while they use cached blobs, which prune (exclusive,
// without waiting) then leaves alone.
func (m *Manager) shareImageCache(ctx context.Context) (*oci.Cache, *host.FileLock, error) {
	cache := m.ImageCache()
	if err := os.MkdirAll(cache.Dir, 0o700); err != nil {
		return nil, nil, err
	}
	l, err := host.LockFile(ctx, cache.LockPath(), false, true)
	if err != nil {
		return nil, nil, err
	}
	return cache, l, nil
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
	if src.Kind != oci.Registry {
		// Its record names the directory or file, whatever the working
		// directory of a later create that compares it.
		src.Text = src.Canonical()
	}
	platform, err := oci.ParsePlatform(o.Platform, o.Arch)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidOption, err)
	}
	if err := m.checkImageStorage(o); err != nil {
		return err
	}
	if o.Cmd != nil {
		// Before the pull: a command that could not be written is said now.
		if err := (&App{Argv: o.Cmd}).validate(); err != nil {
			return err
		}
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
	// Held from the pull until the machine's image record names its
	// layers: prune never removes a layer a create is about to apply.
	cache, cacheLock, err := m.shareImageCache(ctx)
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
	// How it runs follows from its tree (an init or none), read as the
	// machine sees it.
	var app *App
	err = m.withTree(ctx, name, func() error {
		app, err = imageApp(name, m.Dir(name), img, o)
		return err
	})
	if err == nil {
		err = m.writeImageSettings(name, img, app)
	}
	if err != nil {
		if rerr := m.Remove(context.WithoutCancel(ctx), name, false); rerr != nil {
			logrus.Warn(rerr)
		}
		return err
	}
	if layers != nil && (layers.Checker.Devices > 0 || layers.Checker.Xattrs > 0) {
		c := layers.Checker
		logrus.Warnf("create %s: left out %d device nodes and %d trusted.* extended attributes of %s (a machine gets its own /dev and cannot use them)", name, c.Devices, c.Xattrs, o.From)
	}
	return nil
}

// imageApp decides how a machine made from img into tree runs: as an app
// machine (the App returned) when the image has no init or o.Cmd asks
// for one, booting its init otherwise (nil). An app's user given as
// NAME:GROUP or UID:GID becomes the name nspawn takes.
func imageApp(name, tree string, img *oci.Image, o CreateOptions) (*App, error) {
	init := hasInit(tree)
	switch {
	case o.Init && !init:
		return nil, fmt.Errorf("%w: %s has no init (systemd) to boot: leave out --boot, and the machine runs the image's command", ErrInvalidOption, o.From)
	case o.Init, o.Cmd == nil && init:
		return nil, nil
	}
	app := appFromImage(img, o.Cmd)
	if err := app.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", o.From, err)
	}
	if len(app.Argv) == 0 {
		logrus.Warnf("%s has neither an init nor a command: give %s one when you boot it (nsbox boot %s --cmd CMD)", o.From, name, name)
	}
	r, err := os.OpenRoot(tree)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if strings.Contains(app.User, ":") {
		u, err := resolveAppUser(r, app.User)
		if err != nil {
			logrus.Warnf("%s: %v", o.From, err)
		} else {
			app.User = u
		}
	}
	if app.User == "root" {
		app.User = ""
	}
	return app, nil
}

// writeImageSettings writes the first settings file of machine name,
// made from img: the image's environment as Environment= lines (the
// user's to edit, read by nspawn for an app and an init alike) and, for
// an app machine, its command. An environment entry that is not
// NAME=VALUE in words the file can hold is left out, with a warning.
func (m *Manager) writeImageSettings(name string, img *oci.Image, app *App) error {
	var env strings.Builder
	for _, kv := range img.Config.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envName(k) || controlChar(kv) != "" {
			logrus.Warnf("%s: left out the image's environment entry %q: not NAME=VALUE of plain text", name, kv)
			continue
		}
		env.WriteString("Environment=" + quoteWord(kv) + "\n")
	}
	if env.Len() == 0 && app == nil {
		return nil
	}
	o, err := ParseSettingsFile("[Exec]\n" + env.String())
	if err != nil {
		return err
	}
	o.App = app
	text, err := o.SettingsText()
	if err != nil {
		return err
	}
	return host.WriteFileAtomic(m.settingsPath(name), []byte(text), 0o644)
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
	if err := ensureEtc(tree); err != nil {
		return nil, err
	}
	// An app's working directory the image lacks is made, as container
	// engines make it: part of the image's tree, the same for every
	// machine from it.
	if d := strings.TrimPrefix(path.Clean(img.Config.WorkingDir), "/"); path.IsAbs(img.Config.WorkingDir) && d != "" && controlChar(d) == "" {
		r, err := os.OpenRoot(tree)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if _, err := r.Lstat(d); errors.Is(err, os.ErrNotExist) {
			if err := r.MkdirAll(d, 0o755); err != nil {
				return nil, fmt.Errorf("%s: its working directory %s: %w", o.From, img.Config.WorkingDir, err)
			}
			// 0755 whatever the umask: the app's user enters it.
			if err := r.Chmod(d, 0o755); err != nil {
				return nil, err
			}
		}
	}
	return layers, nil
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

// ensureEtc makes /etc and /usr in a tree that has none (an image of a
// single program): the hostname and machine id go into /etc, and nspawn
// refuses a tree without /usr, even to run one command.
func ensureEtc(tree string) error {
	r, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, d := range []string{"etc", "usr"} {
		if err := r.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
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
