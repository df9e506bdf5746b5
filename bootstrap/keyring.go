package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
)

// UbuntuArchiveKeys are the full fingerprints of the Ubuntu archive
// signing keys nsbox keeps from a keyring it fetches itself (on a host
// without Ubuntu's keyring package, such as Debian 12). Nothing else in
// that keyring is trusted. The sources:
//   - Ubuntu Archive Automatic Signing Key (2012) <ftpmaster@ubuntu.com>,
//     rsa4096, 790B C727 7767 219C 42C8 6F93 3B4F E6AC C0B2 1F32: the
//     apt-key listing in Ubuntu's ubuntu-keyring update for xenial
//     (Launchpad bug 1881278).
//   - Ubuntu Archive Automatic Signing Key (2018) <ftpmaster@ubuntu.com>,
//     rsa4096, F6EC B376 2474 EDA9 D21B 7022 8719 20D1 991B C93C: the key
//     block Canonical publishes in chisel-releases (chisel.yaml), kept in
//     testdata/ubuntu-archive-key-2018.asc, whose fingerprint a test
//     computes.
//
// Ubuntu releases since 20.10 are signed by the 2018 key alone; focal by
// both.
var UbuntuArchiveKeys = []string{
	"790BC7277767219C42C86F933B4FE6ACC0B21F32",
	"F6ECB3762474EDA9D21B7022871920D1991BC93C",
}

// maxKeyringSize bounds what nsbox reads of a fetched keyring (Ubuntu's
// is a few KiB).
const maxKeyringSize = 1 << 20

// keyringTimeout bounds the fetch of a keyring.
const keyringTimeout = 2 * time.Minute

// KeyringsDir is where nsbox keeps the archive keyrings it fetched, in its
// cache directory cacheDir.
func KeyringsDir(cacheDir string) string { return filepath.Join(cacheDir, "keyrings") }

// ResolveKeyring returns the keyring file to verify o's release against:
// the distro's packaged keyring when the host has it; otherwise, for a
// distro whose archive serves its keyring (Ubuntu), nsbox's own copy in
// o.KeyringDir, fetched from the mirror on first use and cut down to the
// keys of Distro.ArchiveKeys. The copy is checked again each time it is
// used. When it cannot, the error is one line naming what it tried, and
// nothing is written.
func ResolveKeyring(ctx context.Context, o Options) (string, error) {
	d := o.Release.Distro
	if _, err := os.Stat(d.Keyring); err == nil {
		return d.Keyring, nil
	}
	if d.KeyringPath == "" || len(d.ArchiveKeys) == 0 || o.KeyringDir == "" {
		return "", keyringMissing(d)
	}
	path := filepath.Join(o.KeyringDir, filepath.Base(d.Keyring))
	if _, err := os.Lstat(path); err == nil {
		// Only nsbox's user may change the copy between this check
		// and debootstrap's use of it.
		if err := keyringDirOK(o.KeyringDir); err != nil {
			return "", fmt.Errorf("%s archive keyring: %w", d.Name, err)
		}
	}
	if b, err := os.ReadFile(path); err == nil {
		err := checkPinned(b, d.ArchiveKeys)
		if err == nil {
			return path, nil
		}
		logrus.Warnf("%s: %v: fetching it anew", path, err)
	}
	src, err := keyringURL(o)
	if err != nil {
		return "", fmt.Errorf("%s archive keyring: %s is not installed, and %v (install %s)", d.Name, d.Keyring, err, d.Package)
	}
	shown := src.Redacted()
	data, err := fetchKeyring(ctx, src)
	if err != nil {
		return "", fmt.Errorf("%s archive keyring: %s is not installed, and fetching %s failed: %v (pass --mirror with a reachable %s mirror)",
			d.Name, d.Keyring, shown, err, d.Name)
	}
	kept, fps, err := filterKeyring(data, d.ArchiveKeys)
	if err != nil {
		return "", fmt.Errorf("%s archive keyring: %s: %v", d.Name, shown, err)
	}
	if len(fps) == 0 {
		return "", fmt.Errorf("%s archive keyring: %s holds none of the keys nsbox trusts (%s): refused it",
			d.Name, shown, strings.Join(d.ArchiveKeys, ", "))
	}
	if err := os.MkdirAll(o.KeyringDir, 0o755); err != nil {
		return "", fmt.Errorf("%s archive keyring: %w", d.Name, err)
	}
	if err := keyringDirOK(o.KeyringDir); err != nil {
		return "", fmt.Errorf("%s archive keyring: %w", d.Name, err)
	}
	if err := host.WriteFileAtomic(path, kept, 0o644); err != nil {
		return "", fmt.Errorf("%s archive keyring: %w", d.Name, err)
	}
	logrus.Infof("%s is not installed: verifying %s against %s, the keys %s of %s", d.Keyring, o.Release.Name, path, strings.Join(fps, ", "), shown)
	return path, nil
}

// keyringDirOK checks that dir is a directory (not a link) of nsbox's own
// user that no one else may write to: what is in it is trusted.
func keyringDirOK(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s is not this user's (move it away)", dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is writable by others (chmod go-w %s)", dir, dir)
	}
	return nil
}

// keyringMissing is the error for a distro keyring nsbox cannot stand in for.
func keyringMissing(d Distro) error {
	return fmt.Errorf("%s keyring %s %w (install it: apt-get install %s)", d.Name, d.Keyring, host.ErrToolMissing, d.Package)
}

// checkPinned tells whether keyring b holds pinned keys and nothing else
// (as a keyring filterKeyring wrote does).
func checkPinned(b []byte, pinned []string) error {
	kept, fps, err := filterKeyring(b, pinned)
	switch {
	case err != nil:
		return err
	case len(fps) == 0:
		return errors.New("holds none of the pinned keys")
	case !bytes.Equal(kept, b):
		return errors.New("holds more than the pinned keys")
	}
	return nil
}

// keyringURL is where the archive of o's mirror serves the distro's
// keyring: under o.Mirror, or under the mirror debootstrap itself uses when
// none is given.
func keyringURL(o Options) (*url.URL, error) {
	d := o.Release.Distro
	mirror := o.Mirror
	if mirror == "" {
		if mirror = d.Mirrors[o.arch()]; mirror == "" {
			mirror = d.Mirrors["*"]
		}
	}
	u, err := url.Parse(mirror)
	if err != nil || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("mirror %q is not a URL nsbox can fetch the keyring from", mirror)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("mirror %q has no host", mirror)
		}
	case "file":
	default:
		return nil, fmt.Errorf("mirror %q is not http, https or file: nsbox cannot fetch the keyring from it", mirror)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + d.KeyringPath
	u.RawPath = ""
	return u, nil
}

// fetchKeyring reads the keyring at u, at most maxKeyringSize bytes.
func fetchKeyring(ctx context.Context, u *url.URL) ([]byte, error) {
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return readBounded(f)
	}
	ctx, cancel := context.WithTimeout(ctx, keyringTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// its text repeats the URL the caller names already
			err = ue.Err
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return readBounded(resp.Body)
}

// readBounded reads r whole, refusing more than maxKeyringSize bytes.
func readBounded(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxKeyringSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyringSize {
		return nil, fmt.Errorf("larger than %d KiB: not a keyring", maxKeyringSize>>10)
	}
	return b, nil
}
