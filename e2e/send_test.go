//go:build e2e

package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// sendScenario is nsbox send between the two hosts of the remote lab:
// run on host A through -H (its sshd sessions have an ssh client of their
// own, NSBOX_SSH, to reach host B), so that it runs alike on both
// backends.
func sendScenario(t *testing.T, e *env) {
	l := startRemoteLab(t, e)
	A := l.hostA
	const (
		name  = "e2e-send"
		copyB = "e2e-send-b"
		intB  = "e2e-send-int"
		movB  = "e2e-send-mv"
	)
	// Host B as host A's nsbox send reaches it: root@ADDR, and its port.
	toB := func(newName string) []string {
		return []string{"root@" + labServerAddr + ":" + newName, "--port", "2202"}
	}
	B := l.hostB
	defer func() {
		l.run(t, "", nil, "-H", A, "remove", "--force", name)
		for _, n := range []string{copyB, intB, movB} {
			l.run(t, "", nil, "-H", B, "remove", "--force", n)
		}
	}()
	// staged lists the staging trees of host B's store.
	staged := func() string {
		out, _ := l.srv("ls -a " + l.rootB + "/.nsbox 2>/dev/null | grep '^\\.#" + "e2e-send' | grep -v '\\.lck$' || true")
		return strings.TrimSpace(string(out))
	}

	t.Run("send, boot and shell there", func(t *testing.T) {
		l.must(t, "-H", A, "create", name, "--release", "bookworm")
		// Booted once with its options, which its settings file keeps.
		l.must(t, "-H", A, "boot", name, "--network", "none")
		l.must(t, "-H", A, "shell", name, "--", "sh", "-c", "echo sent-by-a > /etc/e2e-marker")
		l.must(t, "-H", A, "stop", name)
		l.must(t, "-H", A, "set", name, "--memory", "512M")
		// cat's first line names the file.
		body := func(s string) string { _, rest, _ := strings.Cut(s, "\n"); return rest }
		settingsA := body(l.must(t, "-H", A, "cat", name).stdout)
		r := l.must(t, append([]string{"-H", A, "send", "-o", "json", name}, toB(copyB)...)...)
		var res struct {
			NewName string `json:"new_name"`
			Bytes   int64  `json:"bytes"`
			SHA256  string `json:"sha256"`
			Moved   bool   `json:"moved"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.NewName != copyB || res.Bytes < 10<<20 || len(res.SHA256) != 64 || res.Moved {
			t.Fatalf("send -o json: %v %+v\n%s", err, res, r)
		}
		// Nothing changed on A.
		if r := l.must(t, "-H", A, "status", name); !strings.Contains(r.stdout, "stopped") {
			t.Errorf("the sent machine on A:\n%s", r)
		}
		// B has it, with its settings and limits.
		if r := l.must(t, "-H", B, "cat", copyB); body(r.stdout) != settingsA || !strings.Contains(settingsA, "VirtualEthernet=no") {
			t.Errorf("the settings file on B:\n%s", r)
		}
		if r := l.must(t, "-H", B, "status", "-o", "json", copyB); !strings.Contains(r.stdout, "536870912") {
			t.Errorf("the limits on B (512M):\n%s", r)
		}
		l.must(t, "-H", B, "boot", copyB)
		if r := l.must(t, "-H", B, "shell", copyB, "--", "cat", "/etc/e2e-marker", "/etc/hostname"); r.stdout != "sent-by-a\n"+copyB+"\n" {
			t.Errorf("in the copy on B (its marker, its own hostname):\n%s", r)
		}
		l.must(t, "-H", B, "stop", copyB)
		if s := staged(); s != "" {
			t.Errorf("staging trees left on B: %s", s)
		}
	})

	t.Run("a name that exists there", func(t *testing.T) {
		r := l.run(t, "", nil, append([]string{"-H", A, "send", name}, toB(copyB)...)...)
		if r.code != 1 || !strings.Contains(r.stderr, "already exists") || !strings.Contains(r.stderr, "refused") {
			t.Errorf("a send to a name that exists there:\n%s", r)
		}
		if s := staged(); s != "" {
			t.Errorf("staging trees left on B: %s", s)
		}
		for _, bad := range []string{"../etc", "a;touch /tmp/e2e-send-pwned", "$(id)", "a/b"} {
			r := l.run(t, "", nil, "-H", A, "send", name, "root@"+labServerAddr+":"+bad, "--port", "2202")
			if r.code != 2 || !strings.Contains(r.stderr, "invalid machine name") {
				t.Errorf("NEWNAME %q:\n%s", bad, r)
			}
		}
		if out, _ := l.srv("ls /tmp/e2e-send-pwned 2>&1 || true"); !strings.Contains(string(out), "No such file") {
			t.Errorf("a NEWNAME ran a command: %s", out)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		// 800 MB that do not compress: seconds on the wire.
		l.must(t, "-H", A, "shell", name, "--", "dd", "if=/dev/urandom", "of=/root/big", "bs=1M", "count=800", "status=none")
		defer l.must(t, "-H", A, "shell", name, "--", "rm", "/root/big")
		argv := l.argv(nil, append([]string{"-H", A, "send", name}, toB(intB)...)...)
		cmd := exec.Command(argv[0], argv[1:]...)
		var out safeBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once B stages it, the ssh of A's nsbox send is killed.
		deadline := time.Now().Add(60 * time.Second)
		for staged() == "" {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the send never started there: %s", out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		pid, err := l.srv("pgrep -n -f '[s]sh -F " + l.sdir + "/ssh_config.srv .*receive.*" + intB + "'")
		if err != nil {
			t.Fatalf("no ssh of the send: %s", pid)
		}
		if _, err := l.srv("kill -9 " + strings.TrimSpace(string(pid))); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 255 || !strings.Contains(out.String(), "broke") {
			t.Errorf("a send whose ssh was killed: exit %d, want 255\n%s", code, out.String())
		}
		deadline = time.Now().Add(20 * time.Second)
		for staged() != "" {
			if time.Now().After(deadline) {
				t.Fatalf("an interrupted send left on B: %s", staged())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if r := l.run(t, "", nil, "-H", B, "status", intB); r.code == 0 {
			t.Errorf("an interrupted send made the machine on B:\n%s", r)
		}
		if out, _ := l.srv("ls /etc/systemd/nspawn/" + intB + ".nspawn 2>&1 || true"); !strings.Contains(string(out), "No such file") {
			t.Errorf("an interrupted send left a settings file on B: %s", out)
		}
		if r := l.must(t, "-H", A, "status", name); !strings.Contains(r.stdout, "stopped") {
			t.Errorf("the machine on A after an interrupted send:\n%s", r)
		}
		if out, _ := exec.Command("pgrep", "-af", "__remote 2 receive").Output(); len(out) > 0 {
			t.Errorf("a receive lives on: %s", out)
		}
	})

	t.Run("a running machine is refused", func(t *testing.T) {
		l.must(t, "-H", A, "boot", name)
		r := l.run(t, "", nil, append([]string{"-H", A, "send", name}, toB(movB)...)...)
		if r.code != exitRunning || !strings.Contains(r.stderr, "stop it first") {
			t.Errorf("send of a running machine:\n%s", r)
		}
		l.must(t, "-H", A, "stop", name)
	})

	t.Run("--move", func(t *testing.T) {
		idA := l.must(t, "-H", A, "shell", name, "--", "cat", "/etc/machine-id").stdout
		if len(idA) != 33 {
			t.Fatalf("the machine id on A: %q", idA)
		}
		r := l.must(t, append([]string{"-H", A, "send", "--move", name}, toB(movB)...)...)
		if !strings.Contains(r.stdout, "moved "+name) {
			t.Errorf("send --move said:\n%s", r)
		}
		if r := l.run(t, "", nil, "-H", A, "status", name); r.code == 0 {
			t.Errorf("a moved machine is still on A:\n%s", r)
		}
		// A move keeps the machine id; a hostname that was its name
		// follows the new name, as with rename.
		if r := l.must(t, "-H", B, "shell", movB, "--", "cat", "/etc/hostname", "/etc/e2e-marker", "/etc/machine-id"); !strings.HasPrefix(r.stdout, movB+"\nsent-by-a\n") || !strings.HasSuffix(r.stdout, "\n"+idA) {
			t.Errorf("the moved machine on B:\n%s", r)
		}
	})
}
