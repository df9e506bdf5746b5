package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/download"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/oci"
)

// Kinds of Origin.
const (
	OriginImage   = "image"   // create --from docker://, oci:, docker-archive:
	OriginURL     = "url"     // create --from http(s)://
	OriginRelease = "release" // create --release (or NAME a release's codename)
)

// Origin is what create made a machine from, as nsbox recorded it, or
// what a create is asked to make it from. A create of a machine that
// exists already succeeds, changing nothing, when the two are the same
// (Same): so an orchestrator can run one create again and again.
type Origin struct {
	Kind string `json:"kind"`
	// Source is the image reference (canonical: oci.Source.Canonical),
	// the tarball's URL, or the release's codename.
	Source string `json:"source"`
	// Platform is an image's (OS/ARCH[/VARIANT]).
	Platform string `json:"platform,omitempty"`
	// Digest is the manifest digest of the image the machine was made
	// from (recorded; a create asked for a tag does not resolve it).
	Digest string `json:"digest,omitempty"`
	// Base is the key of a release's base (bootstrap.BaseKey): the
	// release, architecture, variant, mirror and packages.
	Base string `json:"base,omitempty"`
}

// Same reports whether a machine made from o is what a create asked for
// want would make: the same image reference (in its canonical spelling)
// for the same platform, the same URL, or the same release base. A tag
// is compared as a reference and not resolved again: a tag that moved
// since still names the machine's source (its digest says which image
// it was). Options that say how the machine runs or is stored (--cmd,
// --boot, --storage, --verify) are not compared: they can be changed
// after the create.
func (o Origin) Same(want Origin) bool {
	if o.Kind == "" || o.Kind != want.Kind {
		return false
	}
	switch o.Kind {
	case OriginImage:
		return o.Platform == want.Platform && canonicalImage(o.Source) == want.Source
	case OriginRelease:
		return o.Base == want.Base
	}
	return o.Source == want.Source
}

// String says what o is, for a line of its own.
func (o Origin) String() string {
	switch o.Kind {
	case OriginImage:
		d := o.Digest
		if len(d) > 7+12 {
			d = d[:7+12]
		}
		if d == "" {
			return fmt.Sprintf("%s (%s)", o.Source, o.Platform)
		}
		return fmt.Sprintf("%s (%s, %s)", o.Source, d, o.Platform)
	case OriginRelease:
		return fmt.Sprintf("release %s (base %s)", o.Source, o.Base)
	case OriginURL:
		return o.Source
	}
	return "a source nsbox did not record (an import, adopt, receive, a create with --no-cache or of an earlier nsbox)"
}

// canonicalImage is an image source of a record in its canonical
// spelling; a record's relative path (earlier versions kept what was
// typed) stays as it is, since the directory it was relative to is not
// known.
func canonicalImage(s string) string {
	src, err := oci.ParseSource(s)
	if err != nil || (src.Kind != oci.Registry && !filepath.IsAbs(src.Path)) {
		return s
	}
	return src.Canonical()
}

// wantOrigin is what create with o would make machine name from. Its
// errors are create's own about the source (ErrInvalidOption).
func wantOrigin(name string, o CreateOptions) (Origin, error) {
	switch {
	case IsURLSource(o.From):
		src, err := download.ParseURL(o.From)
		if err != nil {
			return Origin{}, fmt.Errorf("%w: --from %v", ErrInvalidOption, err)
		}
		return Origin{Kind: OriginURL, Source: src.String()}, nil
	case o.From != "":
		src, err := oci.ParseSource(o.From)
		if err != nil {
			return Origin{}, fmt.Errorf("%w: --from %v", ErrInvalidOption, err)
		}
		platform, err := oci.ParsePlatform(o.Platform, o.Arch)
		if err != nil {
			return Origin{}, fmt.Errorf("%w: %v", ErrInvalidOption, err)
		}
		return Origin{Kind: OriginImage, Source: src.Canonical(), Platform: oci.PlatformString(platform)}, nil
	}
	rel, err := ResolveRelease(name, o)
	if err != nil {
		return Origin{}, err
	}
	key := bootstrap.BaseKey(bootstrap.Options{Release: rel, Mirror: o.Mirror, Variant: o.Variant, Include: o.Include, Arch: o.Arch})
	return Origin{Kind: OriginRelease, Source: rel.Name, Base: key}, nil
}

// OriginOf is what machine name was made from, as nsbox recorded it: its
// image record, the URL in its storage record, or the release base it
// was copied or made over (a clone carries its source's records). Kind
// is "" when none says.
func (m *Manager) OriginOf(name string) Origin {
	if img := m.ImageOf(name); img != nil {
		return Origin{Kind: OriginImage, Source: img.Source, Platform: img.Platform, Digest: img.Digest}
	}
	rec := m.storageOf(name)
	switch {
	case rec.Source != "":
		return Origin{Kind: OriginURL, Source: rec.Source}
	case rec.Base != "" && !bootstrap.IsImageKey(rec.Base):
		release := rec.Base
		if parts := strings.SplitN(rec.Base, "-", 3); len(parts) == 3 {
			release = parts[1]
		}
		return Origin{Kind: OriginRelease, Source: release, Base: rec.Base}
	}
	return Origin{}
}

// Created is what a create did.
type Created struct {
	// Existed says the machine was there already, made from the same
	// source: nothing was changed.
	Existed bool
	// Origin is what the machine was made from.
	Origin Origin
}

// keepOrRefuse decides a create of machine name, which exists: the same
// source is the machine there (nil), another one or none recorded the
// "exists" error that says what the machine was made from.
func (m *Manager) keepOrRefuse(name string, want Origin) (Created, error) {
	have := m.OriginOf(name)
	if have.Same(want) {
		return Created{Existed: true, Origin: have}, nil
	}
	if have.Kind == "" {
		return Created{}, fmt.Errorf("%w: %s, made from %s (remove it first: nsbox remove %s)", ErrExists, m.Path(name), have, name)
	}
	return Created{}, fmt.Errorf("%w: %s, made from %s, not %s (remove it first: nsbox remove %s)", ErrExists, m.Path(name), have, wantText(want), name)
}

// wantText says what a create asked for.
func wantText(o Origin) string {
	switch o.Kind {
	case OriginImage:
		return fmt.Sprintf("%s (%s)", o.Source, o.Platform)
	case OriginRelease:
		return fmt.Sprintf("release %s (base %s)", o.Source, o.Base)
	}
	return o.Source
}

// createLock takes the lock every create of name holds from before it
// looks at the name until the machine and its records are whole, waiting
// for another create of name (saying so through notice). So two creates
// of one name at once are one that makes the machine and one that then
// finds it, whole, and keeps or refuses it; never a half machine.
func (m *Manager) createLock(ctx context.Context, name string, notice func(string)) (*host.FileLock, error) {
	dir := filepath.Join(m.RunDir, "create")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name+".lck")
	l, err := host.LockFile(ctx, path, true, false)
	if !errors.Is(err, host.ErrLocked) {
		return l, err
	}
	if notice != nil {
		notice(fmt.Sprintf("waiting for another create of %s", name))
	}
	return host.LockFile(ctx, path, true, true)
}
