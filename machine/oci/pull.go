package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/nsbox/nsbox/machine/download"
)

// Errors a pull returns, for errors.Is.
var (
	ErrUnknownImage = errors.New("no such image")
	ErrNoPlatform   = errors.New("no image for this platform")
	ErrRefused      = errors.New("access refused")
	ErrNoAnswer     = errors.New("registry does not answer")
	ErrDigest       = errors.New("does not match its digest")
	ErrUnsupported  = errors.New("unsupported image")
)

// Cache keeps layer blobs by digest (DIR/blobs/sha256/HEX), each verified
// as it was written, so images that share a layer download it once.
type Cache struct {
	Dir string // CACHE/oci
}

// Options say how to pull.
type Options struct {
	// Platform picks the image from an index, and an image's own
	// configuration must name it.
	Platform v1.Platform
	// Keychain gives credentials; nil: the user's Docker config and
	// credential helpers (authn.DefaultKeychain).
	Keychain authn.Keychain
	// Transport, when set, replaces nsbox's (timeouts, plain HTTP to
	// loopback only): tests.
	Transport http.RoundTripper
	// Stall is how long a registry may send nothing in the middle of a
	// layer; 0: a minute.
	Stall time.Duration
	// Progress, when set, hears of every layer as it is fetched.
	Progress func(Progress)
}

// Progress is where a pull is, for a progress line.
type Progress struct {
	Layer, Layers int    // Layer counts from 1
	Digest        string // the layer's
	Done, Size    int64  // bytes
	Cached        bool   // the layer was in the cache already
	Finished      bool   // the layer is whole
}

// Config is what an image says of how to run it (the OCI image
// configuration's config object), kept with a machine made from it.
type Config struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Layer is one layer of a pulled image, in the cache.
type Layer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Cached bool   `json:"-"` // it was there before this pull
}

// Image is a pulled image: its layers are all in the cache.
type Image struct {
	Source     string  `json:"source"`
	Digest     string  `json:"digest"` // the manifest's
	Platform   string  `json:"platform"`
	Layers     []Layer `json:"layers"`
	Config     Config  `json:"config"`
	Downloaded int64   `json:"-"` // bytes this pull fetched
}

// LockPath is the lock of the cache: held shared by what uses its
// blobs (a create from an image, an export), exclusive by what removes
// them (prune, cache remove).
func (c *Cache) LockPath() string { return filepath.Join(c.Dir, ".lck") }

// Blob is the path of the blob with digest ("sha256:HEX").
func (c *Cache) Blob(digest string) (string, error) {
	hex, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%w: digest %q is not sha256", ErrUnsupported, digest)
	}
	return filepath.Join(c.Dir, "blobs", "sha256", hex), nil
}

