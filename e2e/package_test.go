//go:build e2e

package e2e

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestPackage proves nsbox as users install it: the Debian package that
// just deb builds from the tree is clean under lintian, installs with
// apt-get into a clean Debian 12 host (a second copy of the test host,
// without the suite's binary), works there from create to remove with its
// man page and completion, and purges without a trace of its own files and
// with the user's machines kept; just install and uninstall put the same
// files in the same places under a PREFIX and take them away.
func TestPackage(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Fatal("no lintian (just deps installs it)")
	}
	out := t.TempDir()
	if err := os.Chmod(out, 0o755); err != nil { // apt's _apt user reads the package
		t.Fatal(err)
	}
	built := outerSh(t, "just deb "+out)
	deb := lastLine(built)
	if !strings.HasPrefix(filepath.Base(deb), "nsbox_") || !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("just deb printed %q, not the package's path", built)
	}
	version := outerSh(t, "dpkg-deb -f "+deb+" Version")
	// Warnings too: the package is clean, not just acceptable.
	outerSh(t, "lintian --fail-on error,warning "+deb)
	files := debFiles(t, deb)

	t.Run("just install and uninstall", func(t *testing.T) {
		stage := t.TempDir()
		outerSh(t, "just PREFIX=/opt/nsbox DESTDIR="+stage+" install")
		var got []string
		_ = filepath.WalkDir(stage, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				got = append(got, strings.TrimPrefix(p, stage))
			}
			return err
		})
		// The package's files, moved under the PREFIX; Debian's own
		// changelog and copyright are the package's alone, and zsh reads
		// an admin's completions from site-functions.
		var want []string
		for _, f := range files {
			if strings.HasSuffix(f, "/changelog.gz") || strings.HasSuffix(f, "/copyright") {
				continue
			}
			f = strings.Replace(f, "/usr/", "/opt/nsbox/", 1)
			want = append(want, strings.Replace(f, "zsh/vendor-completions", "zsh/site-functions", 1))
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("just install put\n  %s\nwant the package's files\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		if v := outerSh(t, stage+"/opt/nsbox/bin/nsbox --version"); !strings.HasPrefix(v, "nsbox ") {
			t.Errorf("installed nsbox --version: %q", v)
		}
		outerSh(t, "just PREFIX=/opt/nsbox DESTDIR="+stage+" uninstall")
		if left := outerSh(t, "find "+stage+" ! -type d"); left != "" {
			t.Errorf("just uninstall left:\n%s", left)
		}
	})

	t.Run("installed with apt", func(t *testing.T) {
		h, err := bootHost("nsbox-e2e-pkg", "--bind-ro="+out+":/var/tmp/nsbox-deb")
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			h.PowerOff()
			if !t.Failed() {
				os.Remove(h.log)
			}
		}()
		e := &env{name: "package", prefix: h.prefix(), nsbox: "/usr/bin/nsbox", host: h}
		pkg := "/var/tmp/nsbox-deb/" + filepath.Base(deb)
		// The test host has no network: what apt would fetch (the
		// package's Recommends, and man-db and bash-completion to try the
		// man page and completion) is fetched here once, checked against
		// the archive's hashes, and put where apt looks first.
		aptCache(t, e, h, "apt-get install --print-uris -qq "+pkg+" man-db bash-completion")
		e.mustSh(t, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q man-db bash-completion")
		e.mustSh(t, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "+pkg)
		// Its dependencies and recommendations, from the archive.
		e.mustSh(t, "dpkg -s systemd-container debootstrap iproute2 mmdebstrap zstd nftables btrfs-progs dbus >/dev/null")
		if p := strings.TrimSpace(e.mustSh(t, "command -v nsbox")); p != "/usr/bin/nsbox" {
			t.Errorf("nsbox is %s, want /usr/bin/nsbox", p)
		}
		if v := e.mustSh(t, "nsbox --version"); !strings.HasPrefix(v, "nsbox "+version+" ") {
			t.Errorf("nsbox --version says %q; the package is %s", v, version)
		}
		if r := e.sh(t, "nsbox doctor"); r.code != 0 {
			t.Errorf("doctor fails with the package's dependencies installed:\n%s", r)
		}
		var checks []struct{ Name, Version string }
		if err := json.Unmarshal([]byte(e.sh(t, "nsbox doctor -o json").stdout), &checks); err != nil ||
			len(checks) == 0 || checks[0].Name != "nsbox" || !strings.HasPrefix(checks[0].Version, version+" ") {
			t.Errorf("doctor -o json does not begin with nsbox %s: %+v (%v)", version, checks, err)
		}
		if man := e.mustSh(t, "MANPAGER=cat MANWIDTH=80 man nsbox"); !strings.Contains(man, "nsbox - ") || !strings.Contains(man, "COMMANDS") {
			t.Errorf("man nsbox:\n%s", man)
		}
		comp := e.mustSh(t, `bash -c '. /usr/share/bash-completion/bash_completion; _completion_loader nsbox; `+
			`COMP_WORDS=(nsbox sta); COMP_CWORD=1; _nsbox; printf "%s\n" "${COMPREPLY[@]}"'`)
		if !strings.Contains(comp, "start") || !strings.Contains(comp, "status") {
			t.Errorf("bash completion of 'nsbox sta' offers %q", comp)
		}

		// A machine's life with the installed binary, in the user's
		// places (/srv); the base is the suite's.
		cache := "--cache-dir=" + guestCache
		e.mustSh(t, "nsbox "+cache+" create e2e-pkg --release bookworm")
		e.mustSh(t, "nsbox "+cache+" create e2e-pkg-kept --release bookworm")
		e.mustSh(t, "nsbox boot e2e-pkg")
		if rel := e.mustSh(t, "nsbox shell e2e-pkg -- cat /etc/os-release"); !strings.Contains(rel, "bookworm") {
			t.Errorf("shell: os-release says %q", rel)
		}
		var st struct {
			State        string `json:"state"`
			NsboxVersion string `json:"nsbox_version"`
		}
		if err := json.Unmarshal([]byte(e.mustSh(t, "nsbox status e2e-pkg -o json")), &st); err != nil ||
			st.State != "running" || !strings.HasPrefix(st.NsboxVersion, version+" ") {
			t.Errorf("status -o json after boot: %+v (%v); want running, by nsbox %s", st, err, version)
		}
		e.mustSh(t, "nsbox stop e2e-pkg && nsbox remove e2e-pkg")

		// Purge: the package's files go, the user's machine stays, and
		// it says what it left where.
		purge := e.mustSh(t, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q nsbox 2>&1")
		for _, says := range []string{"/srv", "/var/cache/nsbox", "/var/lib/nsbox"} {
			if !strings.Contains(purge, says) {
				t.Errorf("purge does not say what it left in %s:\n%s", says, purge)
			}
		}
		if r := e.sh(t, "dpkg -s nsbox"); r.code == 0 {
			t.Errorf("nsbox is still installed after purge:\n%s", r.stdout)
		}
		for _, f := range files {
			if r := e.sh(t, "test -e "+f+" || test -L "+f); r.code == 0 {
				t.Errorf("purge left %s", f)
			}
		}
		// An overlay machine (the default): its link and its own upper
		// stay.
		e.mustSh(t, "test -L /srv/e2e-pkg-kept && test -f /srv/.nsbox/.overlay/e2e-pkg-kept/upper/etc/hostname")
	})
}

// outerSh runs script on this host, from the repository's top, and
// returns its trimmed stdout; it fails the test when the script fails.
func outerSh(t *testing.T, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = repoRoot
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", script, err, out, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// debFiles lists the files (not directories) a package holds, as absolute
// paths.
func debFiles(t *testing.T, deb string) []string {
	var files []string
	for _, l := range strings.Split(outerSh(t, "dpkg-deb -c "+deb), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && !strings.HasPrefix(f[0], "d") {
			files = append(files, strings.TrimPrefix(f[5], "."))
		}
	}
	if len(files) == 0 {
		t.Fatalf("%s holds no files", deb)
	}
	return files
}

// printURI is a line of apt-get --print-uris: 'URI' FILE SIZE HASH, the
// hash as MD5Sum:HEX or SHA256:HEX. apt checks the packages it finds in
// its cache against the SHA256 of its lists again before it installs them.
var printURI = regexp.MustCompile(`^'([^']+)' (\S+) (\d+) (MD5Sum|SHA256):([0-9a-f]+)$`)

// aptCache puts into the test host's apt cache the packages that
// printURIs (an apt-get --print-uris command run there) says apt would
// fetch: from cacheDir/apt, fetched from the archive on first use.
func aptCache(t *testing.T, e *env, h *testHost, printURIs string) {
	dir := filepath.Join(cacheDir, "apt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	archives := fmt.Sprintf("/proc/%d/root/var/cache/apt/archives", h.leader)
	for _, l := range strings.Split(e.mustSh(t, printURIs), "\n") {
		m := printURI.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		uri, file, hash := m[1], m[2], hashSpec{m[4], m[5]}
		size, _ := strconv.ParseInt(m[3], 10, 64)
		cached := filepath.Join(dir, file)
		if err := checkHash(cached, hash); err != nil {
			if err := download(uri, cached, size, hash); err != nil {
				t.Fatalf("fetch %s for the test host: %v (its package lists may be older than the archive: remove %s/testhost-* to bootstrap it again)", file, err, cacheDir)
			}
		}
		data, err := os.ReadFile(cached)
		if err == nil {
			err = os.WriteFile(filepath.Join(archives, file), data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// hashSpec is a hash apt gives: its kind (MD5Sum, SHA256) and value.
type hashSpec struct{ kind, value string }

func checkHash(path string, want hashSpec) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var h hash.Hash = sha256.New()
	if want.kind == "MD5Sum" {
		h = md5.New()
	}
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.value {
		return fmt.Errorf("%s: %s %s, want %s", path, want.kind, got, want.value)
	}
	return nil
}

// download fetches uri to path through a temporary file, and keeps it
// only when its size and hash are the archive's.
func download(uri, path string, size int64, hash hashSpec) error {
	resp, err := http.Get(uri)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", uri, resp.Status)
	}
	tmp := path + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%s: %d bytes, want %d", uri, n, size)
	}
	if err == nil {
		err = checkHash(tmp, hash)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
