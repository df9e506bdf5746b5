//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// remoteLab is two "hosts" for nsbox -H: two sshd instances (OpenSSH's,
// with a host key made for the run) on a server, reached from a network
// namespace of the client's own through a veth pair: the only traffic is
// on that veth. Each sshd gives its sessions a root directory of its own
// (sshd_config SetEnv NSBOX_ROOT), so they are two hosts to nsbox. The
// client is nsbox on this host. The server is, for the direct backend, a
// second network namespace on this host (sshd is entered into it alone,
// not a mount namespace: the remote nsbox works on this host's files);
// for machined, the test host, a booted systemd host in a network
// namespace of its own.
type remoteLab struct {
	dir        string // the client's files (keys, ssh config), on this host
	sdir       string // the server's files, as the server sees them
	client     string // the client's network namespace
	server     string // the server's, for the direct backend
	hostA      string // root@ADDR:PORT of each sshd
	hostB      string
	rootB      string // the root directory of host B, on the server
	cacheB     string // host B's cache directory: A's, unless labOwnCacheB
	sshConfig  string
	badConfig  string // known_hosts holds another key for the host
	nsbox      string // the client's nsbox
	remoteProg string // the server's
	e          *env
}

const (
	labClientAddr = "198.51.100.1"
	labServerAddr = "198.51.100.2"
)

// srv runs a script on the server.
func (l *remoteLab) srv(script string) ([]byte, error) {
	var argv []string
	if l.e.host != nil {
		argv = append(append([]string{}, l.e.prefix...), "sh", "-euc", script)
	} else {
		argv = []string{"nsenter", "--net=/run/netns/" + l.server, "--", "sh", "-euc", script}
	}
	return exec.Command(argv[0], argv[1:]...).CombinedOutput()
}

// srvFile writes a file of the server's.
func (l *remoteLab) srvFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if l.e.host != nil {
		path = fmt.Sprintf("/proc/%d/root%s", l.e.host.leader, path)
	}
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

// labOption changes the lab: labOwnCacheB gives host B a base cache of
// its own (l.cacheB), so that what A sends it finds no base there.
type labOption int

const labOwnCacheB labOption = 1

func startRemoteLab(t *testing.T, e *env, opts ...labOption) *remoteLab {
	t.Helper()
	return startRemoteLabWith(t, e, labDirs{}, opts...)
}

// labDirs are root directories and caches of the lab's two hosts of the
// caller's (a loop btrfs each, say); empty ones are the lab's defaults.
type labDirs struct{ rootA, cacheA, rootB, cacheB string }

