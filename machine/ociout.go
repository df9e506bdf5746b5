package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/oci"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/sirupsen/logrus"
)

// OCIResult is what export --format oci and push made of a machine.
type OCIResult struct {
	Name        string        `json:"name"`
	Destination string        `json:"destination"`
	Digest      string        `json:"digest"` // the image manifest's
	Platform    string        `json:"platform"`
	Layers      []OCILayer    `json:"layers"`
	Size        int64         `json:"size_bytes"` // the layers' blobs
	Time        time.Duration `json:"time_ns"`
}

// OCILayer is one layer of the image of a machine.
type OCILayer struct {
	Digest string `json:"digest"`
	DiffID string `json:"diff_id"`
	Size   int64  `json:"size_bytes"`
	// From is "base" (the base version an overlay machine is over) or
	// "machine" (the machine's own: its tree, or its overlay's upper).
	From string `json:"from"`
	// Cached: an earlier export or push wrote it; nothing was read now.
	Cached bool `json:"cached"`
}

// OCIOptions are export --format oci's and push's.
type OCIOptions struct {
	Progress func(Stage)
	// Tag names the image in a layout (its ref.name); "" is "latest".
	Tag string
	// Registry is the pull's options for a push (credentials,
	// transport); its Platform is not used.
	Registry oci.Options
}

