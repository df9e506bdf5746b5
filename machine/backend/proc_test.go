package backend

import (
	"os"
	"path/filepath"
	"testing"
)

func fakeProc(t *testing.T, pid, stat string) {
	t.Helper()
	dir := filepath.Join(ProcRoot, pid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
}

func TestProcAliveGuardsPIDReuse(t *testing.T) {
	old := ProcRoot
	ProcRoot = t.TempDir()
	defer func() { ProcRoot = old }()
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
