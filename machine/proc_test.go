package machine

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func fakeProc(t *testing.T, pid, stat string) {
	t.Helper()
	dir := filepath.Join(procRoot, pid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
}

func TestProcAliveGuardsPIDReuse(t *testing.T) {
	old := procRoot
	procRoot = t.TempDir()
	defer func() { procRoot = old }()
	// The command name may hold spaces and parentheses.
	fakeProc(t, "100", "100 (systemd (x) y) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0")
	p, err := ProcOf(100)
	if err != nil || p.Start != 5555 {
		t.Fatalf("ProcOf: %+v %v", p, err)
	}
	if !p.Alive() {
		t.Error("same process not alive")
	}
	// PID reused by a later process: another start time.
	fakeProc(t, "100", "100 (bash) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 7777 0 0")
	if p.Alive() {
		t.Error("reused PID taken for the machine")
	}
	fakeProc(t, "100", "100 (systemd) Z 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0")
	if p.Alive() {
		t.Error("zombie taken for alive")
	}
	if (Proc{PID: 4242, Start: 1}).Alive() {
		t.Error("missing process alive")
	}
}

func TestDirectStaleStateIsCleaned(t *testing.T) {
	old := procRoot
	procRoot = t.TempDir()
	defer func() { procRoot = old }()
	d := &Direct{RunDir: t.TempDir()}
	os.MkdirAll(filepath.Join(d.RunDir, "machines"), 0o755)
	st := directState{Name: "web", Supervisor: Proc{PID: 10, Start: 1}, Leader: Proc{PID: 11, Start: 2}}
	writeFileAtomic(d.statePath("web"), mustJSON(st), 0o644)
	if _, err := d.Get(context.Background(), "web"); err != ErrNotRunning {
		t.Errorf("dead machine: %v", err)
	}
	if _, err := os.Stat(d.statePath("web")); !os.IsNotExist(err) {
		t.Error("stale state file kept")
	}
	// Alive supervisor and leader: running.
	fakeProc(t, "10", "10 (nsbox) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0")
	fakeProc(t, "11", "11 (systemd) S 10 11 11 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0")
	writeFileAtomic(d.statePath("web"), mustJSON(st), 0o644)
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
