package remote

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// The process whose output's reader goes away gets SIGHUP; while the
// reader is there it does not.
func TestWatchHangup(t *testing.T) {
	if os.Getenv("NSBOX_TEST_HANGUP") == "1" {
		go WatchHangup()
		time.Sleep(20 * time.Second)
		os.Exit(3)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchHangup$")
	cmd.Env = append(os.Environ(), "NSBOX_TEST_HANGUP=1")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		t.Fatal("the process ended while its output was read")
	case <-time.After(500 * time.Millisecond):
	}
	r.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("no hang-up seen 10 s after the reader went")
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGHUP {
		t.Errorf("the process ended with %v, want SIGHUP", cmd.ProcessState)
	}
}
