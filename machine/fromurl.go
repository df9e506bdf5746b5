package machine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/download"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/image"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/sirupsen/logrus"
)

// How create --from URL verifies the tarball, as importctl's --verify.
const (
	VerifyChecksum  = "checksum"  // its line in SHA256SUMS beside it (the default)
	VerifySignature = "signature" // and SHA256SUMS.gpg over SHA256SUMS, by a key of the keyring
	VerifyNo        = "no"        // not at all
)

// IsURLSource reports whether create --from names a tarball's URL.
func IsURLSource(s string) bool { return download.IsURL(s) }

// ErrVerify says a tarball from a URL failed its verification: its
// checksum, SHA256SUMS or signature.
var ErrVerify = errors.New("verification failed")

// DownloadsDir is where verified downloads are kept, under the cache
// directory: CACHE/downloads/KEY, KEY the sha256 of the URL and the
// tarball's sha256, so that a second create of one verified URL does not
// download again; .#KEY.* beside them are downloads in progress (or cut
// short by a kill: swept by the next create from a URL, and by prune).
func (m *Manager) DownloadsDir() string { return filepath.Join(m.CacheDir, "downloads") }

// createFromURL makes machine name from the root file system tarball at
// the URL o.From, verified as importctl verifies (o.Verify): the tarball
// is downloaded into a private file in the cache, its sha256 taken as it
// comes, and compared with its line in SHA256SUMS (whose detached
// signature SHA256SUMS.gpg gpgv checked first, with signature) before a
// byte of it is extracted; the extraction is an import's (every member
// checked, within the root dir's free space and o.MaxImageBytes).
//
// Plain http:// is refused but to loopback, unless the signature is
// checked: over plain HTTP anyone on the path could change the tarball
// and its SHA256SUMS alike, so only a signature by a key the user holds
// protects it (importctl takes it with any verification).
func (m *Manager) createFromURL(ctx context.Context, name string, o CreateOptions) error {
	src, err := download.ParseURL(o.From)
	if err != nil {
		return fmt.Errorf("%w: --from %v", ErrInvalidOption, err)
	}
	verify := o.Verify
	if verify == "" {
		verify = VerifyChecksum
	}
	switch verify {
	case VerifyChecksum, VerifySignature, VerifyNo:
	default:
		return fmt.Errorf("%w: --verify %q: give checksum, signature or no", ErrInvalidOption, verify)
	}
	if o.Keyring != "" && verify != VerifySignature {
		return fmt.Errorf("%w: --keyring goes with --verify=signature", ErrInvalidOption)
	}
	if o.Storage != "" && o.Storage != storage.Copy {
		return fmt.Errorf("%w: a machine from a URL is a copy for now: leave out --storage %s", ErrInvalidOption, o.Storage)
	}
	plain := src.URL.Scheme == "http" && !download.Loopback(src.URL.Hostname())
	if plain && verify != VerifySignature {
		return fmt.Errorf("%w: %s is plain HTTP, where anyone on the path can change the tarball and its SHA256SUMS alike (use https://, or --verify=signature with a keyring)", ErrInvalidOption, src)
	}
	keyring := ""
	if verify == VerifySignature {
		if keyring, err = download.FindKeyring(o.Keyring, download.DefaultKeyrings); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidOption, err)
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
	maxBytes := o.MaxImageBytes
	if maxBytes <= 0 {
		maxBytes = DefaultImageCap
	}
	stall := o.Stall
	if stall <= 0 {
		stall = time.Minute
	}
	dir := m.DownloadsDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	sweepDownloads(ctx, dir)
	// Held shared while the download is used: prune, which takes it
	// exclusive without waiting, never removes one a create reads.
	lock, err := host.LockFile(ctx, filepath.Join(dir, ".lck"), false, true)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	client := download.Client(stall, plain)
	fail := func(err error) error {
		if errors.Is(err, download.ErrStalled) {
			err = fmt.Errorf("the server sent nothing for %s", stall)
		}
		return fmt.Errorf("%s: %w", src, err)
	}

	want, how := "", "not verified (--verify=no)"
	if verify == VerifyNo {
		logrus.Warnf("--verify=no: %s is not verified; whoever serves it, or changes it on the way, decides what the machine runs", src)
	} else {
		sumsURL := src.Beside("SHA256SUMS")
		sums, err := download.Small(ctx, client, sumsURL, download.MaxSums)
		if errors.Is(err, download.ErrNotFound) {
			return fmt.Errorf("%w: %s: no SHA256SUMS beside it (%s: %v); nsbox verifies a tarball against it (--verify=no skips that)", ErrVerify, src, sumsURL.Redacted(), err)
		}
		if err != nil {
			return fail(fmt.Errorf("SHA256SUMS: %w", err))
		}
		how = "checked against SHA256SUMS"
		if verify == VerifySignature {
			sigURL := src.Beside("SHA256SUMS.gpg")
			sig, err := download.Small(ctx, client, sigURL, download.MaxSums)
			if errors.Is(err, download.ErrNotFound) {
				return fmt.Errorf("%w: %s: no SHA256SUMS.gpg beside it (%s: %v), so its signature cannot be checked", ErrVerify, src, sigURL.Redacted(), err)
			}
			if err != nil {
				return fail(fmt.Errorf("SHA256SUMS.gpg: %w", err))
			}
			fpr, err := download.VerifySignature(ctx, m.Runner, keyring, sig, sums)
			if errors.Is(err, download.ErrSignature) {
				return fmt.Errorf("%w: %s: SHA256SUMS.gpg: %v", ErrVerify, src, err)
			}
			if err != nil {
				return fail(err)
			}
			how = fmt.Sprintf("checked against SHA256SUMS, signed by key %s of %s", fpr, keyring)
		}
		if want, err = download.FindSum(sums, src.Name); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrVerify, src, err)
		}
	}

	tb, err := m.fetchTarball(ctx, client, src, dir, want, maxBytes, o.Progress)
	if err != nil {
		return err
	}
	defer tb.close()
	res, cached := tb.res, tb.cached
	if o.Notice != nil {
		if cached {
			o.Notice(fmt.Sprintf("%s: %s, kept from an earlier download, %s", src.Name, image.FormatSize(res.Bytes), how))
		} else {
			o.Notice(fmt.Sprintf("downloaded %s: %s in %s (%s/s), %s", src.Name, image.FormatSize(res.Bytes),
				res.Time.Round(100*time.Millisecond), image.FormatSize(int64(float64(res.Bytes)/max(res.Time.Seconds(), 0.001))), how))
		}
	}
	space, err := image.FreeSpace(m.Store(), m.RootDir)
	if err != nil {
		return err
	}
	if o.Progress != nil {
		o.Progress(bootstrap.Stage{Phase: "extracting " + src.Name, Line: "extracting " + src.Name})
	}
	if err := m.extractTree(ctx, "create", name, tb.f, src.Name, &image.ArchiveChecker{Space: &space, Cap: maxBytes}); err != nil {
		return err
	}
	// What a create of it again compares.
	m.recordBase(name, storage.Record{Source: src.String()})
	if err := tb.keep(); err != nil {
		logrus.Warnf("%s: keep the download for the next create: %v", src, err)
	}
	return nil
}

