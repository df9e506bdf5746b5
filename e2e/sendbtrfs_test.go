//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sendBtrfsScenario is nsbox send between two hosts whose root directories
// and caches are btrfs (a loop file system each, so direct backend only:
// the machined test host has no loop devices): a btrfs machine goes as
// btrfs send streams, its base's read-only snapshot once, a second
// machine on that base as its own bytes alone; the received machine
// boots; an interrupted send leaves nothing on either side.
func sendBtrfsScenario(t *testing.T, e *env) {
	if e.host != nil {
		t.Skip("the machined test host has no loop devices for a btrfs of its own")
	}
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs (just deps installs btrfs-progs)")
	}
	dir, err := os.MkdirTemp("/var/tmp", "nsbox-e2e-btrfs-send-")
	if err != nil {
		t.Fatal(err)
	}
	a, b := dir+"/a", dir+"/b"
	// The suite's base, copied into a subvolume of host A's cache: a
	// btrfs machine is a snapshot of it.
	base := "/bases/" + suiteBaseKey
	e.mustSh(t, "for h in a b; do truncate -s 2G "+dir+"/$h.img && mkfs.btrfs -q "+dir+"/$h.img && mkdir "+dir+"/$h && mount -o loop "+dir+"/$h.img "+dir+"/$h"+
		" && mkdir -m 0700 "+dir+"/$h/srv "+dir+"/$h/cache; done"+
		" && mkdir -p -m 0700 "+a+"/cache/bases && mkdir "+a+"/cache"+base+" && btrfs -q subvolume create "+a+"/cache"+base+"/root"+
		" && cp -a --reflink=auto "+e.cacheDir+base+"/root/. "+a+"/cache"+base+"/root/ && cp "+e.cacheDir+base+"/base.json "+a+"/cache"+base+"/")
	defer e.sh(t, "umount "+a+"; umount "+b+"; rm -rf --one-file-system "+dir)
	l := startRemoteLabWith(t, e, labDirs{rootA: a + "/srv", cacheA: a + "/cache", rootB: b + "/srv", cacheB: b + "/cache"})
	A, B := l.hostA, l.hostB
	toB := func(newName string) []string {
		return []string{"root@" + labServerAddr + ":" + newName, "--port", "2202"}
	}
	// Names are unique on a host, and the lab's two hosts are one: each
	// machine goes to B under a name of its own (NAME + "b").
	names := []string{"e2e-bs1", "e2e-bs2", "e2e-bs3"}
	defer func() {
		for _, n := range names {
			l.run(t, "", nil, "-H", A, "remove", "--force", n)
			l.run(t, "", nil, "-H", B, "remove", "--force", n+"b")
		}
	}()
	type sent struct {
		Mode      string `json:"mode"`
		Bytes     int64  `json:"bytes"`
		BaseBytes int64  `json:"base_bytes"`
	}
	send := func(t *testing.T, name string) sent {
		t.Helper()
		r := l.must(t, append([]string{"-H", A, "send", "-o", "json", name}, toB(name+"b")...)...)
		var s sent
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatalf("send -o json: %v\n%s", err, r)
		}
		t.Logf("send %s: %+v", name, s)
		return s
	}
	// Bytes that do not compress, written into a machine's tree here.
	own := func(name string, mb int) {
		e.mustSh(t, "head -c "+strconv.Itoa(mb)+"M /dev/urandom > "+a+"/srv/.nsbox/"+name+"/root/e2e-own && echo "+name+" > "+a+"/srv/.nsbox/"+name+"/etc/e2e-marker")
	}
	// leftovers lists staging trees of either store and read-only
	// subvolumes other than the bases' (root.ro on A, the received root
	// on B, a kept version there: a received version is never the base
	// of its key).
	leftovers := func() string {
		out := e.mustSh(t, "ls -a "+a+"/srv/.nsbox "+b+"/srv/.nsbox | grep '^\\.#' | grep -v '\\.lck$' || true; "+
			"for h in "+a+" "+b+"; do btrfs subvolume list -r $h; done | grep -v 'bases/"+suiteBaseKey+"/\\(versions/[0-9TZ]*/\\)\\?root' || true")
		return strings.TrimSpace(out)
	}

	var first sent
	t.Run("a btrfs machine goes with its base", func(t *testing.T) {
		l.must(t, "-H", A, "create", "e2e-bs1", "--release", "bookworm", "--storage", "btrfs")
		own("e2e-bs1", 20)
		first = send(t, "e2e-bs1")
		if first.Mode != "btrfs-base" || first.BaseBytes < 50<<20 || first.Bytes-first.BaseBytes < 20<<20 || first.Bytes-first.BaseBytes > 25<<20 {
			t.Errorf("the first send: %+v", first)
		}
		if out := e.mustSh(t, "btrfs subvolume show "+b+"/srv/.nsbox/e2e-bs1b"); !strings.Contains(out, "Flags: \t\t\t-") {
			t.Errorf("the received machine is not a writable subvolume:\n%s", out)
		}
		if s := leftovers(); s != "" {
			t.Errorf("left: %s", s)
		}
	})

	t.Run("the second on that base goes alone, and boots", func(t *testing.T) {
		if first.Mode == "" {
			t.Skip("no first send")
		}
		l.must(t, "-H", A, "create", "e2e-bs2", "--release", "bookworm", "--storage", "btrfs")
		own("e2e-bs2", 2)
		s := send(t, "e2e-bs2")
		if s.Mode != "btrfs" || s.BaseBytes != 0 || s.Bytes < 2<<20 || s.Bytes > 4<<20 {
			t.Errorf("the second send: %+v (the first: %+v)", s, first)
		}
		l.must(t, "-H", B, "boot", "e2e-bs2b")
		if r := l.must(t, "-H", B, "shell", "e2e-bs2b", "--", "cat", "/etc/e2e-marker", "/etc/hostname"); r.stdout != "e2e-bs2\ne2e-bs2b\n" {
			t.Errorf("in the copy on B (its marker, its own hostname):\n%s", r)
		}
		l.must(t, "-H", B, "stop", "e2e-bs2b")
		if s := leftovers(); s != "" {
			t.Errorf("left: %s", s)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		l.must(t, "-H", A, "create", "e2e-bs3", "--release", "bookworm", "--storage", "btrfs")
		own("e2e-bs3", 600)
		argv := l.argv(nil, append([]string{"-H", A, "send", "e2e-bs3"}, toB("e2e-bs3b")...)...)
		cmd := exec.Command(argv[0], argv[1:]...)
		var out safeBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once B receives it, the ssh of A's nsbox send is killed.
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(e.query(t, "btrfs subvolume list "+b+" | grep e2e-bs3 || true"), "e2e-bs3") {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the send never started there: %s", out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		pid, err := l.srv("pgrep -n -f '[s]sh -F " + l.sdir + "/ssh_config.srv .*receive.*e2e-bs3b'")
		if err != nil {
			t.Fatalf("no ssh of the send: %s", pid)
		}
		if _, err := l.srv("kill -9 " + strings.TrimSpace(string(pid))); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 255 {
			t.Errorf("a send whose ssh was killed: exit %d, want 255\n%s", code, out.String())
		}
		deadline = time.Now().Add(20 * time.Second)
		for leftovers() != "" {
			if time.Now().After(deadline) {
				t.Fatalf("an interrupted send left: %s", leftovers())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if r := l.run(t, "", nil, "-H", B, "status", "e2e-bs3b"); r.code == 0 {
			t.Errorf("an interrupted send made the machine on B:\n%s", r)
		}
		if r := l.must(t, "-H", A, "status", "e2e-bs3"); !strings.Contains(r.stdout, "stopped") {
			t.Errorf("the machine on A after an interrupted send:\n%s", r)
		}
	})
}
