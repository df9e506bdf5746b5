package network

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// Helpers for the tests that need real network namespaces: they run as
// root only, make namespaces of their own (ip netns add) and delete them
// however the test ends. No traffic leaves those namespaces.

// testNSPrefix starts the name of every namespace the tests make.
const testNSPrefix = "nsbox-h3-test-"

var nsCount atomic.Int32

// needNamespaces skips the test unless it runs as root with iproute2.
func needNamespaces(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (apt-get install iproute2)")
	}
}

// newNS makes a network namespace and deletes it when the test ends.
func newNS(t *testing.T, label string) (string, netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("%s%s-%d-%d", testNSPrefix, label, os.Getpid(), nsCount.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	ip(t, name, "link", "set", "lo", "up")
	return name, h
}

// ip runs "ip -n ns ARGS..." and fails the test if it fails.
func ip(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs fn on an OS thread of its own that is in network namespace
// ns. Sockets fn opens stay in ns after it returns.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		if cur, err := netns.Get(); err != nil || !cur.Equal(ns) {
			// Stay locked: the runtime ends a locked thread with its goroutine.
			errc <- fmt.Errorf("thread not in the test namespace (%v)", err)
			return
		} else {
			cur.Close()
		}
		err = fn()
		if serr := netns.Set(orig); serr != nil {
			errc <- fmt.Errorf("back to the original namespace: %w", serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
