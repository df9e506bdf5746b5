package download

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/host"
)

// ErrSignature says a signature does not verify against the keyring.
var ErrSignature = errors.New("signature does not verify")

// DefaultKeyrings are the keyrings --verify=signature uses when none is
// given, the first that exists: systemd's for importctl and machinectl
// pull-tar (the local one first; .pgp is systemd 256's name, .gpg the
// older one).
var DefaultKeyrings = []string{
	"/etc/systemd/import-pubring.pgp",
	"/etc/systemd/import-pubring.gpg",
	"/usr/lib/systemd/import-pubring.pgp",
	"/usr/lib/systemd/import-pubring.gpg",
}

// maxKeyring bounds what nsbox reads of a keyring.
const maxKeyring = 16 << 20

// FindKeyring is the keyring to verify with: the one given, or the first
// of DefaultKeyrings that exists.
func FindKeyring(given string, defaults []string) (string, error) {
	if given != "" {
		return given, nil
	}
	for _, k := range defaults {
		if _, err := os.Stat(k); err == nil {
			return k, nil
		}
	}
	return "", fmt.Errorf("--verify=signature needs a keyring, and none of %s is there (give one: --keyring FILE)", strings.Join(defaults, ", "))
}

// VerifySignature checks sig, a detached OpenPGP signature (binary or
// armored), of data against the public keys in keyring, with gpgv as
// importctl has gpg do it. The keyring is read once and handed to gpgv
// as a private copy (binary: gpgv reads no armor), with data and sig,
// in a directory of its own that also serves as gpgv's home, so nothing
// of root's GnuPG home is read or written. It returns the fingerprint of
// the key that made the signature.
func VerifySignature(ctx context.Context, r host.Runner, keyring string, sig, data []byte) (string, error) {
	keys, err := readKeyring(keyring)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "nsbox-gpgv-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	for name, b := range map[string][]byte{"keyring.gpg": keys, "SHA256SUMS": data, "SHA256SUMS.gpg": sig} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return "", err
		}
	}
	var status bytes.Buffer
	err = r.Run(ctx, &host.Cmd{Path: "gpgv", Args: []string{
		"--homedir", dir, "--status-fd", "1", "--keyring", filepath.Join(dir, "keyring.gpg"),
		filepath.Join(dir, "SHA256SUMS.gpg"), filepath.Join(dir, "SHA256SUMS"),
	}, Stdout: &status})
	if errors.Is(err, host.ErrToolMissing) {
		return "", fmt.Errorf("gpgv %w (install it: apt-get install gpgv)", host.ErrToolMissing)
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	fpr := ""
	for _, l := range strings.Split(status.String(), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "[GNUPG:]" && f[1] == "VALIDSIG" {
			fpr = f[2]
		}
	}
	if err != nil || fpr == "" {
		why := "no key of it made the signature, or the signature is not of this SHA256SUMS"
		switch {
		case strings.Contains(status.String(), "NO_PUBKEY"):
			why = "it was made by a key that is not in the keyring"
		case strings.Contains(status.String(), "BADSIG"):
			why = "SHA256SUMS is not what was signed"
		case strings.Contains(status.String(), "NODATA"):
			why = "SHA256SUMS.gpg is not an OpenPGP signature"
		}
		return "", fmt.Errorf("%w against %s: %s", ErrSignature, keyring, why)
	}
	return fpr, nil
}

// readKeyring reads a keyring file, armored or binary, and returns it
// binary.
func readKeyring(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO planted at the path does not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("keyring %s is not a file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyring+1))
	if err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	if len(b) > maxKeyring {
		return nil, fmt.Errorf("keyring %s is larger than %d MiB: not a keyring", path, maxKeyring>>20)
	}
	if b, err = bootstrap.Dearmor(b); err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("keyring %s is empty", path)
	}
	return b, nil
}
