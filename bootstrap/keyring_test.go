package bootstrap

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// ubuntuKey2018 is the Ubuntu Archive Automatic Signing Key (2018) as
// Canonical publishes it (chisel-releases, chisel.yaml).
func ubuntuKey2018(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/ubuntu-archive-key-2018.asc")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUbuntuArchiveKey2018Fingerprint(t *testing.T) {
	bin, err := Dearmor(ubuntuKey2018(t))
	if err != nil {
		t.Fatal(err)
	}
	packets, err := readPackets(bin)
	if err != nil {
		t.Fatal(err)
	}
	if packets[0].tag != tagPublicKey || keyFingerprint(packets[0].body) != "F6ECB3762474EDA9D21B7022871920D1991BC93C" {
		t.Fatalf("first packet: tag %d, fingerprint %s", packets[0].tag, keyFingerprint(packets[0].body))
	}
	kept, fps, err := filterKeyring(ubuntuKey2018(t), UbuntuArchiveKeys)
	if err != nil || !reflect.DeepEqual(fps, []string{"F6ECB3762474EDA9D21B7022871920D1991BC93C"}) {
		t.Fatalf("kept %v, %v", fps, err)
	}
	if !bytes.Equal(kept, bin) {
		t.Error("the key, its user ID and self-signature must be kept whole")
	}
	if err := checkPinned(kept, UbuntuArchiveKeys); err != nil {
		t.Errorf("a keyring of the 2018 key alone: %v", err)
	}
}

func TestDearmorRefusesABadChecksum(t *testing.T) {
	bad := bytes.Replace(ubuntuKey2018(t), []byte("=9AdM"), []byte("=9AdN"), 1)
	if _, err := Dearmor(bad); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("bad checksum: %v", err)
	}
	if _, err := Dearmor([]byte(armorHeader + "\n\nmQIN\n")); err == nil {
		t.Error("armor without end accepted")
	}
}