// Open opens a blob of the cache.
func (c *Cache) Open(digest string) (*os.File, error) {
	p, err := c.Blob(digest)
	if err != nil {
		return nil, err
	}
	return os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// Pull resolves src to one image for o.Platform and brings every layer of
// it into the cache that is not there yet, verified against its digest.
func (c *Cache) Pull(ctx context.Context, src Source, o Options) (*Image, error) {
	if o.Stall <= 0 {
		o.Stall = time.Minute
	}
	img, err := resolve(ctx, src, o)
	if err != nil {
		return nil, describe(src, o, err)
	}
	out, err := c.fetch(src, img, o)
	if err != nil {
		return nil, describe(src, o, err)
	}
	return out, nil
}

// resolve finds the one image src names for o.Platform.
func resolve(ctx context.Context, src Source, o Options) (v1.Image, error) {
	switch src.Kind {
	case Registry:
		desc, err := remote.Get(src.Ref, remoteOptions(ctx, o)...)
		if err != nil {
			return nil, err
		}
		switch {
		case desc.MediaType.IsIndex():
			idx, err := desc.ImageIndex()
			if err != nil {
				return nil, err
			}
			return pick(idx, o.Platform, src.Text)
		case desc.MediaType.IsSchema1():
			return nil, fmt.Errorf("%w: %s has a Docker schema 1 manifest, which registries have retired (push it again with a current docker)", ErrUnsupported, src.Text)
		}
		return desc.Image()
	case Layout:
		idx, err := layout.ImageIndexFromPath(src.Path)
		if err != nil {
			return nil, fmt.Errorf("%s is not an OCI image layout: %w", src.Path, err)
		}
		return pickTag(idx, src, o.Platform)
	case DockerArchive:
		if fi, err := os.Stat(src.Path); err != nil {
			return nil, err
		} else if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a file made by docker save", src.Path)
		}
		img, err := tarball.ImageFromPath(src.Path, nil)
		if err != nil {
			return nil, fmt.Errorf("%s is not an archive made by docker save (of one image): %w", src.Path, err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("%w: source %q", ErrUnsupported, src.Text)
}

// pickTag finds the image an OCI layout names by tag (its
// org.opencontainers.image.ref.name), or its only one.
func pickTag(idx v1.ImageIndex, src Source, want v1.Platform) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var found []v1.Descriptor
	var tags []string
	for _, m := range im.Manifests {
		tag := m.Annotations["org.opencontainers.image.ref.name"]
		if tag != "" {
			tags = append(tags, tag)
		}
		if src.Tag == "" || tag == src.Tag {
			found = append(found, m)
		}
	}
	switch {
	case len(found) == 0 && src.Tag != "":
		return nil, fmt.Errorf("%w: %s has no image tagged %s (it has: %s)", ErrUnknownImage, src.Path, src.Tag, listOrNone(tags))
	case len(found) == 0:
		return nil, fmt.Errorf("%w: %s holds no image", ErrUnknownImage, src.Path)
	case len(found) > 1 && src.Tag == "":
		// Several platforms of one image, untagged, are an index too.
		return pick(idx, want, src.Text)
	}
	d := found[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return pick(child, want, src.Text)
	}
	return idx.Image(d.Digest)
}

// pick chooses the image for want from an index.
func pick(idx v1.ImageIndex, want v1.Platform, label string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil || !m.MediaType.IsImage() {
			continue
		}
		if matches(*m.Platform, want) {
			return idx.Image(m.Digest)
		}
		if m.Platform.OS != "unknown" { // attestations
			have = append(have, PlatformString(*m.Platform))
		}
	}
	return nil, fmt.Errorf("%w: %s has no image for %s (it has: %s; pick one with --platform)", ErrNoPlatform, label, PlatformString(want), listOrNone(have))
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// fetch brings img's layers into the cache and reads its configuration.
func (c *Cache) fetch(src Source, img v1.Image, o Options) (*Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read the image configuration: %w", err)
	}
	if cf.Architecture != "" && !matches(*cf.Platform(), o.Platform) {
		return nil, fmt.Errorf("%w: %s is an image for %s, not %s (pick the platform with --platform)", ErrNoPlatform, src.Text, PlatformString(*cf.Platform()), PlatformString(o.Platform))
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	out := &Image{Source: src.Text, Digest: digest.String(), Platform: PlatformString(o.Platform),
		Config: Config{Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, Env: cf.Config.Env,
			WorkingDir: cf.Config.WorkingDir, User: cf.Config.User}}
	if err := os.MkdirAll(filepath.Join(c.Dir, "blobs", "sha256"), 0o700); err != nil {
		return nil, err
	}
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		mt, err := l.MediaType()
		if err != nil {
			return nil, err
		}
		if !mt.IsLayer() || !mt.IsDistributable() {
			return nil, fmt.Errorf("%w: layer %d (%s) is of type %s, which nsbox does not pull", ErrUnsupported, i+1, d, mt)
		}
		size, err := l.Size()
		if err != nil {
			return nil, err
		}
		p, err := c.Blob(d.String())
		if err != nil {
			return nil, err
		}
		ly := Layer{Digest: d.String(), Size: size}
		prog := Progress{Layer: i + 1, Layers: len(layers), Digest: ly.Digest, Size: size}
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			ly.Cached = true
		} else {
			if err := c.download(l, p, ly, o, prog); err != nil {
				return nil, fmt.Errorf("layer %d (%s): %w", i+1, ly.Digest, err)
			}
			out.Downloaded += size
		}
		if o.Progress != nil {
			prog.Done, prog.Cached, prog.Finished = size, ly.Cached, true
			o.Progress(prog)
		}
		out.Layers = append(out.Layers, ly)
	}
	return out, nil
}

