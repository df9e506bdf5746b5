package machined

import (
	"reflect"
	"testing"

	"github.com/nsbox/nsbox/machine/backend"
)

func TestSystemdRunArgs(t *testing.T) {
	got := SystemdRunArgs("web", backend.ExecSpec{Argv: []string{"sh", "-c", "echo $HOME"}, Env: []string{"TERM=xterm"}})
	want := []string{"--machine=web", "--quiet", "--wait", "--collect", "--service-type=exec", "--pipe", "--uid=root",
		"--setenv=TERM=xterm", "--", "/bin/sh", "-c", `"$$@"; exit $$?`, "sh", "sh", "-c", "echo $$HOME"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := SystemdRunArgs("web", backend.ExecSpec{Argv: []string{"id"}, User: "www", TTY: true}); got[5] != "--pty" || got[6] != "--uid=www" {
		t.Errorf("tty/user: %q", got)
	}
	// A working directory is the unit's, taken as a path inside the
	// machine; a "$" in it reaches systemd as written.
	if got := SystemdRunArgs("web", backend.ExecSpec{Argv: []string{"pwd"}, Workdir: "/srv/a $b"}); got[7] != "--working-directory=/srv/a $b" {
		t.Errorf("workdir: %q", got)
	}
}