// packet encodes a new-format packet.
func packet(tag int, body []byte) []byte {
	out := []byte{0xc0 | byte(tag)}
	switch n := len(body); {
	case n < 192:
		out = append(out, byte(n))
	case n < 8384:
		n -= 192
		out = append(out, byte(n>>8)+192, byte(n))
	default:
		out = append(out, 255, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(out, body...)
}

// fakeKey is the body of a v4 RSA public key packet with made-up numbers:
// the filter reads fingerprints, not keys.
func fakeKey(seed byte) []byte {
	b := []byte{4, 0x60, 0, 0, 0, 1, 0x04, 0x00}
	for i := 0; i < 128; i++ {
		b = append(b, seed+byte(i))
	}
	return append(b, 0, 17, 1, 0, 1)
}

func TestFilterKeyring(t *testing.T) {
	ubuntu, _ := Dearmor(ubuntuKey2018(t))
	other := fakeKey(7)
	sub := fakeKey(9)
	otherFP := keyFingerprint(other)
	var ring []byte
	ring = append(ring, packet(tagPublicKey, other)...)
	ring = append(ring, packet(tagUserID, []byte("Mallory <m@example>"))...)
	ring = append(ring, packet(tagSignature, []byte{4, 0x13})...)
	ring = append(ring, ubuntu...)
	// planted after the pinned key: a subkey, a user attribute, trust
	ring = append(ring, packet(tagPublicSubkey, sub)...)
	ring = append(ring, packet(tagSignature, []byte{4, 0x18})...)
	ring = append(ring, packet(tagUserAttribute, []byte{1, 2, 3})...)
	ring = append(ring, packet(tagSignature, []byte{4, 0x10})...)
	ring = append(ring, packet(tagTrust, []byte{0})...)
	kept, fps, err := filterKeyring(ring, UbuntuArchiveKeys)
	if err != nil || !bytes.Equal(kept, ubuntu) || len(fps) != 1 {
		t.Fatalf("kept %d bytes (want the %d of the Ubuntu key alone), %v, %v", len(kept), len(ubuntu), fps, err)
	}
	if err := checkPinned(ring, UbuntuArchiveKeys); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a keyring with more than the pinned keys passed the check: %v", err)
	}
	// a subkey is kept when it is pinned as well
	kept, _, _ = filterKeyring(ring, append(slices.Clone(UbuntuArchiveKeys), keyFingerprint(sub)))
	if !bytes.Contains(kept, packet(tagPublicSubkey, sub)) || bytes.Contains(kept, packet(tagUserAttribute, []byte{1, 2, 3})) {
		t.Error("a pinned subkey must be kept, a user attribute never")
	}
	// fingerprints as people write them
	_, fps, _ = filterKeyring(ring, []string{strings.ToLower(otherFP[:4] + " " + otherFP[4:])})
	if !reflect.DeepEqual(fps, []string{otherFP}) {
		t.Errorf("spaced lower-case fingerprint: %v", fps)
	}
	for _, bad := range [][]byte{
		{0x00, 1, 2},                // no packet header
		{0x99, 0x02},                // truncated length
		packet(tagUserID, []byte{}), // not starting with a key
		append(packet(tagPublicKey, other), packet(5, []byte{1})...), // a secret key
		{0xc6, 0xe1, 1, 2},                     // partial length
		append([]byte{0x98, 10}, other[:5]...), // body shorter than its length
	} {
		if _, _, err := filterKeyring(bad, UbuntuArchiveKeys); err == nil {
			t.Errorf("%x accepted", bad)
		}
	}
}

// Throwaway test keys, made once with gpg (testdata/README.md says how),
// standing in for Ubuntu's archive keys: their fingerprints as gpg
// printed them, and a Release file signed by each.
const (
	testArchiveKey = "8B962B7B5260D16EF09C39E287359204460D0936"
	testOtherKey   = "4B474599D93FB7A67E0CD66368A6462E549BCE59"
)

// gpgvOK tells whether gpgv, run as debootstrap runs it, accepts the
// testdata Release signed by who ("archive" or "other") with keyring.
func gpgvOK(t *testing.T, keyring, who string) bool {
	t.Helper()
	if _, err := exec.LookPath("gpgv"); err != nil {
		t.Skip("gpgv is not installed (apt-get install gpgv; debootstrap needs it too)")
	}
	sig, _ := filepath.Abs("testdata/Release." + who + ".gpg")
	data, _ := filepath.Abs("testdata/Release")
	return exec.Command("gpgv", "--homedir", t.TempDir(), "--keyring", keyring, sig, data).Run() == nil
}

// keyringServer serves body at /ubuntu/project/ubuntu-archive-keyring.gpg
// on 127.0.0.1 and counts the requests.
func keyringServer(t *testing.T, body []byte) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/ubuntu/project/ubuntu-archive-keyring.gpg" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// jammyWithout is jammy on a host without Ubuntu's keyring, trusting pins.
func jammyWithout(t *testing.T, pins ...string) Release {
	r, _ := LookupRelease("jammy", "")
	r.Distro.Keyring = filepath.Join(t.TempDir(), "ubuntu-archive-keyring.gpg")
	r.Distro.ArchiveKeys = pins
	return r
}

// entries lists dir, nil when it does not exist.
func entries(t *testing.T, dir string) []string {
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

func TestResolveKeyringKeepsOnlyThePinnedKey(t *testing.T) {
	pinned, extra := mustRead(t, "testdata/test-archive-key.gpg"), mustRead(t, "testdata/test-other-key.gpg")
	srv, hits := keyringServer(t, append(slices.Clone(extra), pinned...))
	dir := filepath.Join(t.TempDir(), "keyrings")
	o := Options{Release: jammyWithout(t, testArchiveKey), Mirror: srv.URL + "/ubuntu/", KeyringDir: dir}
	path, err := ResolveKeyring(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "ubuntu-archive-keyring.gpg") {
		t.Errorf("keyring at %s", path)
	}
	if got := entries(t, dir); !reflect.DeepEqual(got, []string{"ubuntu-archive-keyring.gpg"}) {
		t.Errorf("keyring dir holds %v", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("keyring mode: %v %v", fi.Mode(), err)
	}
	if got := mustRead(t, path); !bytes.Equal(got, pinned) {
		t.Errorf("kept %d bytes, want the %d of the pinned key", len(got), len(pinned))
	}
	// gpgv, as debootstrap runs it, trusts the pinned key and not the other
	if !gpgvOK(t, path, "archive") {
		t.Error("gpgv refuses a signature by the pinned key")
	}
	if gpgvOK(t, path, "other") {
		t.Error("gpgv accepts a signature by a key that is not pinned")
	}
	// the next create reuses the copy, checked again
	if _, err := ResolveKeyring(context.Background(), o); err != nil || hits.Load() != 1 {
		t.Errorf("second resolve: %v, %d fetches", err, hits.Load())
	}
	// a copy that holds more than the pinned keys is fetched anew
	os.WriteFile(path, append(slices.Clone(pinned), extra...), 0o644)
	if _, err := ResolveKeyring(context.Background(), o); err != nil || hits.Load() != 2 {
		t.Errorf("resolve over a spoilt copy: %v, %d fetches", err, hits.Load())
	}
	if got := mustRead(t, path); !bytes.Equal(got, pinned) {
		t.Error("the spoilt copy was not replaced by the pinned key alone")
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestResolveKeyringRefusesAKeyringWithoutPinnedKeys(t *testing.T) {
	pinned := testArchiveKey
	srv, _ := keyringServer(t, mustRead(t, "testdata/test-other-key.gpg"))
	dir := filepath.Join(t.TempDir(), "keyrings")
	o := Options{Release: jammyWithout(t, pinned), Mirror: srv.URL + "/ubuntu", KeyringDir: dir}
	_, err := ResolveKeyring(context.Background(), o)
	url := srv.URL + "/ubuntu/project/ubuntu-archive-keyring.gpg"
	if err == nil || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), pinned) || strings.Contains(err.Error(), "\n") {
		t.Errorf("want one line naming %s and %s, got: %v", url, pinned, err)
	}
	if got := entries(t, dir); got != nil {
		t.Errorf("a refused keyring left %v", got)
	}
	// nor is a page that is no keyring at all taken
	srv2, _ := keyringServer(t, []byte("<html>mirror maintenance</html>"))
	o.Mirror = srv2.URL + "/ubuntu"
	if _, err := ResolveKeyring(context.Background(), o); err == nil || entries(t, dir) != nil {
		t.Errorf("an HTML page: %v, left %v", err, entries(t, dir))
	}
}

func TestResolveKeyringMirrorDown(t *testing.T) {
	srv, _ := keyringServer(t, nil)
	srv.Close() // nothing listens there now
	dir := filepath.Join(t.TempDir(), "keyrings")
	o := Options{Release: jammyWithout(t, UbuntuArchiveKeys...), Mirror: srv.URL + "/ubuntu", KeyringDir: dir}
	_, err := ResolveKeyring(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "fetching "+srv.URL+"/ubuntu/project/ubuntu-archive-keyring.gpg failed") ||
		!strings.Contains(err.Error(), "--mirror") || strings.Contains(err.Error(), "\n") {
		t.Errorf("mirror down: %v", err)
	}
	if got := entries(t, dir); got != nil {
		t.Errorf("a failed fetch left %v", got)
	}
	// a missing file on a live mirror says so
	srv2, _ := keyringServer(t, nil)
	o.Mirror = srv2.URL + "/elsewhere"
	if _, err := ResolveKeyring(context.Background(), o); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("404: %v", err)
	}
	for _, m := range []string{"ftp://mirror/ubuntu", "http:///ubuntu", "http://m/ubuntu?x=1"} {
		o.Mirror = m
		if _, err := ResolveKeyring(context.Background(), o); err == nil || entries(t, dir) != nil {
			t.Errorf("mirror %s: %v", m, err)
		}
	}
}

func TestResolveKeyringPrefersTheInstalledOne(t *testing.T) {
	r := jammyWithout(t, UbuntuArchiveKeys...)
	os.WriteFile(r.Distro.Keyring, []byte("installed"), 0o644)
	dir := filepath.Join(t.TempDir(), "keyrings")
	// no server at all: an installed keyring needs none
	got, err := ResolveKeyring(context.Background(), Options{Release: r, Mirror: "http://127.0.0.1:9/ubuntu", KeyringDir: dir})
	if err != nil || got != r.Distro.Keyring || entries(t, dir) != nil {
		t.Errorf("installed keyring: %s, %v", got, err)
	}
	// Debian's keyring is never fetched
	deb, _ := LookupRelease("bookworm", "")
	deb.Distro.Keyring = filepath.Join(t.TempDir(), "missing.gpg")
	if _, err := ResolveKeyring(context.Background(), Options{Release: deb, KeyringDir: dir}); err == nil || !strings.Contains(err.Error(), "apt-get install debian-archive-keyring") {
		t.Errorf("debian without its keyring: %v", err)
	}
}

func TestKeyringURLDefaultsToDebootstrapsMirror(t *testing.T) {
	jammy, _ := LookupRelease("jammy", "")
	for arch, want := range map[string]string{
		"amd64": "http://archive.ubuntu.com/ubuntu/project/ubuntu-archive-keyring.gpg",
		"arm64": "http://ports.ubuntu.com/ubuntu-ports/project/ubuntu-archive-keyring.gpg",
	} {
		u, err := keyringURL(Options{Release: jammy, Arch: arch})
		if err != nil || u.String() != want {
			t.Errorf("%s: %v %v", arch, u, err)
		}
	}
	u, _ := keyringURL(Options{Release: jammy, Mirror: "file:///srv/mirror/ubuntu/"})
	if u.String() != "file:///srv/mirror/ubuntu/project/ubuntu-archive-keyring.gpg" {
		t.Errorf("file mirror: %s", u)
	}
}

// TestBootstrapArgsUseTheFetchedKeyring: jammy on a host without Ubuntu's
// keyring runs debootstrap and mmdebstrap with --keyring at nsbox's copy.
func TestBootstrapArgsUseTheFetchedKeyring(t *testing.T) {
	srv, _ := keyringServer(t, func() []byte { b, _ := Dearmor(ubuntuKey2018(t)); return b }())
	jammy := jammyWithout(t, UbuntuArchiveKeys...)
	dir := filepath.Join(t.TempDir(), "keyrings")
	want := "--keyring=" + filepath.Join(dir, "ubuntu-archive-keyring.gpg")
	for _, tool := range []string{"debootstrap", "mmdebstrap"} {
		f := &fakeRunner{}
		o := Options{Release: jammy, Mirror: srv.URL + "/ubuntu", KeyringDir: dir, CacheDir: t.TempDir(), Bootstrapper: tool}
		if err := Check(o, func(string) (string, error) { return "/usr/sbin/debootstrap", nil }); err != nil {
			t.Fatalf("check: %v", err)
		}
		err := Bootstrap(context.Background(), f, o, t.TempDir(), nil, func(p string) (string, error) { return "/usr/bin/" + p, nil })
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if f.got.Path != tool || !slices.Contains(f.got.Args, want) {
			t.Errorf("%s ran %s %q, want %s", tool, f.got.Path, f.got.Args, want)
		}
		for _, a := range f.got.Args {
			if strings.Contains(a, "no-check-gpg") || strings.Contains(a, "allow-unauthenticated") {
				t.Errorf("%s without verification: %q", tool, f.got.Args)
			}
		}
	}
	// the keyring cannot be had: the bootstrapper never runs
	srv.Close()
	os.RemoveAll(dir)
	f := &fakeRunner{}
	o := Options{Release: jammy, Mirror: srv.URL + "/ubuntu", KeyringDir: dir, CacheDir: filepath.Join(t.TempDir(), "debs")}
	if err := Bootstrap(context.Background(), f, o, t.TempDir(), nil, func(p string) (string, error) { return "/usr/bin/" + p, nil }); err == nil || f.got != nil {
		t.Errorf("without a keyring: %v, ran %v", err, f.got)
	}
	if entries(t, dir) != nil || entries(t, o.CacheDir) != nil {
		t.Error("a failed keyring fetch left files behind")
	}
}

func TestResolveKeyringRefusesADirOthersWrite(t *testing.T) {
	srv, hits := keyringServer(t, mustRead(t, "testdata/test-archive-key.gpg"))
	dir := filepath.Join(t.TempDir(), "keyrings")
	o := Options{Release: jammyWithout(t, testArchiveKey), Mirror: srv.URL + "/ubuntu", KeyringDir: dir}
	if _, err := ResolveKeyring(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	// anyone could swap the checked copy before debootstrap reads it
	os.Chmod(dir, 0o777)
	if _, err := ResolveKeyring(context.Background(), o); err == nil || !strings.Contains(err.Error(), "writable by others") || hits.Load() != 1 {
		t.Errorf("a keyring dir others may write: %v", err)
	}
	os.Chmod(dir, 0o755)
	os.Remove(filepath.Join(dir, "ubuntu-archive-keyring.gpg"))
	os.Chmod(dir, 0o757)
	if _, err := ResolveKeyring(context.Background(), o); err == nil || entries(t, dir) != nil {
		t.Errorf("writing into a keyring dir others may write: %v, left %v", err, entries(t, dir))
	}
}
