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
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
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
	// The test host is powered off however the run ends: a failing test,
	// Ctrl-C, or SIGTERM from a CI timeout.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %v: powering the test host off\n", s)
		if host != nil {
			host.PowerOff()
		}
		os.Exit(130)
	}()
	code := m.Run()
	if host != nil {
		host.PowerOff()
	}
	// The scenarios clean up after themselves on this host too.
	if left, _ := filepath.Glob("/var/tmp/*e2e-*"); len(left) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "e2e: left on this host: %v\n", left)
		return 1
	}
	return code
}

// systemdBooted reports whether systemd is PID 1 here.
func systemdBooted() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
