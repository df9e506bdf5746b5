//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// testHostPackages make a Debian root a systemd host that can run nsbox.
var testHostPackages = []string{
	"systemd", "systemd-sysv", "dbus", "iproute2", "systemd-container", "debootstrap", "util-linux", "zstd", "procps",
	// what systemd-container recommends, and apt installs with it: machine
	// names resolve on the host through machined
	"libnss-mymachines",
	// the server of nsbox -H (remote_test.go), started by the test with
	// a config of its own; its ssh.service is disabled
	"openssh-server",
}

const testHostRelease = "bookworm"

// testHost is a booted Debian root: systemd as PID 1, machined, D-Bus.
type testHost struct {
	nspawn *exec.Cmd
	leader int
	log    string
	exited chan struct{}
}

// testHostRoot returns the cached test host root, bootstrapping it on the
// first run. The cache key covers the release and the package list.
func testHostRoot() (string, error) {
	sum := sha256.Sum256([]byte(testHostRelease + " " + strings.Join(testHostPackages, ",") + " v1"))
	dir := filepath.Join(cacheDir, "testhost-"+testHostRelease+"-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(filepath.Join(dir, "usr", "bin", "systemd-nspawn")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp := dir + ".tmp"
	_ = exec.Command("rm", "-rf", "--one-file-system", tmp).Run()
	debs := filepath.Join(cacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "e2e: bootstrapping the test host into %s (cached for later runs)\n", dir)
	start := time.Now()
	cmd := exec.Command("debootstrap", "--variant=minbase", "--cache-dir="+debs,
		"--include="+strings.Join(testHostPackages, ","), testHostRelease, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		tail := string(out)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return "", fmt.Errorf("debootstrap test host: %v\n%s", err, tail)
	}
	// Copies of one root would share a machine id; nspawn then refuses to
	// link journals. Empty means "generate one at boot".
	for path, content := range map[string]string{
		"etc/machine-id": "",
		"etc/hostname":   "nsbox-e2e-host\n",
	} {
		if err := os.WriteFile(filepath.Join(tmp, path), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	// The test starts its own sshd where it needs one (remote_test.go):
	// none listens in a test host of its own accord.
	for _, l := range []string{"etc/systemd/system/multi-user.target.wants/ssh.service", "etc/systemd/system/sshd.service"} {
		if err := os.Remove(filepath.Join(tmp, l)); err != nil && !os.IsNotExist(err) {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Join(tmp, "var/cache/nsbox"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "e2e: test host bootstrapped in %s\n", time.Since(start).Round(time.Second))
	return dir, nil
}

// bootTestHost boots an ephemeral copy of the test host root with the
// freshly built nsbox in it, and waits for its systemd.
func bootTestHost() (*testHost, error) {
	return bootHost("nsbox-e2e-host",
		// Machines in memory: the machined scenarios copy 250 MB trees
		// a dozen times, and this disk's writeback made each copy take
		// seconds. The direct scenarios keep theirs on disk. The
		// scenarios' machines are in a root directory of their own;
		// /srv and /var/cache/nsbox are a user's, where the suite seeds
		// machines and a base of a user's (seedUser).
		"--tmpfs="+guestRoot+":mode=0700",
		"--tmpfs=/srv:mode=0755",
		"--tmpfs=/var/cache/nsbox:mode=0700",
		"--bind-ro="+nsboxBin+":/usr/local/bin/nsbox")
}

// bootHost boots an ephemeral copy of the test host root as machine name,
// with the suite's base cache at guestCache and the extra nspawn options,
// and waits for its systemd.
func bootHost(name string, extra ...string) (*testHost, error) {
	root, err := testHostRoot()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp("", name+"-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	h := &testHost{log: logf.Name(), exited: make(chan struct{})}
	start := time.Now()
	args := []string{"--quiet", "--directory=" + root, "--ephemeral",
		"--register=no", "--keep-unit", "--settings=no", "--boot", "--machine=" + name,
		"--capability=CAP_NET_ADMIN", "--console=read-only",
		// A network namespace of its own: its machines' veths, bridges
		// and a networkd of its own never meet this host's.
		"--private-network",
		// The suite's base cache: the test host has no network of its own.
		"--bind=" + suiteCache + ":" + guestCache}
	h.nspawn = exec.Command("systemd-nspawn", append(args, extra...)...)
	h.nspawn.Stdout, h.nspawn.Stderr = logf, logf
	h.nspawn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.nspawn.Start(); err != nil {
		return nil, fmt.Errorf("boot test host: %w", err)
	}
	go func() { _ = h.nspawn.Wait(); close(h.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for h.leader == 0 {
		if time.Now().After(deadline) {
			h.PowerOff()
			return nil, fmt.Errorf("test host has no PID 1 after 60s; log %s", h.log)
		}
		select {
		case <-h.exited:
			log, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("test host exited:\n%s", log)
		case <-time.After(20 * time.Millisecond):
		}
		h.leader = containerChild(h.nspawn.Process.Pid)
	}
	// "offline" means its systemd does not answer yet: poll, do not --wait.
	state := ""
	for deadline := time.Now().Add(120 * time.Second); ; {
		out, _ := exec.Command("nsenter", append(h.prefix(), "systemctl", "is-system-running")[1:]...).Output()
		state = strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			h.PowerOff()
			return nil, fmt.Errorf("test host is %q after 120s; log %s", state, h.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "e2e: test host %s %s after %s\n", name, state, time.Since(start).Round(10*time.Millisecond))
	return h, nil
}

// prefix runs a command inside the test host with a clean environment.
func (h *testHost) prefix() []string {
	return []string{"nsenter", "-t", strconv.Itoa(h.leader), "-a", "-r", "-w", "--", "/usr/bin/env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
}

// PowerOff shuts the test host down (SIGRTMIN+4 to its systemd), and
// kills it if it has not stopped within a minute. nspawn then removes the
// ephemeral copy, its mounts and veths.
func (h *testHost) PowerOff() {
	select {
	case <-h.exited:
		return
	default:
	}
	if h.leader > 0 {
		_ = syscall.Kill(h.leader, syscall.Signal(34+4))
	}
	select {
	case <-h.exited:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-h.nspawn.Process.Pid, syscall.SIGKILL)
		<-h.exited
	}
}

// containerChild is the child of nspawn in a PID namespace of its own.
func containerChild(nspawn int) int {
	own, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", nspawn))
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", nspawn))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns != own {
				return pid
			}
		}
	}
	return 0
}
