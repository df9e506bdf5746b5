package direct

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

func TestDirectStaleStateIsCleaned(t *testing.T) {
	old := backend.ProcRoot
	backend.ProcRoot = t.TempDir()
	defer func() { backend.ProcRoot = old }()
	d := &Backend{RunDir: t.TempDir()}
	os.MkdirAll(filepath.Join(d.RunDir, "machines"), 0o755)
	st := state{Name: "web", Supervisor: backend.Proc{PID: 10, Start: 1}, Leader: backend.Proc{PID: 11, Start: 2}}
	host.WriteFileAtomic(d.statePath("web"), mustJSON(st), 0o644)
	if _, err := d.Get(context.Background(), "web"); err != backend.ErrNotRunning {
		t.Errorf("dead machine: %v", err)
	}
	if _, err := os.Stat(d.statePath("web")); !os.IsNotExist(err) {
		t.Error("stale state file kept")
	}
	// Alive supervisor and leader: running.
	fakeProc(t, "10", "10 (nsbox) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0")
	fakeProc(t, "11", "11 (systemd) S 10 11 11 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0")
	host.WriteFileAtomic(d.statePath("web"), mustJSON(st), 0o644)
	r, err := d.Get(context.Background(), "web")
	if err != nil || r.Leader != 11 {
		t.Errorf("running machine: %+v %v", r, err)
	}
	if fi, _ := os.Stat(d.statePath("web")); fi.Mode().Perm() != 0o644 {
		t.Errorf("state file mode %v", fi.Mode())
	}
}

func TestRotatingLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &rotatingLog{path: path, f: f, max: 100}
	line := []byte("0123456789012345678901234567890123456789\n") // 41 bytes
	for i := 0; i < 50; i++ {
		if n, err := l.Write(line); n != len(line) || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() > 100 || fi.Size() == 0 {
			t.Errorf("%s: %v %v", p, fi, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files: %v", ents)
	}
}

// The direct backend's log tail during a boot is empty when the console
// log predates the boot: it is the previous run's.
func TestDirectLogTailIsThisBoots(t *testing.T) {
	d := &Backend{LogDir: t.TempDir()}
	os.WriteFile(d.logPath("web"), []byte("Powering off.\nContainer web exited successfully.\n"), 0o640)
	old := time.Now().Add(-time.Minute)
	os.Chtimes(d.logPath("web"), old, old)
	ctx := context.Background()
	if got := d.LogTail(ctx, "web", 15); len(got) != 2 {
		t.Errorf("log tail outside a boot: %q", got)
	}
	if got := d.LogTail(backend.WithBootStart(ctx, backend.BootClock()), "web", 15); len(got) != 0 {
		t.Errorf("a boot's log tail shows the last run's lines: %q", got)
	}
	start := backend.BootClock()
	os.WriteFile(d.logPath("web"), []byte("Spawning container web.\n"), 0o640)
	if got := d.LogTail(backend.WithBootStart(ctx, start), "web", 15); len(got) != 1 {
		t.Errorf("a boot's log tail lacks its own lines: %q", got)
	}
}

func TestLimitFilesPreferV2(t *testing.T) {
	files := limitFiles(backend.Limits{Memory: 1 << 20, CPUs: 0.5, CPUWeight: 100})
	if files[0][0] != (cgroupFile{"memory.max", "1048576"}) || files[0][1].file != "memory.limit_in_bytes" {
		t.Errorf("memory: %+v", files[0])
	}
	if files[1][0].value != "50000 100000" || files[1][1] != (cgroupFile{"cpu.cfs_quota_us", "50000"}) {
		t.Errorf("cpu: %+v", files[1])
	}
	if files[2][1].value != "1024" {
		t.Errorf("cpu.shares for weight 100: %+v", files[2])
	}
}

// Lifting a limit writes, for each limit set, the v2 file and the v1 one
// with the values that mean no limit (or the default weight).
func TestClearFiles(t *testing.T) {
	got := fmt.Sprint(clearFiles(backend.Limits{Memory: 1, MemorySwap: 1, CPUs: 1, CPUWeight: 1, Tasks: 1, IOWeight: 1}))
	want := "[[{memory.max max} {memory.limit_in_bytes -1}] [{memory.swap.max max} {memory.memsw.limit_in_bytes -1}] " +
		"[{cpu.max max 100000} {cpu.cfs_quota_us -1}] [{cpu.weight 100} {cpu.shares 1024}] [{pids.max max}] " +
		"[{io.weight default 100} {blkio.weight 500}]]"
	if got != want {
		t.Errorf("clear files\n got %s\nwant %s", got, want)
	}
	if files := clearFiles(backend.Limits{Tasks: 1}); len(files) != 1 || files[0][0] != (cgroupFile{"pids.max", "max"}) {
		t.Errorf("tasks alone: %v", files)
	}
}

func TestNsenterArgs(t *testing.T) {
	got := strings.Join(nsenterArgs(42, "", []string{"TERM=xterm"}, []string{"id", "-u"}), " ")
	if !strings.HasPrefix(got, "-t 42 -a -r -w -- /usr/bin/env -i PATH=") || !strings.HasSuffix(got, "HOME=/root USER=root LOGNAME=root TERM=xterm id -u") {
		t.Errorf("root: %s", got)
	}
	got = strings.Join(nsenterArgs(42, "www", nil, []string{"id"}), " ")
	if !strings.HasSuffix(got, "/usr/sbin/runuser -u www -- id") {
		t.Errorf("user: %s", got)
	}
}

// fakeProc writes /proc/PID/stat under backend.ProcRoot.
func fakeProc(t *testing.T, pid, stat string) {
	t.Helper()
	dir := filepath.Join(backend.ProcRoot, pid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
}

func TestCgroupIOParsers(t *testing.T) {
	r, w := parseIOStat("8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n253:1 rbytes=100 wbytes=28 rios=1 wios=1\n")
	if r != 4196 || w != 540 {
		t.Errorf("io.stat: %d read, %d written; want 4196, 540", r, w)
	}
}
