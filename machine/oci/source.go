// Package oci brings container images from OCI and Docker registries, OCI
// image layouts and docker-save archives into a cache of layer blobs kept
// by digest and shared between images. It talks to registries through
// go-containerregistry only, and applies nothing: machine/image applies
// the layers it keeps.
package oci

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Kinds of Source.
const (
	Registry      = "docker"         // docker://[REGISTRY/]REPO[:TAG|@DIGEST]
	Layout        = "oci"            // oci:DIR[:TAG]
	DockerArchive = "docker-archive" // docker-archive:FILE
)

// Source is where an image comes from, as create --from names it.
type Source struct {
	Kind string
	Text string         // as the user wrote it
	Ref  name.Reference // Registry
	Path string         // Layout: the directory; DockerArchive: the file
	Tag  string         // Layout: the image's ref.name ("" when it holds one image)
}

// IsSource reports whether s names an image (rather than a machine or a
// release): it starts with one of the source prefixes.
func IsSource(s string) bool {
	for _, p := range []string{"docker://", "oci:", "docker-archive:"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// ParseSource reads an image source: docker://[REGISTRY/]REPO[:TAG|@DIGEST]
// (Docker Hub when no registry is named, tag latest when none is),
// oci:DIR[:TAG] or docker-archive:FILE.
func ParseSource(s string) (Source, error) {
	src := Source{Text: s}
	switch {
	case strings.HasPrefix(s, "docker://"):
		rest := strings.TrimPrefix(s, "docker://")
		if rest == "" || strings.ContainsAny(rest, " \t\n\x00") {
			return src, fmt.Errorf("%q: name an image, as docker://[REGISTRY/]REPO[:TAG|@DIGEST]", s)
		}
		ref, err := name.ParseReference(rest)
		if err != nil {
			return src, fmt.Errorf("%q is not an image reference: %v", s, err)
		}
		src.Kind, src.Ref = Registry, ref
	case strings.HasPrefix(s, "oci:"):
		rest := strings.TrimPrefix(s, "oci:")
		// A tag follows the last colon when no slash follows it.
		if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
			rest, src.Tag = rest[:i], rest[i+1:]
			if src.Tag == "" {
				return src, fmt.Errorf("%q: empty tag after the directory", s)
			}
		}
		if rest == "" {
			return src, fmt.Errorf("%q: name the directory of an OCI image layout, as oci:DIR[:TAG]", s)
		}
		src.Kind, src.Path = Layout, rest
	case strings.HasPrefix(s, "docker-archive:"):
		src.Kind, src.Path = DockerArchive, strings.TrimPrefix(s, "docker-archive:")
		if src.Path == "" {
			return src, fmt.Errorf("%q: name a file made by docker save, as docker-archive:FILE", s)
		}
	default:
		return src, fmt.Errorf("%q is not an image source (docker://REF, oci:DIR[:TAG] or docker-archive:FILE)", s)
	}
	return src, nil
}

// debianArch maps Debian's architecture names (create --arch) to the
// OCI platform's architecture and variant.
var debianArch = map[string][2]string{
	"armhf":   {"arm", "v7"},
	"armel":   {"arm", "v5"},
	"i386":    {"386", ""},
	"ppc64el": {"ppc64le", ""},
}

// ParsePlatform reads the platform to pick from an index: --platform
// OS/ARCH[/VARIANT] or else --arch ARCH (OCI's names or Debian's: armhf,
// i386, ppc64el), or else the host's.
func ParsePlatform(platform, arch string) (v1.Platform, error) {
	if platform != "" && arch != "" {
		return v1.Platform{}, fmt.Errorf("--platform and --arch say the same thing: give one")
	}
	if platform != "" {
		parts := strings.Split(platform, "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
			return v1.Platform{}, fmt.Errorf("--platform %q: give OS/ARCH[/VARIANT], as linux/arm64 or linux/arm/v7", platform)
		}
		p := v1.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			p.Variant = parts[2]
		}
		return p, checkPlatformWords(p)
	}
	if arch == "" {
		arch = runtime.GOARCH
	}
	p := v1.Platform{OS: "linux", Architecture: arch}
	if m, ok := debianArch[arch]; ok {
		p.Architecture, p.Variant = m[0], m[1]
	}
	return p, checkPlatformWords(p)
}

func checkPlatformWords(p v1.Platform) error {
	for _, w := range []string{p.OS, p.Architecture, p.Variant} {
		for _, r := range w {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return fmt.Errorf("platform %q: only lower case letters, digits, - and _", PlatformString(p))
			}
		}
	}
	return nil
}

// PlatformString writes p as OS/ARCH[/VARIANT].
func PlatformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// matches reports whether an image of platform got serves want: OS and
// architecture equal, and the variant when want names one (an arm64 image
// without a variant is v8).
func matches(got, want v1.Platform) bool {
	if got.OS != want.OS || got.Architecture != want.Architecture {
		return false
	}
	if want.Variant == "" || got.Variant == want.Variant {
		return true
	}
	return got.Variant == "" && want.Architecture == "arm64" && want.Variant == "v8"
}

// Canonical is the source in one spelling, to tell whether two name the
// same image: a registry reference with its registry and repository in
// full and its tag ("docker://debian" is
// "docker://index.docker.io/library/debian:latest"), a layout's or
// archive's path made absolute against the working directory and
// cleaned.
func (s Source) Canonical() string {
	switch s.Kind {
	case Registry:
		return "docker://" + s.Ref.Name()
	case Layout:
		out := "oci:" + absPath(s.Path)
		if s.Tag != "" {
			out += ":" + s.Tag
		}
		return out
	case DockerArchive:
		return "docker-archive:" + absPath(s.Path)
	}
	return s.Text
}

// absPath is p made absolute and cleaned; p as it is when there is no
// working directory to resolve it against.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