// download writes layer l to the blob p: into a temporary file beside it,
// hashed as it is written and renamed into place only when its digest and
// size are the ones the manifest gave.
func (c *Cache) download(l v1.Layer, p string, ly Layer, o Options, prog Progress) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(p), ".#"+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	var n int64
	buf := make([]byte, 256<<10)
	last := time.Now()
	var rerr error
	for {
		k, err := rc.Read(buf)
		if k > 0 {
			if n+int64(k) > ly.Size {
				return fmt.Errorf("%w: the source sends more than the %d bytes its manifest gives", ErrDigest, ly.Size)
			}
			h.Write(buf[:k])
			if _, err := tmp.Write(buf[:k]); err != nil {
				return err
			}
			n += int64(k)
			if o.Progress != nil && time.Since(last) > 200*time.Millisecond {
				prog.Done, last = n, time.Now()
				o.Progress(prog)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if n == ly.Size && got != ly.Digest {
		return fmt.Errorf("%w: the source sent %d bytes with digest %s", ErrDigest, n, got)
	}
	if rerr != nil {
		return rerr
	}
	if n != ly.Size {
		return fmt.Errorf("%w: the source sent %d bytes, its manifest gives %d", ErrDigest, n, ly.Size)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	ok = true
	return nil
}

// client is the credentials and transport o gives, or the user's Docker
// config and nsbox's guarded transport.
func (o Options) client() (authn.Keychain, http.RoundTripper) {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	tr := o.Transport
	if tr == nil {
		tr = download.Transport(o.Stall, false)
	}
	return kc, tr
}

// remoteOptions are the registry client's: credentials, nsbox's
// transport, the context, short retries.
func remoteOptions(ctx context.Context, o Options) []remote.Option {
	kc, tr := o.client()
	return []remote.Option{
		remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithTransport(tr),
		remote.WithUserAgent("nsbox"), remote.WithJobs(1),
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}),
	}
}

// describe turns a pull's failure into one line that says what went wrong
// and what to do.
func describe(src Source, o Options, err error) error { return describeAs("pull", src, o, err) }

// describeAs is describe for a pull or a push (verb; "" when the caller
// says it).
func describeAs(verb string, src Source, o Options, err error) error {
	where := src.Text
	var reg, repo string
	if src.Kind == Registry {
		reg, repo = src.Ref.Context().RegistryStr(), src.Ref.Context().RepositoryStr()
	}
	var te *transport.Error
	var ne net.Error
	switch {
	case errors.Is(err, download.ErrStalled) || strings.Contains(err.Error(), download.ErrStalled.Error()+": nothing came"):
		err = fmt.Errorf("%w: %s sent nothing for %s", ErrNoAnswer, reg, o.Stall)
	case errors.Is(err, context.Canceled):
		// Interrupted: the caller says so; no registry is to blame.
	case errors.Is(err, ErrDigest), errors.Is(err, ErrNoPlatform), errors.Is(err, ErrUnknownImage), errors.Is(err, ErrUnsupported), errors.Is(err, ErrRefused):
	case errors.Is(err, download.ErrPlainHTTP):
		// The refusal alone, not the HTTPS try before it, which the
		// library words too.
		err = fmt.Errorf("%w: %w", ErrRefused, wrapperOf(err, download.ErrPlainHTTP))
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden || hasCode(te, transport.UnauthorizedErrorCode, transport.DeniedErrorCode)):
		if anonymous(o, src.Ref) {
			err = fmt.Errorf("%w: %s refused access to %s: it does not exist or needs credentials (log in: docker login %s)", ErrRefused, reg, repo, reg)
		} else {
			err = fmt.Errorf("%w: %s refused the credentials for %s from the Docker config or its credential helper (log in again: docker login %s)", ErrRefused, reg, repo, reg)
		}
	case errors.As(err, &te) && (te.StatusCode == http.StatusNotFound || hasCode(te, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode)):
		err = fmt.Errorf("%w: %s has none by that name (check the name and tag)", ErrUnknownImage, reg)
	case errors.As(err, &te):
		err = fmt.Errorf("registry %s answered %d %s", reg, te.StatusCode, http.StatusText(te.StatusCode))
	case src.Kind == Registry && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)):
		// (Only a registry: a file's errno is a net.Error too.)
		// The dial's own words, not the library's wrapping of each try.
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = fmt.Errorf("%w: %s: %v", ErrNoAnswer, reg, oe)
		} else {
			err = fmt.Errorf("%w: %s: %v", ErrNoAnswer, reg, err)
		}
	}
	if src.Kind == Registry {
		where = src.Ref.Name()
	}
	if verb == "" {
		return fmt.Errorf("%s: %w", where, oneLine(err))
	}
	return fmt.Errorf("%s %s: %w", verb, where, oneLine(err))
}

// oneLine keeps err's chain for errors.Is while its text is one line.
func oneLine(err error) error {
	if !strings.ContainsAny(err.Error(), "\r\n") {
		return err
	}
	return &lineError{err}
}

type lineError struct{ err error }

func (e *lineError) Error() string {
	return strings.Join(strings.Fields(strings.ReplaceAll(e.err.Error(), "\n", "; ")), " ")
}
func (e *lineError) Unwrap() error { return e.err }

func hasCode(te *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range te.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

// anonymous reports whether the keychain has no credentials for ref's
// registry.
func anonymous(o Options, ref name.Reference) bool {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	a, err := kc.Resolve(ref.Context())
	return err != nil || a == authn.Anonymous
}

// wrapperOf is the error in err's tree that wraps target itself (what
// said why), or err when none does.
func wrapperOf(err, target error) error {
	var found error
	var walk func(e error) bool
	walk = func(e error) bool {
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			if u.Unwrap() == target {
				found = e
				return true
			}
			return u.Unwrap() != nil && walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				if x == target {
					found = e
					return true
				}
				if walk(x) {
					return true
				}
			}
		}
		return false
	}
	if walk(err) {
		return found
	}
	return err
}