// ExportOCI writes stopped machine name as an OCI image layout in dir
// (which must not exist, or be an empty directory): staged in a ".#"
// directory beside it, root's and 0700, reached through its descriptor
// only, and renamed into place when whole. See ociImage for the layers.
func (m *Manager) ExportOCI(ctx context.Context, name, dir string, o OCIOptions) (*OCIResult, error) {
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, err
	}
	if o.Tag == "" {
		o.Tag = "latest"
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: %s (stop it first: nsbox stop %s)", ErrRunning, name, name)
	}
	stage, err := image.CreateStagedDir(dir)
	if err != nil {
		return nil, err
	}
	defer stage.Abort()
	if err := os.MkdirAll(filepath.Join(stage.Dir(), "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	blobs, err := os.Open(filepath.Join(stage.Dir(), "blobs", "sha256"))
	if err != nil {
		return nil, err
	}
	defer blobs.Close()
	res := &OCIResult{Name: name, Destination: stage.Path()}
	start := time.Now()
	err = m.ociImage(ctx, name, int(blobs.Fd()), o, res, func(img v1.Image, layers []*oci.FileLayer) error {
		// The blobs go in first, by link or a copy the file system may
		// share blocks for: the layout then finds them there.
		for i, l := range layers {
			if err := placeBlob(int(blobs.Fd()), l, o, i, len(layers)); err != nil {
				return err
			}
		}
		if o.Progress != nil {
			o.Progress(Stage{Phase: "writing the layout", Line: "writing the layout"})
		}
		if err := oci.WriteLayout(stage.Dir(), img, o.Tag); err != nil {
			return err
		}
		// The library writes these executable.
		for _, f := range []string{"index.json", "oci-layout"} {
			if err := unix.Fchmodat(stage.FD(), f, 0o644, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := stage.Publish(); err != nil {
		return nil, err
	}
	res.Time = time.Since(start)
	return res, nil
}

// placeBlob gives layer l its name in the layout's blobs directory bfd:
// a layer written there unnamed gets a link; a cached one a copy
// (copy_file_range: shared blocks where the file system can).
func placeBlob(bfd int, l *oci.FileLayer, o OCIOptions, i, n int) error {
	d, _ := l.Digest()
	f := l.File()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	size, _ := l.Size()
	if st.Nlink == 0 {
		if err := f.Chmod(0o644); err != nil {
			return err
		}
		return nameBlob(f, size, bfd, d.Hex)
	}
	if o.Progress != nil {
		ph := fmt.Sprintf("copying layer %d/%d", i+1, n)
		o.Progress(Stage{Phase: ph, Line: ph})
	}
	return copyBlob(f, size, bfd, d.Hex)
}

// nameBlob gives the unnamed file f (size bytes) the name name in
// directory dfd: a link where the file system can, a copy otherwise (an
// overlayfs, where a link of an O_TMPFILE file may cross into its upper
// file system). A name already there is a blob of the same digest.
func nameBlob(f *os.File, size int64, dfd int, name string) error {
	err := linkUnnamed(f, dfd, name)
	if err == nil || errors.Is(err, unix.EEXIST) {
		return nil
	}
	return copyBlob(f, size, dfd, name)
}

// copyBlob copies f (size bytes) to name in directory dfd, through a
// temporary ".#name" renamed into place when whole (copy_file_range:
// shared blocks where the file system can).
func copyBlob(f *os.File, size int64, dfd int, name string) error {
	tmp := ".#" + name
	_ = unix.Unlinkat(dfd, tmp, 0)
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	out := os.NewFile(uintptr(fd), tmp)
	defer out.Close()
	_, err = out.ReadFrom(io.NewSectionReader(f, 0, size))
	if err == nil {
		err = out.Sync()
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
	}
	return err
}

// linkUnnamed names the unnamed (O_TMPFILE) file f name in directory dfd
// (on the same file system; a cached blob, which has a name, gets none).
func linkUnnamed(f *os.File, dfd int, name string) error {
	err := unix.Linkat(int(f.Fd()), "", dfd, name, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), dfd, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}

// Push sends stopped machine name to a registry as the image dst
// (docker://[REGISTRY/]REPO[:TAG]), with the credentials and transport of
// a pull: the user's Docker config and credential helpers, plain HTTP to
// loopback only. The machine's own layer is an unnamed file in the image
// cache, gone with nsbox however it ends.
func (m *Manager) Push(ctx context.Context, name, dst string, o OCIOptions) (*OCIResult, error) {
	if err := CheckPushRef(dst); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOption, err)
	}
	ref, _ := oci.ParseSource(dst)
	if err := m.checkRootAndName(name, true); err != nil {
		return nil, err
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: %s (stop it first: nsbox stop %s)", ErrRunning, name, name)
	}
	if err := oci.CheckPush(ref, o.Registry); err != nil {
		return nil, err
	}
	cache := m.ImageCache()
	if err := os.MkdirAll(cache.Dir, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.Open(cache.Dir)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	res := &OCIResult{Name: name, Destination: "docker://" + ref.Ref.Name()}
	start := time.Now()
	err = m.ociImage(ctx, name, int(dir.Fd()), o, res, func(img v1.Image, _ []*oci.FileLayer) error {
		var last time.Time
		return oci.Push(ctx, ref, img, o.Registry, func(done, total int64) {
			if o.Progress != nil && (time.Since(last) > 200*time.Millisecond || done == total) {
				last = time.Now()
				st := Stage{Phase: "pushing", Package: fmt.Sprintf("%s of %s", image.FormatSize(done), image.FormatSize(total))}
				st.Line = st.Phase + ": " + st.Package
				o.Progress(st)
			}
		})
	})
	if err != nil {
		return nil, err
	}
	res.Time = time.Since(start)
	return res, nil
}

// ociImage makes the image of stopped machine name, locked (no boot)
// until use, which gets it, returns: layers written as unnamed files in
// directory tmp, or taken from the image cache.
//
// An overlay machine is its base version's layers (baseLayers: built once
// per version and cached) and a layer of its upper, whose whiteouts and
// opaque directories become OCI's. Any other machine (a copy, a btrfs
// snapshot, one made from an image) is one layer of its tree. Owners are
// as the machine sees them. The configuration is the image's a machine
// was made from, where it was (entrypoint, command, environment, working
// directory, user), and otherwise defaultConfig's.
func (m *Manager) ociImage(ctx context.Context, name string, tmp int, o OCIOptions, res *OCIResult, use func(v1.Image, []*oci.FileLayer) error) error {
	lock, err := m.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	// Prune does not take a cached base layer away meanwhile.
	_, cacheLock, err := m.shareImageCache(ctx)
	if err != nil {
		return err
	}
	defer cacheLock.Unlock()

	rec := m.storageOf(name)
	var built []oci.Built
	var files []*oci.FileLayer
	defer func() {
		for _, f := range files {
			f.File().Close()
		}
	}()
	add := func(l *oci.FileLayer, from, comment string, cached bool) {
		d, _ := l.Digest()
		t, _ := l.DiffID()
		s, _ := l.Size()
		built = append(built, oci.Built{Layer: l, Comment: comment})
		files = append(files, l)
		res.Layers = append(res.Layers, OCILayer{Digest: d.String(), DiffID: t.String(), Size: s, From: from, Cached: cached})
		res.Size += s
	}
	var layerOpts image.LayerOptions
	var tree string
	if rec.Kind == storage.Overlay {
		base, cached, err := m.baseLayers(ctx, rec, o.Progress)
		if err != nil {
			return err
		}
		for _, l := range base {
			add(l, "base", fmt.Sprintf("nsbox base %s, version %s", rec.Base, rec.Version), cached)
		}
		if _, err := m.lowerOf(rec); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		tree = m.layout(name).Upper()
		layerOpts = image.LayerOptions{Shift: rec.UpperBase(), Upper: true, Name: name + ":"}
	} else {
		tree = m.Dir(name)
		layerOpts = image.LayerOptions{Shift: treeShift(tree), Name: name + ":"}
	}
	f, err := unnamedFile(tmp)
	if err != nil {
		return err
	}
	phase := fmt.Sprintf("layer %d/%d (%s)", len(built)+1, len(built)+1, name)
	if o.Progress != nil {
		o.Progress(Stage{Phase: phase, Line: phase})
	}
	layerOpts.Progress = throttled(o.Progress, phase)
	var stats image.LayerStats
	l, err := oci.WriteLayerFile(f, func(w io.Writer) error {
		var err error
		stats, err = image.WriteLayer(ctx, tree, w, layerOpts)
		return err
	})
	if err != nil {
		f.Close()
		return err
	}
	add(l, "machine", "nsbox machine "+name, false)
	if stats.Devices+stats.Sockets+stats.Mounts > 0 {
		logrus.Infof("%s: left out %d device nodes, %d sockets and the contents of %d mount points", name, stats.Devices, stats.Sockets, stats.Mounts)
	}

	cfg, platform, err := m.imageConfig(ctx, name, rec)
	if err != nil {
		return err
	}
	res.Platform = oci.PlatformString(platform)
	img, err := oci.NewImage(built, cfg, platform, time.Now().UTC().Truncate(time.Second))
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	res.Digest = d.String()
	return use(img, files)
}

// throttled reports the bytes of a layer read so far to p under phase,
// five times a second at most.
func throttled(p func(Stage), phase string) func(int64) {
	var last time.Time
	return func(n int64) {
		if p == nil || time.Since(last) < 200*time.Millisecond {
			return
		}
		last = time.Now()
		st := Stage{Phase: phase, Package: image.FormatSize(n) + " read"}
		st.Line = phase + ": " + st.Package
		p(st)
	}
}

// treeShift is the host id of the root of a machine's tree as stored: 0,
// or the range systemd-nspawn chowned it into (--private-users-ownership
// chose chown, on a file system without idmapped mounts), which its root
// directory's owner names.
func treeShift(tree string) int {
	var st unix.Stat_t
	if unix.Lstat(tree, &st) != nil || st.Uid == 0 || st.Uid%storage.RangeSize != 0 || st.Gid != st.Uid {
		return 0
	}
	return int(st.Uid)
}

// unnamedFile is a new unnamed file (O_TMPFILE) in directory dfd, gone
// with its descriptor unless linked.
func unnamedFile(dfd int) (*os.File, error) {
	fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("make a layer file: %w", err)
	}
	return os.NewFile(uintptr(fd), "layer"), nil
}

// baseLayerRecord is what the image cache keeps of the layers of a base
// version (CACHE/oci/base-layers/KEY@VERSION.json).
type baseLayerRecord struct {
	Bases   string          `json:"bases"`
	Base    string          `json:"base"`
	Version string          `json:"base_version"`
	Layers  []baseLayerBlob `json:"layers"`
}

type baseLayerBlob struct {
	Digest string `json:"digest"`
	DiffID string `json:"diff_id"`
	Size   int64  `json:"size"`
}

// baseLayersDir holds the base layer records.
func (m *Manager) baseLayersDir() string { return filepath.Join(m.ImageCache().Dir, "base-layers") }

// baseLayers are the layers of the base version overlay machine rec is
// over, for an image of it. This is the one place that says what they
// are: today one layer of the version's tree (owners as stored: a base is
// root's), built on the first export or push of a machine over the
// version and kept in the image cache (its blob by digest, a record
// naming it by base and version), so later ones, of any machine over that
// version, read nothing and registries that have it are sent nothing.
// A base version made from an image could give that image's own layers
// here. cached says the layers were there before.
func (m *Manager) baseLayers(ctx context.Context, rec storage.Record, progress func(Stage)) (_ []*oci.FileLayer, cached bool, err error) {
	if rec.Base == "" || rec.Version == "" || strings.ContainsAny(rec.Base+rec.Version, "/@\x00") || strings.HasPrefix(rec.Base, ".") {
		return nil, false, fmt.Errorf("the machine's storage record names no base version")
	}
	bases := rec.Bases
	if bases == "" {
		bases = m.Bases().Dir
	}
	cache := m.ImageCache()
	dir := m.baseLayersDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	key := rec.Base + "@" + rec.Version
	// One build of a version at a time; the second waits and finds it.
	l, err := host.LockFile(ctx, filepath.Join(dir, "."+key+".lck"), true, true)
	if err != nil {
		return nil, false, err
	}
	defer l.Unlock()
	recPath := filepath.Join(dir, key+".json")
	if layers, ok := m.openBaseLayers(recPath, filepath.Clean(bases)); ok {
		return layers, true, nil
	}
	lower, err := m.lowerOf(rec)
	if err != nil {
		return nil, false, err
	}
	blobDir := filepath.Join(cache.Dir, "blobs", "sha256")
	if err := os.MkdirAll(blobDir, 0o700); err != nil {
		return nil, false, err
	}
	bd, err := os.Open(blobDir)
	if err != nil {
		return nil, false, err
	}
	defer bd.Close()
	f, err := unnamedFile(int(bd.Fd()))
	if err != nil {
		return nil, false, err
	}
	phase := fmt.Sprintf("base layer (%s, once per base version)", rec.Base)
	if progress != nil {
		progress(Stage{Phase: phase, Line: phase})
	}
	layer, err := oci.WriteLayerFile(f, func(w io.Writer) error {
		_, err := image.WriteLayer(ctx, lower, w, image.LayerOptions{Name: "base " + rec.Base + ":", Progress: throttled(progress, phase)})
		return err
	})
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("base %s version %s: %w", rec.Base, rec.Version, err)
	}
	d, _ := layer.Digest()
	t, _ := layer.DiffID()
	size, _ := layer.Size()
	if err := nameBlob(f, size, int(bd.Fd()), d.Hex); err != nil {
		f.Close()
		return nil, false, err
	}
	b, _ := json.MarshalIndent(baseLayerRecord{Bases: filepath.Clean(bases), Base: rec.Base, Version: rec.Version,
		Layers: []baseLayerBlob{{Digest: d.String(), DiffID: t.String(), Size: size}}}, "", "  ")
	if err := host.WriteFileAtomic(recPath, append(b, '\n'), 0o600); err != nil {
		logrus.Warnf("remember the layer of base %s version %s: %v", rec.Base, rec.Version, err)
	}
	return []*oci.FileLayer{layer}, false, nil
}

// openBaseLayers opens the cached layers recPath names, when they are
// all there.
func (m *Manager) openBaseLayers(recPath, bases string) ([]*oci.FileLayer, bool) {
	b, err := os.ReadFile(recPath)
	if err != nil {
		return nil, false
	}
	var r baseLayerRecord
	if json.Unmarshal(b, &r) != nil || r.Bases != bases || len(r.Layers) == 0 {
		return nil, false
	}
	var out []*oci.FileLayer
	for _, bl := range r.Layers {
		f, err := m.ImageCache().Open(bl.Digest)
		if err == nil {
			// Read again, not written: a blob damaged since is built anew.
			if err = image.VerifyDigest(f, bl.Digest); err != nil {
				f.Close()
				if p, perr := m.ImageCache().Blob(bl.Digest); perr == nil {
					_ = os.Remove(p)
				}
			}
		}
		if err == nil {
			var l *oci.FileLayer
			if l, err = oci.OpenLayerFile(f, bl.Digest, bl.DiffID, bl.Size); err == nil {
				out = append(out, l)
				continue
			}
			f.Close()
		}
		for _, l := range out {
			l.File().Close()
		}
		return nil, false
	}
	return out, true
}

// defaultPath is the PATH of an image nsbox makes of a machine that was
// not made from an image (Debian's, as its images set it).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageConfig is the configuration and platform of the image of machine
// name (stored as rec says): those of the image it was made from, or
// defaultConfig's (of its tree, an overlay machine's as it sees it) and
// the host's platform.
func (m *Manager) imageConfig(ctx context.Context, name string, rec storage.Record) (v1.Config, v1.Platform, error) {
	c, p, err := m.baseImageConfig(ctx, name, rec)
	if err != nil {
		return c, p, err
	}
	// An app machine's image runs what the machine runs: a command set
	// with boot --cmd replaces the image's (Entrypoint and Cmd), and its
	// user and directory are the machine's.
	if opts, err := m.Options(name); err == nil && opts.App != nil {
		a := opts.App
		if !slices.Equal(a.Argv, append(slices.Clone(c.Entrypoint), c.Cmd...)) {
			c.Entrypoint, c.Cmd = nil, slices.Clone(a.Argv)
		}
		c.WorkingDir, c.User = a.Workdir, a.User
	}
	return c, p, nil
}

// baseImageConfig is imageConfig before an app machine's own command.
func (m *Manager) baseImageConfig(ctx context.Context, name string, rec storage.Record) (v1.Config, v1.Platform, error) {
	if img := m.ImageOf(name); img != nil {
		p, err := oci.ParsePlatform(img.Platform, "")
		if err != nil {
			if p, err = oci.ParsePlatform("", ""); err != nil {
				return v1.Config{}, v1.Platform{}, err
			}
		}
		c := img.Config
		return v1.Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}, p, nil
	}
	p, err := oci.ParsePlatform("", "")
	if err != nil {
		return v1.Config{}, p, err
	}
	if rec.Kind != storage.Overlay {
		return defaultConfig(m.Dir(name)), p, nil
	}
	var c v1.Config
	err = m.withView(ctx, name, func(root string) error {
		c = defaultConfig(root)
		return nil
	})
	return c, p, err
}

// defaultConfig is the configuration of a machine's image when the
// machine was not made from one: PATH, and the command /sbin/init (its
// systemd: podman runs it in its systemd mode, nsbox boots it) where the
// tree has one, with systemd's stop signal; /bin/sh where it has only
// that.
func defaultConfig(tree string) v1.Config {
	c := v1.Config{Env: []string{defaultPath}}
	switch {
	case inTree(tree, "sbin/init"):
		c.Cmd, c.StopSignal = []string{"/sbin/init"}, "SIGRTMIN+3"
	case inTree(tree, "bin/sh"):
		c.Cmd = []string{"/bin/sh"}
	}
	return c
}

// inTree reports whether tree has p, every step resolved inside it.
func inTree(tree, p string) bool {
	r, err := os.OpenRoot(tree)
	if err != nil {
		return false
	}
	defer r.Close()
	_, err = r.Lstat(p)
	return err == nil
}

// FormatSize writes a byte count as people read it (1.2 GB).
func FormatSize(n int64) string { return image.FormatSize(n) }

// CheckPushRef checks push's destination: docker://[REGISTRY/]REPO[:TAG].
func CheckPushRef(dst string) error {
	ref, err := oci.ParseSource(dst)
	if err == nil && ref.Kind != oci.Registry {
		err = fmt.Errorf("%q: push sends to a registry, as docker://[REGISTRY/]REPO[:TAG] (export --format oci writes a directory)", dst)
	}
	return err
}