func startRemoteLabWith(t *testing.T, e *env, d labDirs, opts ...labOption) *remoteLab {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-remote-")
	if err != nil {
		t.Fatal(err)
	}
	l := &remoteLab{dir: dir, sdir: dir, client: "nsbox-e2e-rc", server: "nsbox-e2e-rs", nsbox: nsboxBin, remoteProg: e.nsbox, e: e,
		sshConfig: filepath.Join(dir, "ssh_config"), badConfig: filepath.Join(dir, "ssh_config.bad")}
	if e.host != nil {
		l.sdir = "/run/nsbox-remote-lab"
	}
	l.rootB = l.sdir + "/rootB"
	l.cacheB = e.cacheDir
	for _, o := range opts {
		if o == labOwnCacheB {
			l.cacheB = l.sdir + "/cacheB"
		}
	}
	if d.rootB != "" {
		l.rootB = d.rootB
	}
	if d.cacheB != "" {
		l.cacheB = d.cacheB
	}
	t.Cleanup(l.stop)
	sh := func(script string) {
		t.Helper()
		if out, err := exec.Command("sh", "-euc", script).CombinedOutput(); err != nil {
			t.Fatalf("remote lab: %v\n$ %s\n%s", err, script, out)
		}
	}
	srv := func(script string) {
		t.Helper()
		if out, err := l.srv(script); err != nil {
			t.Fatalf("remote lab, on the server: %v\n$ %s\n%s", err, script, out)
		}
	}
	peerNS := ""
	if e.host != nil {
		peerNS = fmt.Sprint(e.host.leader)
	} else {
		sh("ip netns add " + l.server)
		peerNS = l.server
	}
	if out, err := l.srv("test -x /usr/sbin/sshd"); err != nil {
		t.Fatalf("openssh-server is not installed on the server (just deps; the test host's packages): %s", out)
	}
	sh(fmt.Sprintf(`cd %[1]s
ssh-keygen -q -t ed25519 -N '' -C e2e-host -f hostkey
ssh-keygen -q -t ed25519 -N '' -C e2e-other -f otherkey
ssh-keygen -q -t ed25519 -N '' -C e2e-client -f clientkey
ip netns add %[2]s
ip link add nsbox-e2e-rv0 netns %[2]s type veth peer name nsbox-e2e-rv1 netns %[3]s
ip -n %[2]s addr add %[4]s/30 dev nsbox-e2e-rv0
ip -n %[2]s link set nsbox-e2e-rv0 up
ip -n %[2]s link set lo up`, dir, l.client, peerNS, labClientAddr))
	srv(fmt.Sprintf(`mkdir -p -m 0700 %[1]s %[1]s/rootB
mkdir -p /run/sshd
ip addr add %[2]s/30 dev nsbox-e2e-rv1
ip link set nsbox-e2e-rv1 up
ip link set lo up`, l.sdir, labServerAddr))
	hostKey, _ := os.ReadFile(filepath.Join(dir, "hostkey"))
	hostPub, _ := os.ReadFile(filepath.Join(dir, "hostkey.pub"))
	otherPub, _ := os.ReadFile(filepath.Join(dir, "otherkey.pub"))
	clientPub, _ := os.ReadFile(filepath.Join(dir, "clientkey.pub"))
	if e.host != nil {
		l.srvFile(t, l.sdir+"/hostkey", string(hostKey), 0o600)
	}
	l.srvFile(t, l.sdir+"/authorized_keys", string(clientPub), 0o600)
	keyOf := func(b []byte) string { f := strings.Fields(string(b)); return f[0] + " " + f[1] }
	var known, wrong strings.Builder
	for i, port := range []int{2201, 2202} {
		root, cache := e.rootDir, e.cacheDir
		if d.rootA != "" {
			root = d.rootA
		}
		if d.cacheA != "" {
			cache = d.cacheA
		}
		if i == 1 {
			root, cache = l.rootB, l.cacheB
		}
		conf := fmt.Sprintf("%s/sshd_%d.conf", l.sdir, port)
		l.srvFile(t, conf, fmt.Sprintf(`Port %d
ListenAddress %s
HostKey %s/hostkey
AuthorizedKeysFile %s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile %s/sshd_%d.pid
SetEnv NSBOX_ROOT=%s NSBOX_CACHE_DIR=%s NSBOX_BACKEND=%s "NSBOX_SSH=ssh -F %s/ssh_config.srv" NSBOX_REMOTE_PROGRAM=%s
`, port, labServerAddr, l.sdir, l.sdir, l.sdir, port, root, cache, e.name, l.sdir, e.nsbox), 0o600)
		fmt.Fprintf(&known, "[%s]:%d %s\n", labServerAddr, port, keyOf(hostPub))
		fmt.Fprintf(&wrong, "[%s]:%d %s\n", labServerAddr, port, keyOf(otherPub))
		// sshd goes into the background once it listens; its pid file
		// is how stop finds it.
		srv(fmt.Sprintf("/usr/sbin/sshd -f %s -E %s.log", conf, conf))
	}
	l.hostA = fmt.Sprintf("root@%s:2201", labServerAddr)
	l.hostB = fmt.Sprintf("root@%s:2202", labServerAddr)
	writeLab(t, filepath.Join(dir, "known_hosts"), known.String())
	writeLab(t, filepath.Join(dir, "known_hosts.bad"), wrong.String())
	config := func(known string) string {
		// StrictHostKeyChecking stays on: only the key made for the run.
		return fmt.Sprintf("Host *\n  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n  IdentityFile %s/clientkey\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n", known, dir)
	}
	writeLab(t, l.sshConfig, config(filepath.Join(dir, "known_hosts")))
	// The server's own ssh client, for nsbox send from host A to host B
	// (NSBOX_SSH of the sshd sessions): the same key and known hosts.
	clientKey, _ := os.ReadFile(filepath.Join(dir, "clientkey"))
	if e.host != nil {
		l.srvFile(t, l.sdir+"/clientkey", string(clientKey), 0o600)
		l.srvFile(t, l.sdir+"/known_hosts", known.String(), 0o600)
	}
	l.srvFile(t, l.sdir+"/ssh_config.srv", strings.ReplaceAll(config(l.sdir+"/known_hosts"), dir+"/clientkey", l.sdir+"/clientkey"), 0o600)
	writeLab(t, l.badConfig, config(filepath.Join(dir, "known_hosts.bad")))
	// Both sshds answer before the scenario starts.
	deadline := time.Now().Add(20 * time.Second)
	for _, h := range []string{l.hostA, l.hostB} {
		for {
			r := l.run(t, "", nil, "-H", h, "list", "-o", "json")
			if r.code == 0 {
				break
			}
			if time.Now().After(deadline) {
				logs, _ := l.srv("cat " + l.sdir + "/*.log")
				t.Fatalf("sshd on %s does not answer:\n%s\nsshd logs:\n%s", h, r, logs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return l
}

func writeLab(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (l *remoteLab) stop() {
	_, _ = l.srv("for p in " + l.sdir + "/sshd_*.pid; do [ -f \"$p\" ] && kill \"$(cat \"$p\")\"; done; rm -rf " + l.sdir + "/rootB " + l.sdir + "/cacheB; true")
	if l.e.host != nil {
		_, _ = l.srv("rm -rf " + l.sdir)
	} else {
		_ = exec.Command("ip", "netns", "del", l.server).Run()
	}
	_ = exec.Command("ip", "netns", "del", l.client).Run()
	_ = os.RemoveAll(l.dir)
}

// argv is nsbox run in the client's network namespace with the lab's
// ssh config; env adds variables (NSBOX_REMOTE_PROGRAM=... replaces it).
func (l *remoteLab) argv(env []string, args ...string) []string {
	a := []string{"nsenter", "--net=/run/netns/" + l.client, "--", "env",
		"NSBOX_SSH=ssh -F " + l.sshConfig, "NSBOX_REMOTE_PROGRAM=" + l.remoteProg, "NSBOX_ROOT=/nonexistent-local-root"}
	a = append(a, env...)
	return append(append(a, l.nsbox), args...)
}

func (l *remoteLab) run(t *testing.T, stdin string, env []string, args ...string) result {
	t.Helper()
	argv := l.argv(env, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%q did not end", args)
	}
	return result{cmd: "nsbox " + strings.Join(args, " "), stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

func (l *remoteLab) must(t *testing.T, args ...string) result {
	t.Helper()
	r := l.run(t, "", nil, args...)
	if r.code != 0 {
		t.Fatalf("nsbox -H failed:\n%s", r)
	}
	return r
}

// remoteLeft lists nsbox __remote processes still running: the remote
// side of a command must end with its connection.
func remoteLeft(t *testing.T, what string) string {
	t.Helper()
	out, _ := exec.Command("pgrep", "-af", "__remote 1 "+what).Output()
	return strings.TrimSpace(string(out))
}

func waitNoRemote(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := remoteLeft(t, what)
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the remote side of %q lives on after its connection ended:\n%s", what, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// remoteScenario is nsbox -H against nsbox on another host through ssh.
func remoteScenario(t *testing.T, e *env) {
	l := startRemoteLab(t, e)
	A, B := l.hostA, l.hostB
	const name = "e2e-remote"
	nameB := "e2e-remote-b"
	defer func() {
		// Through -H: the machine's mounts and processes are the remote
		// side's; what is left is removed even after a failure.
		l.run(t, "", nil, "-H", A, "remove", "--force", name)
		l.run(t, "", nil, "-H", B, "remove", "--force", nameB)
	}()

	t.Run("create, boot, status, list", func(t *testing.T) {
		l.must(t, "-H", A, "create", name, "--release", "bookworm")
		l.must(t, "-H", A, "boot", name, "--network", "none")
		var i info
		r := l.must(t, "-H", A, "status", "-o", "json", name)
		if err := json.Unmarshal([]byte(r.stdout), &i); err != nil || i.State != "running" || i.Root != e.rootDir+"/"+name {
			t.Fatalf("status -o json through -H: %v %+v\n%s", err, i, r)
		}
		r = l.must(t, "-H", A, "list", "-o", "json")
		var infos []info
		if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil {
			t.Fatalf("list -o json through -H is not the remote's JSON: %v\n%s", err, r.stdout)
		}
		found := false
		for _, i := range infos {
			found = found || i.Name == name && i.State == "running"
		}
		if !found {
			t.Errorf("list through -H lacks %s running:\n%s", name, r.stdout)
		}
		// The environment variable, as the flag.
		if r := l.run(t, "", []string{"NSBOX_HOST=" + A}, "status", name); r.code != 0 || !strings.Contains(r.stdout, name) {
			t.Errorf("NSBOX_HOST:\n%s", r)
		}
	})

	t.Run("fleet statuses", func(t *testing.T) {
		// The remote's exit statuses pass through ssh unchanged.
		if r := l.run(t, "", nil, "-H", A, "create", name, "--release", "bookworm"); r.code != 0 || !strings.Contains(r.stderr, name+" exists already") {
			t.Errorf("a create again through -H:\n%s", r)
		}
		for _, c := range []struct {
			args []string
			code int
			says string
		}{
			{[]string{"create", name, "--release", "trixie"}, exitExists, "already exists"},
			{[]string{"boot", name}, exitRunning, "is running"},
			{[]string{"remove", name}, exitRunning, "is running"},
			{[]string{"boot", "e2e-remote-nope"}, exitNotFound, "no such machine"},
		} {
			wantFail(t, l.run(t, "", nil, append([]string{"-H", A}, c.args...)...), c.code, c.says)
		}
	})

	t.Run("shell exit statuses and words", func(t *testing.T) {
		if r := l.run(t, "", nil, "-H", A, "shell", name, "--", "sh", "-c", "exit 7"); r.code != 7 {
			t.Errorf("exit 7 came back as %d\n%s", r.code, r)
		}
		if r := l.run(t, "", nil, "-H", A, "shell", name, "--", "sh", "-c", "kill -9 $$"); r.code != 137 {
			t.Errorf("SIGKILL came back as %d\n%s", r.code, r)
		}
		// No nsbox in the machine, a command the machine's shell cannot
		// find: its own 127, not "nsbox missing".
		if r := l.run(t, "", nil, "-H", A, "shell", name, "--", "no-such-command"); r.code != 127 || strings.Contains(r.stderr, "not installed") {
			t.Errorf("the machine's own 127:\n%s", r)
		}
		words := []string{"a b", "$(touch /tmp/e2e-remote-pwned)", "it's", "l1\nl2", "-n", "`id`", "*", ";", "\"q\""}
		r := l.must(t, append([]string{"-H", A, "shell", name, "--", "printf", "[%s]"}, words...)...)
		want := ""
		for _, w := range words {
			want += "[" + w + "]"
		}
		if r.stdout != want {
			t.Errorf("words reached the machine as %q, want %q", r.stdout, want)
		}
		if _, err := os.Stat("/tmp/e2e-remote-pwned"); err == nil {
			os.Remove("/tmp/e2e-remote-pwned")
			t.Error("a word ran a command on the remote host")
		}
		if r := l.run(t, "through stdin\n", nil, "-H", A, "shell", name, "--", "cat"); r.stdout != "through stdin\n" {
			t.Errorf("stdin not passed:\n%s", r)
		}
	})

	t.Run("shell on a terminal", func(t *testing.T) {
		argv := l.argv(nil, "-H", A, "shell", name)
		cmd := exec.Command(argv[0], argv[1:]...)
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var out safeBuffer
		done := make(chan struct{})
		go func() { _, _ = io.Copy(&out, f); close(done) }()
		waitFor := func(s string) {
			t.Helper()
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(out.String(), s) {
				if time.Now().After(deadline) {
					t.Fatalf("the terminal never showed %q:\n%s", s, out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		time.Sleep(2 * time.Second)
		f.Write([]byte("stty size; tty; echo sum=$((6*7))\r"))
		waitFor("sum=42")
		if !strings.Contains(out.String(), "33 101") {
			t.Errorf("the window size did not pass:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "/dev/pts/") {
			t.Errorf("no terminal in the machine:\n%s", out.String())
		}
		// The window changes: ssh passes it on.
		pty.Setsize(f, &pty.Winsize{Rows: 20, Cols: 70})
		time.Sleep(500 * time.Millisecond)
		f.Write([]byte("stty size\r"))
		waitFor("20 70")
		// Ctrl-C stops the machine's foreground command, not the session.
		f.Write([]byte("sleep 100; echo after-sleep\r"))
		time.Sleep(time.Second)
		f.Write([]byte{3})
		time.Sleep(500 * time.Millisecond)
		f.Write([]byte("echo still-here\r"))
		waitFor("still-here")
		f.Write([]byte("exit 3\r"))
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-waited
			t.Fatalf("the remote shell did not end:\n%s", out.String())
		}
		if strings.Contains(out.String(), "nsbox-remote/") {
			t.Errorf("the protocol header reached the terminal:\n%s", out.String())
		}
		// machined's login shell does not report a status; nsbox's does.
		if code := cmd.ProcessState.ExitCode(); code != 3 && !(e.name == "machined" && code == 0) {
			t.Errorf("the shell's exit 3 came back as %d:\n%s", code, out.String())
		}
	})

	t.Run("cp both ways", func(t *testing.T) {
		work, err := os.MkdirTemp(l.dir, "cp-")
		if err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(work, "s rc$(x)")
		os.MkdirAll(filepath.Join(src, "sub dir"), 0o755)
		os.WriteFile(filepath.Join(src, "sub dir", "f'1;x"), []byte("hello\n"), 0o640)
		os.Chown(filepath.Join(src, "sub dir", "f'1;x"), 1000, 1001)
		os.Symlink("/etc/passwd", filepath.Join(src, "link"))
		// What a copy into a machine keeps: a setuid bit, a device node.
		os.WriteFile(filepath.Join(src, "suid"), []byte("s"), 0o755)
		syscall.Chmod(filepath.Join(src, "suid"), 0o4755)
		if err := syscall.Mknod(filepath.Join(src, "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
			t.Fatal(err)
		}
		syscall.Chmod(filepath.Join(src, "null"), 0o666)
		l.must(t, "-H", A, "shell", name, "--", "mkdir", "-p", "/root/in")
		l.must(t, "-H", A, "cp", src, name+":/root/in")
		got := l.must(t, "-H", A, "shell", name, "--", "sh", "-c", `cd '/root/in/s rc$(x)' && stat -c '%u %g %a' 'sub dir/f'"'"'1;x' && cat 'sub dir/f'"'"'1;x' && readlink link`).stdout
		if got != "1000 1001 640\nhello\n/etc/passwd\n" {
			t.Errorf("the copy in the remote machine (owner, mode, content, link):\n%s", got)
		}
		got = l.must(t, "-H", A, "shell", name, "--", "stat", "-c", "%n %a %F %t,%T", "/root/in/s rc$(x)/suid", "/root/in/s rc$(x)/null").stdout
		if !strings.Contains(got, "suid 4755 regular") || !strings.Contains(got, "null 666 character special file 1,3") {
			t.Errorf("a setuid bit and a device node copied into the remote machine:\n%s", got)
		}
		// Out of a machine, a device node is refused (cp's rule): gone
		// before the copy out.
		l.must(t, "-H", A, "shell", name, "--", "rm", "/root/in/s rc$(x)/null")
		// Out, into a directory here and as a new name here.
		out := filepath.Join(work, "out")
		os.Mkdir(out, 0o755)
		l.must(t, "-H", A, "cp", name+":/root/in/s rc$(x)", out)
		l.must(t, "-H", A, "cp", name+":/etc/hostname", filepath.Join(work, "hn"))
		b, _ := os.ReadFile(filepath.Join(out, "s rc$(x)", "sub dir", "f'1;x"))
		var st syscall.Stat_t
		syscall.Lstat(filepath.Join(out, "s rc$(x)", "sub dir", "f'1;x"), &st)
		if string(b) != "hello\n" || st.Uid != 1000 || st.Mode&0o777 != 0o640 {
			t.Errorf("the copy here: %q uid %d mode %o", b, st.Uid, st.Mode&0o777)
		}
		if b, _ := os.ReadFile(filepath.Join(work, "hn")); string(b) != name+"\n" {
			t.Errorf("a file out as a new name: %q", b)
		}
		// Streams pass as they are.
		r := l.must(t, "-H", A, "cp", name+":/etc/hostname", "-")
		tr := tar.NewReader(strings.NewReader(r.stdout))
		h, err := tr.Next()
		body, _ := io.ReadAll(tr)
		if err != nil || h.Name != "hostname" || string(body) != name+"\n" {
			t.Errorf("a tar stream out through -H: %v %+v %q", err, h, body)
		}
		// cp's errors are the remote's, one line, nothing left here.
		if r := l.run(t, "", nil, "-H", A, "cp", name+":/nonexistent", filepath.Join(work, "x")); r.code != 1 || !strings.Contains(r.stderr, "No such file or directory") {
			t.Errorf("a missing source:\n%s", r)
		}
		if r := l.run(t, "", nil, "-H", A, "cp", filepath.Join(work, "nonexistent"), name+":/root"); r.code != 1 || !strings.Contains(r.stderr, "No such file or directory") {
			t.Errorf("a missing source here:\n%s", r)
		}
		if left, _ := filepath.Glob(filepath.Join(work, ".#nsbox-cp*")); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	t.Run("cp interrupted", func(t *testing.T) {
		// A 4 GiB file (sparse here, zeros in the stream) takes seconds
		// through ssh; Ctrl-C here stops the copy there, which leaves
		// nothing half-made.
		big := filepath.Join(l.dir, "big")
		if err := os.Truncate(big, 0); err != nil {
			os.WriteFile(big, nil, 0o644)
		}
		if err := os.Truncate(big, 4<<30); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(big)
		argv := l.argv(nil, "-H", A, "cp", big, name+":/root")
		cmd := exec.Command(argv[0], argv[1:]...)
		var out safeBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the copy is under way there.
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := l.run(t, "", nil, "-H", A, "shell", name, "--", "sh", "-c", "ls -a /root | grep '^\\.#' || true")
			if r.stdout != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the copy never started there: %s", out.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("cp interrupted: exit %d, want 130\n%s", code, out.String())
		}
		waitNoRemote(t, "cp")
		if r := l.must(t, "-H", A, "shell", name, "--", "ls", "-a", "/root"); strings.Contains(r.stdout, ".#") || strings.Contains(r.stdout, "big") {
			t.Errorf("an interrupted copy left in the machine's /root:\n%s", r.stdout)
		}
	})

	t.Run("logs -f interrupted", func(t *testing.T) {
		argv := l.argv(nil, "-H", A, "logs", name, "-f", "-n", "3")
		cmd := exec.Command(argv[0], argv[1:]...)
		var out safeBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		l.must(t, "-H", A, "shell", name, "--", "logger", "-t", "e2e", "remote-log-line")
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), "remote-log-line") && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(out.String(), "remote-log-line") {
			t.Errorf("logs -f through -H did not follow:\n%s", out.String())
		}
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("logs -f interrupted: exit %d, want 130\n%s", code, out.String())
		}
		waitNoRemote(t, "logs")
	})

	t.Run("events", func(t *testing.T) {
		argv := l.argv(nil, "-H", A, "events", "-o", "json")
		cmd := exec.Command(argv[0], argv[1:]...)
		stdout, _ := cmd.StdoutPipe()
		var errb safeBuffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 100)
		go func() {
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				lines <- s.Text()
			}
			close(lines)
		}()
		time.Sleep(2 * time.Second)
		l.must(t, "-H", A, "stop", name)
		seen := false
		timeout := time.After(30 * time.Second)
		for !seen {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("events ended: %s", errb.String())
				}
				var ev struct{ Event, Machine string }
				json.Unmarshal([]byte(line), &ev)
				seen = ev.Machine == name && ev.Event == "stopped"
			case <-timeout:
				t.Fatalf("no stopped event through -H; stderr: %s", errb.String())
			}
		}
		// No terminal: the remote side ends when ssh goes.
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("events interrupted: exit %d, want 130", code)
		}
		waitNoRemote(t, "events")
	})

	t.Run("two hosts in one list", func(t *testing.T) {
		l.must(t, "-H", B, "create", nameB, "--release", "bookworm")
		r := l.must(t, "-H", A, "-H", B, "list", "-o", "json")
		var rows []struct {
			Host  string `json:"host"`
			Name  string `json:"name"`
			State string `json:"state"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			t.Fatalf("list of two hosts: %v\n%s", err, r.stdout)
		}
		got := map[string]string{}
		for _, row := range rows {
			if strings.HasPrefix(row.Name, "e2e-remote") {
				got[row.Name] = row.Host
			}
		}
		if got[name] != A || got[nameB] != B || len(got) != 2 {
			t.Errorf("hosts of the machines: %v\n%s", got, r.stdout)
		}
		r = l.must(t, "-H", A, "-H", B, "list")
		if !strings.HasPrefix(r.stdout, "HOST") || !strings.Contains(r.stdout, B) {
			t.Errorf("the table has no HOST column:\n%s", r.stdout)
		}
		// One host unreachable: the other is listed, the failure named,
		// the exit status not 0.
		gone := fmt.Sprintf("root@%s:2209", labServerAddr)
		r = l.run(t, "", nil, "-H", A, "-H", gone, "list")
		if r.code == 0 || !strings.Contains(r.stdout, name) || !strings.Contains(r.stderr, gone) {
			t.Errorf("an unreachable host among two:\n%s", r)
		}
		// A host that answers garbage or too much: named, the others listed.
		garbage := l.sdir + "/garbage-nsbox"
		l.srvFile(t, garbage, fmt.Sprintf("#!/bin/sh\nif [ \"$NSBOX_ROOT\" = %s ]; then printf 'nsbox-remote/1-1 0.0\\n' >&2; head -c 70000000 /dev/zero; exit 0; fi\nexec %s \"$@\"\n", l.rootB, e.nsbox), 0o755)
		r = l.run(t, "", []string{"NSBOX_REMOTE_PROGRAM=" + garbage}, "-H", A, "-H", B, "list", "-o", "json")
		if r.code != 1 || !strings.Contains(r.stdout, name) || !strings.Contains(r.stderr, B) {
			t.Errorf("a host answering 70 MB of zeros:\n%s", r)
		}
		l.must(t, "-H", B, "remove", nameB)
	})

	t.Run("errors", func(t *testing.T) {
		// Another key for the host: ssh's own refusal, exit 255.
		argv := l.argv(nil, "-H", A, "list")
		argv[4] = "NSBOX_SSH=ssh -F " + l.badConfig
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 255 || !strings.Contains(string(out), "Host key verification failed") || !strings.Contains(string(out), "ssh could not connect") {
			t.Errorf("a wrong host key: %v\n%s", err, out)
		}
		// No nsbox there.
		r := l.run(t, "", []string{"NSBOX_REMOTE_PROGRAM=/nonexistent/nsbox"}, "-H", A, "list")
		if r.code != 127 || !strings.Contains(r.stderr, "nsbox is not installed on "+A) {
			t.Errorf("no nsbox there:\n%s", r)
		}
		// An nsbox from before -H, and one of a newer protocol.
		old := l.sdir + "/old-nsbox"
		l.srvFile(t, old, "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'nsbox 0.0.9 (commit 1234567)'; exit 0; }\necho 'nsbox: unknown command \"__remote\" (see: nsbox --help)' >&2\nexit 2\n", 0o755)
		newer := l.sdir + "/newer-nsbox"
		l.srvFile(t, newer, "#!/bin/sh\nprintf 'nsbox-remote/2-3 9.0.0\\n' >&2\nexit 126\n", 0o755)
		r = l.run(t, "", []string{"NSBOX_REMOTE_PROGRAM=" + old}, "-H", A, "list")
		if r.code != 126 || !strings.Contains(r.stderr, "nsbox there (nsbox 0.0.9 (commit 1234567)) does not speak the remote protocol") || !strings.Contains(r.stderr, "upgrade nsbox on "+A) {
			t.Errorf("an old nsbox there:\n%s", r)
		}
		r = l.run(t, "", []string{"NSBOX_REMOTE_PROGRAM=" + newer}, "-H", A, "list")
		if r.code != 126 || !strings.Contains(r.stderr, "speaks remote protocol 2 to 3 (nsbox 9.0.0)") || !strings.Contains(r.stderr, "upgrade nsbox here") {
			t.Errorf("a newer nsbox there:\n%s", r)
		}
		// The real remote side, asked for a protocol it does not speak:
		// its header says what it speaks, nothing runs, exit 126.
		raw := exec.Command("nsenter", "--net=/run/netns/"+l.client, "--", "ssh", "-F", l.sshConfig, "-p", "2201", "root@"+labServerAddr,
			e.nsbox+" __remote 9 list")
		var rawErr bytes.Buffer
		raw.Stderr = &rawErr
		rawOut, err := raw.Output()
		if !errors.As(err, &ee) || ee.ExitCode() != 126 || len(rawOut) != 0 || !strings.HasPrefix(rawErr.String(), "nsbox-remote/1-2 ") {
			t.Errorf("the remote side asked for protocol 9: %v, stdout %q, stderr %q", err, rawOut, rawErr.String())
		}
		// Values that would reach ssh's command line: refused first.
		mark := filepath.Join(l.dir, "proxy-ran")
		for _, h := range []string{"-oProxyCommand=touch " + mark, "root@-oProxyCommand=touch " + mark, "a b", A + "x"} {
			if r := l.run(t, "", nil, "-H", h, "list"); r.code != 2 {
				t.Errorf("-H %q: exit %d\n%s", h, r.code, r)
			}
		}
		if _, err := os.Stat(mark); err == nil {
			t.Error("a -H value ran a ProxyCommand")
		}
		// A machine name with shell syntax reaches the remote nsbox as
		// one word, which refuses it.
		r = l.run(t, "", nil, "-H", A, "status", "x;touch "+mark+";$(touch "+mark+")")
		if r.code != 1 || !strings.Contains(r.stderr, "invalid machine name") {
			t.Errorf("a hostile name:\n%s", r)
		}
		if _, err := os.Stat(mark); err == nil {
			t.Error("a machine name ran a command on the remote host")
		}
		// Several hosts: list only.
		if r := l.run(t, "", nil, "-H", A, "-H", B, "status", name); r.code != 2 {
			t.Errorf("status of two hosts: %s", r)
		}
	})

	t.Run("remove", func(t *testing.T) {
		l.must(t, "-H", A, "remove", name)
		if r := l.run(t, "", nil, "-H", A, "status", name); r.code != exitNotFound || !strings.Contains(r.stderr, "no such machine") {
			t.Errorf("status after remove:\n%s", r)
		}
		waitNoRemote(t, "")
	})
}

// safeBuffer is a bytes.Buffer for a writer and a reader at once.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
