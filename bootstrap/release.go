package bootstrap

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Distro is a family of releases that share an archive layout and keyring.
type Distro struct {
	Name    string // "debian" or "ubuntu"
	Keyring string // archive keyring debootstrap verifies against
	Package string // Debian package that ships Keyring
	// Components needed for the packages nsbox installs.
	Components []string
	// KeyringPath is where the distro's archive serves its keyring,
	// under the mirror; "" when nsbox fetches none and needs Package.
	KeyringPath string
	// ArchiveKeys are the fingerprints of the keys nsbox keeps from a
	// keyring it fetched (see ResolveKeyring).
	ArchiveKeys []string
	// Mirrors are debootstrap's own default mirrors by architecture
	// ("*": every other one), where nsbox fetches the keyring when no
	// mirror is given.
	Mirrors map[string]string
}

// Distros are the families nsbox can bootstrap.
var Distros = map[string]Distro{
	"debian": {
		Name:       "debian",
		Keyring:    "/usr/share/keyrings/debian-archive-keyring.gpg",
		Package:    "debian-archive-keyring",
		Components: []string{"main"},
	},
	"ubuntu": {
		Name:       "ubuntu",
		Keyring:    "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
		Package:    "ubuntu-keyring",
		Components: []string{"main", "universe"},
		// Ubuntu's apt-key names this URL for the archive keyring
		// (APT::Key::ArchiveKeyringURI).
		KeyringPath: "project/ubuntu-archive-keyring.gpg",
		ArchiveKeys: UbuntuArchiveKeys,
		// as debootstrap's gutsy script, which every Ubuntu suite uses
		Mirrors: map[string]string{
			"amd64": "http://archive.ubuntu.com/ubuntu",
			"i386":  "http://archive.ubuntu.com/ubuntu",
			"*":     "http://ports.ubuntu.com/ubuntu-ports",
		},
	},
}

// Release is one named release of a distro.
type Release struct {
	Distro Distro
	Name   string // codename, as debootstrap takes it
}

// releases maps every codename nsbox knows to its distro.
var releases = map[string]string{
	"buster": "debian", "bullseye": "debian", "bookworm": "debian",
	"trixie": "debian", "forky": "debian", "sid": "debian",
	"focal": "ubuntu", "jammy": "ubuntu", "noble": "ubuntu",
	"oracular": "ubuntu", "plucky": "ubuntu", "questing": "ubuntu",
}

// ErrUnknownRelease is returned for a codename nsbox does not know.
var ErrUnknownRelease = errors.New("unknown release")

// KnownReleases lists the codenames of distro ("" for all), sorted.
func KnownReleases(distro string) []string {
	var out []string
	for r, d := range releases {
		if distro == "" || d == distro {
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out
}

// IsRelease reports whether name is a codename nsbox knows.
func IsRelease(name string) bool {
	_, ok := releases[name]
	return ok
}

// LookupRelease resolves a codename, and checks it against distro when the
// user gave one.
func LookupRelease(name, distro string) (Release, error) {
	d, ok := releases[name]
	if !ok {
		return Release{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownRelease, name, strings.Join(KnownReleases(distro), ", "))
	}
	if distro != "" && distro != d {
		if _, known := Distros[distro]; !known {
			return Release{}, fmt.Errorf("unknown distro %q (known: debian, ubuntu)", distro)
		}
		return Release{}, fmt.Errorf("release %s belongs to %s, not %s", name, d, distro)
	}
	return Release{Distro: Distros[d], Name: name}, nil
}
