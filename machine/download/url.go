package download

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Suffixes are the file names of root file system tarballs a URL may
// end in: importctl's, with zstd for bzip2 (nsbox reads gzip, xz and
// zstd, by their magic numbers).
var Suffixes = []string{".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tzst"}

// Source is the URL of a root file system tarball, checked.
type Source struct {
	URL *url.URL
	// Name is its file name (the last component of its path, unescaped):
	// what a line of SHA256SUMS must name.
	Name string
}

// IsURL reports whether s is meant as an http or https URL.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// ParseURL checks a tarball's URL: http or https, a host, no credentials
// (they would show in logs and process lists, and a redirect would carry
// them on), no query or fragment (SHA256SUMS is found beside the file, in
// the same directory), no control characters or spaces, and a file name
// with a tarball's suffix.
func ParseURL(s string) (*Source, error) {
	shown := redact(s)
	for _, c := range s {
		if c < 0x21 || c == 0x7f {
			return nil, fmt.Errorf("URL %q holds a space or control character", shown)
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL
		}
		return nil, fmt.Errorf("URL %q: %v", shown, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("URL %q is not http:// or https://", shown)
	case u.Opaque != "" || u.Hostname() == "":
		return nil, fmt.Errorf("URL %q has no host", shown)
	case u.User != nil:
		return nil, fmt.Errorf("URL %s carries credentials: nsbox does not take them in a URL", u.Redacted())
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("URL %q has a query or fragment: give the tarball's own URL, with SHA256SUMS in its directory", shown)
	}
	esc := u.EscapedPath()
	name, err := url.PathUnescape(esc[strings.LastIndex(esc, "/")+1:])
	if err != nil || name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\") || strings.IndexFunc(name, isControl) >= 0 {
		return nil, fmt.Errorf("URL %q names no file", shown)
	}
	ok := false
	for _, suf := range Suffixes {
		if strings.HasSuffix(name, suf) && len(name) > len(suf) {
			ok = true
		}
	}
	if !ok {
		return nil, fmt.Errorf("URL %q is not a tarball: its name ends in none of %s", shown, strings.Join(Suffixes, " "))
	}
	return &Source{URL: u, Name: name}, nil
}

// Beside is the URL of the file name in the tarball's directory (its
// SHA256SUMS and SHA256SUMS.gpg).
func (s *Source) Beside(name string) *url.URL {
	return s.URL.ResolveReference(&url.URL{Path: name})
}

// String is the URL as the user gave it (it carries no credentials).
func (s *Source) String() string { return s.URL.String() }

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// redact hides the credentials of a URL that may not parse, for errors:
// whatever is between "://" and the last "@" before the path.
func redact(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	auth := rest
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		auth = rest[:j]
	}
	if k := strings.LastIndex(auth, "@"); k >= 0 {
		return s[:i+3] + "xxxxx" + rest[k:]
	}
	return s
}
