//go:build e2e

package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// sendScenario is nsbox send between the two hosts of the remote lab:
// run on host A through -H (its sshd sessions have an ssh client of their
// own, NSBOX_SSH, to reach host B), so that it runs alike on both
// backends.
// sentJSON is send -o json.
type sentJSON struct {
	NewName   string `json:"new_name"`
	Mode      string `json:"mode"`
	Bytes     int64  `json:"bytes"`
	BaseBytes int64  `json:"base_bytes"`
	SHA256    string `json:"sha256"`
	Moved     bool   `json:"moved"`
}

func sendJSON(t *testing.T, r result) sentJSON {
	t.Helper()
	var res sentJSON
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("send -o json: %v\n%s", err, r)
	}
	return res
}

// storageOf is how machine name on host h is kept (status -o json).
func storageOf(t *testing.T, l *remoteLab, h, name string) string {
	t.Helper()
	var st struct {
		Storage string `json:"storage"`
	}
	if err := json.Unmarshal([]byte(l.must(t, "-H", h, "status", "-o", "json", name).stdout), &st); err != nil {
		t.Fatal(err)
	}
	return st.Storage
}

func sendScenario(t *testing.T, e *env) {
	// Host B has a cache of its own: what A sends finds no base there.
	l := startRemoteLab(t, e, labOwnCacheB)
	A := l.hostA
	const (
		name   = "e2e-send"
		copyB  = "e2e-send-b"
		intB   = "e2e-send-int"
		movB   = "e2e-send-mv"
		name2  = "e2e-send-2"
		copy2B = "e2e-send-2b"
		plain  = "e2e-send-plain"
		plainB = "e2e-send-plainb"
	)
	// Host B as host A's nsbox send reaches it: root@ADDR, and its port.
	toB := func(newName string) []string {
		return []string{"root@" + labServerAddr + ":" + newName, "--port", "2202"}
	}
	B := l.hostB
	defer func() {
		for _, n := range []string{name, name2, plain} {
			l.run(t, "", nil, "-H", A, "remove", "--force", n)
		}
		for _, n := range []string{copyB, intB, movB, copy2B, plainB} {
			l.run(t, "", nil, "-H", B, "remove", "--force", n)
		}
	}()
	// What the first send did, and whether its machine is an overlay.
	var first sentJSON
	overlay := false
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
		overlay = storageOf(t, l, A, name) == "overlay"
		r := l.must(t, append([]string{"-H", A, "send", "-o", "json", name}, toB(copyB)...)...)
		first = sendJSON(t, r)
		if first.NewName != copyB || len(first.SHA256) != 64 || first.Moved {
			t.Fatalf("send -o json: %+v\n%s", first, r)
		}
		// An overlay machine goes as its base, which B has not, and
		// its upper; anything else as its whole tree.
		if overlay && (first.Mode != "base" || first.BaseBytes < 10<<20 || first.Bytes-first.BaseBytes > first.BaseBytes/4) {
			t.Errorf("the first send of an overlay machine (its base, then its upper): %+v", first)
		}
		if !overlay && (first.Mode != "tree" || first.Bytes < 10<<20) {
			t.Errorf("the send of a machine that is not an overlay: %+v", first)
		}
		if overlay && storageOf(t, l, B, copyB) != "overlay" {
			t.Errorf("the copy on B is not an overlay machine")
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

	t.Run("a second machine on the same base sends its changes alone", func(t *testing.T) {
		if !overlay {
			t.Skip("no overlay machines on this host")
		}
		l.must(t, "-H", A, "create", name2, "--release", "bookworm")
		marker := filepath.Join(l.dir, "e2e-marker2")
		writeLab(t, marker, "made on a for the second send\n")
		l.must(t, "-H", A, "cp", marker, name2+":/etc")
		r := l.run(t, "", nil, append([]string{"-H", A, "send", "-o", "json", name2}, toB(copy2B)...)...)
		if r.code != 0 {
			t.Fatalf("send:\n%s", r)
		}
		second := sendJSON(t, r)
		t.Logf("first send (base and upper): %d bytes, %d of them the base; second (upper alone): %d bytes", first.Bytes, first.BaseBytes, second.Bytes)
		if second.Mode != "upper" || second.BaseBytes != 0 || second.Bytes > first.BaseBytes/20 {
			t.Errorf("the second send on the same base: %+v (the first: %+v)", second, first)
		}
		if storageOf(t, l, B, copy2B) != "overlay" {
			t.Errorf("the second copy on B is not an overlay machine")
		}
		// One base on B, of the ID A's has.
		var ca, cb []struct {
			Key string `json:"key"`
			ID  string `json:"id"`
		}
		json.Unmarshal([]byte(l.must(t, "-H", A, "cache", "list", "-o", "json").stdout), &ca)
		json.Unmarshal([]byte(l.must(t, "-H", B, "cache", "list", "-o", "json").stdout), &cb)
		if len(cb) != 1 || cb[0].ID == "" || !slices.ContainsFunc(ca, func(b struct {
			Key string `json:"key"`
			ID  string `json:"id"`
		}) bool {
			return b.ID == cb[0].ID && b.Key == cb[0].Key
		}) {
			t.Errorf("bases on B %+v, on A %+v", cb, ca)
		}
		if r := l.must(t, "-H", B, "cp", copy2B+":/etc/e2e-marker2", "-"); !strings.Contains(r.stdout, "made on a for the second send") {
			t.Errorf("the second copy's own file on B:\n%s", r)
		}
	})

	t.Run("a machine that is no overlay goes whole", func(t *testing.T) {
		l.must(t, "-H", A, "create", plain, "--release", "bookworm", "--storage", "copy")
		res := sendJSON(t, l.must(t, append([]string{"-H", A, "send", "-o", "json", plain}, toB(plainB)...)...))
		if res.Mode != "tree" || res.Bytes < 10<<20 || res.BaseBytes != 0 {
			t.Errorf("the send of a copy machine: %+v", res)
		}
		if st := storageOf(t, l, B, plainB); st == "overlay" {
			t.Errorf("a copy machine became an overlay on B")
		}
		l.must(t, "-H", A, "remove", plain)
	})

	t.Run("a name that exists there", func(t *testing.T) {
		r := l.run(t, "", nil, append([]string{"-H", A, "send", name}, toB(copyB)...)...)
		if r.code != 4 || !strings.Contains(r.stderr, "already exists") || !strings.Contains(r.stderr, "refused") {
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
		if out, _ := l.srv("ls -a " + l.rootB + "/.nsbox/.overlay 2>/dev/null | grep -- " + intB + " || true"); strings.TrimSpace(string(out)) != "" {
			t.Errorf("an interrupted send left an upper on B: %s", out)
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