// tarball is a downloaded tarball, open at its start: a cached one, or a
// new download in a temporary file (keep puts a verified one in the
// cache; close removes it otherwise).
type tarball struct {
	f      *os.File
	res    download.Result
	cached bool
	tmp    string // the temporary file, until kept or removed
	cache  string // where keep puts it; "": nowhere (not verified)
}

func (t *tarball) keep() error {
	if t.tmp == "" || t.cache == "" {
		return nil
	}
	if err := t.f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(t.tmp, t.cache); err != nil {
		return err
	}
	t.tmp = ""
	return nil
}

func (t *tarball) close() {
	t.f.Close()
	if t.tmp != "" {
		os.Remove(t.tmp)
	}
}

// fetchTarball returns the tarball of src: the cached download of it
// when there is one whose sha256 is want, or a new download that matches
// want (kept in the cache once a machine is made of it), or with no want
// (--verify=no) a download whose file is removed as soon as it is open.
func (m *Manager) fetchTarball(ctx context.Context, client *http.Client, src *download.Source, dir, want string, maxBytes int64, progress func(bootstrap.Stage)) (*tarball, error) {
	key := "download"
	t := &tarball{}
	if want != "" {
		h := sha256.Sum256([]byte(src.String() + "\n" + want))
		key = hex.EncodeToString(h[:])
		t.cache = filepath.Join(dir, key)
		if f, n, ok := openCached(t.cache, want); ok {
			t.f, t.res, t.cached = f, download.Result{Bytes: n, SHA256: want}, true
			return t, nil
		}
	}
	tmp, err := os.CreateTemp(dir, ".#"+key+".*")
	if err != nil {
		return nil, err
	}
	t.f, t.tmp = tmp, tmp.Name()
	ok := false
	defer func() {
		if !ok {
			t.close()
		}
	}()
	free, err := image.FreeSpace(dir, dir)
	if err != nil {
		return nil, err
	}
	phase := "downloading " + src.Name
	fe := &download.Fetch{Client: client, Max: maxBytes,
		Check: func(length int64) error {
			if length > free.Bytes {
				return fmt.Errorf("%w: %s is %s, and %s has %s free (less a reserve)", image.ErrNoSpace, src.Name,
					image.FormatSize(length), dir, image.FormatSize(free.Bytes))
			}
			return nil
		},
		Progress: func(done, length int64) {
			if progress == nil {
				return
			}
			st := bootstrap.Stage{Phase: phase, Package: image.FormatSize(done)}
			if length >= 0 {
				st.Package += " of " + image.FormatSize(length)
			}
			st.Line = phase + ": " + st.Package
			progress(st)
		}}
	t.res, err = fe.To(ctx, src.URL, tmp)
	switch {
	case errors.Is(err, download.ErrTooLarge):
		return nil, fmt.Errorf("%s: %w (--max-size raises the cap of %s)", src, err, image.FormatSize(maxBytes))
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("%s: %w", src, err)
	case want != "" && t.res.SHA256 != want:
		return nil, fmt.Errorf("%w: %s: its sha256 is %s, SHA256SUMS says %s: refused it", ErrVerify, src, t.res.SHA256, want)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if want == "" {
		// Nothing to keep: the open file is all there is of it.
		if err := os.Remove(t.tmp); err != nil {
			return nil, err
		}
		t.tmp = ""
	}
	ok = true
	return t, nil
}

// openCached opens a cached download and checks its sha256 again (a
// damaged one is removed, and downloaded anew).
func openCached(path, want string) (*os.File, int64, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, false
	}
	fi, err := f.Stat()
	h := sha256.New()
	var n int64
	if err == nil && fi.Mode().IsRegular() {
		n, err = io.Copy(h, f)
	}
	if err == nil && fi.Mode().IsRegular() && hex.EncodeToString(h.Sum(nil)) == want {
		if _, err := f.Seek(0, io.SeekStart); err == nil {
			return f, n, true
		}
	}
	f.Close()
	logrus.Warnf("%s is not the download it was kept as: fetching it anew", path)
	_ = os.Remove(path)
	return nil, 0, false
}

// sweepDownloads removes what downloads killed on the way left in dir,
// when no other create or prune is there (the lock is free).
func sweepDownloads(ctx context.Context, dir string) {
	l, err := host.LockFile(ctx, filepath.Join(dir, ".lck"), true, false)
	if err != nil {
		return
	}
	defer l.Unlock()
	for _, n := range listDir(dir) {
		if strings.HasPrefix(n, ".#") {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
}
