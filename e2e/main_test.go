//go:build e2e

// Package e2e proves nsbox against the real systemd-nspawn, debootstrap,
// systemd-machined and D-Bus. It drives the built binary and imports none
// of nsbox's packages. Run it with "just e2e" (root needed).
//
// Two environments run the same scenarios:
//   - direct: nsbox's own backend, on this host, when systemd is not PID 1;
//   - machined: on this host when systemd is PID 1 and machined answers,
//     otherwise inside a booted Debian test host (a real systemd host,
//     built once and cached).
//
// It runs beside a user's own machines and bases and leaves them as they
// were: its machines are named e2e-..., in root directories of its own,
// copied from a base cache of its own, and it checks that it did so
// (userhost_test.go).
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

var (
	// nsboxBin is the binary under test, built by TestMain.
	nsboxBin string
	// repoRoot is the repository's top directory.
	repoRoot string
	// cacheDir keeps the test host root and downloaded packages.
	cacheDir string
	// suiteCache is the scenarios' base cache (their --cache-dir), kept
	// under cacheDir across runs: a warm run bootstraps nothing, and the
	// host's own cache (/var/cache/nsbox) is never used.
	suiteCache string
	// suiteBaseKey is the key of the bookworm base in suiteCache.
	suiteBaseKey string
	// userHere and userGuest hold what the suite seeded as a user's on
	// this host and in the test host, and how that was (seedUser).
	userHere, userGuest *userHost
	// host is the booted test host, when one was needed (hostOnce).
	host     *testHost
	hostErr  error
	hostOnce sync.Once
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		msg := "e2e: end-to-end tests need root (run: sudo just e2e)"
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, msg)
			return 1
		}
		fmt.Fprintln(os.Stderr, msg+"; skipping")
		return 0
	}
	var err error
	repoRoot, err = filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cacheDir = os.Getenv("NSBOX_E2E_CACHE")
	if cacheDir == "" {
		cacheDir = filepath.Join(repoRoot, ".cache", "e2e")
	}
	suiteCache = filepath.Join(cacheDir, "nsbox")
	// What the suite finds in /var/tmp is not its own: it checks only
	// for what it adds there.
	tmpBefore, _ := filepath.Glob("/var/tmp/*e2e-*")
	work, err := os.MkdirTemp("", "nsbox-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	// The binary must be reachable by an unprivileged user (the not-root cases).
	if err := os.Chmod(work, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	nsboxBin = filepath.Join(work, "nsbox")
	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", nsboxBin, ".")
	build.Dir = repoRoot
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build nsbox:", err)
		return 1
	}
	if taken := suiteNamesTaken(); len(taken) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: the suite's machine names (e2e-...) are in use on this host: %s\n"+
			"e2e: it makes and removes machines of those names, so it does not run beside them (a killed run leaves them: nsbox --root-dir DIR remove --force NAME)\n",
			strings.Join(taken, " "))
		return 1
	}
	if suiteBaseKey, err = suiteBase(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the suite's base:", err)
		return 1
	}
	// The proof that the suite lives beside a user's machines: some of a
	// user's, seeded here, are as they were at the end.
	if userHere, err = seedUser("this host", nil, nsboxBin, filepath.Join(suiteCache, "bases", suiteBaseKey, "root")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: seed this host with a user's machines:", err)
		return 1
	}
	// The test host is powered off and the seeded machines removed
	// however the run ends: a failing test, Ctrl-C, or SIGTERM from a CI
	// timeout.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %v: powering the test host off, removing what the suite seeded\n", s)
		if host != nil {
			host.PowerOff()
		}
		if err := userHere.remove(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
		os.Exit(130)
	}()
	code := m.Run()
	if host != nil {
		code = max(code, userGuest.report())
		// The test host is ephemeral: powering it off removes what was
		// seeded there.
		host.PowerOff()
		if code == 0 {
			// Its console log is for a failure.
			os.Remove(host.log)
		}
	}
	code = max(code, userHere.report())
	if err := userHere.remove(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	// The scenarios clean up after themselves on this host too.
	if left := newPaths("/var/tmp/*e2e-*", tmpBefore); len(left) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "e2e: left on this host: %v\n", left)
		return 1
	}
	return code
}

// newPaths are the paths matching glob that were not in before.
func newPaths(glob string, before []string) []string {
	had := map[string]bool{}
	for _, p := range before {
		had[p] = true
	}
	now, _ := filepath.Glob(glob)
	var out []string
	for _, p := range now {
		if !had[p] {
			out = append(out, p)
		}
	}
	return out
}

// systemdBooted reports whether systemd is PID 1 here.
func systemdBooted() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
