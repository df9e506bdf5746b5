package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// Every refusal because another process holds a machine (its image lock,
// its boot lock) is ErrBusy, and says which machine.
func TestBusyErrorsWrapErrBusy(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkMachine(t, m, "web")
	hold := func(t *testing.T, path string) {
		t.Helper()
		l, err := m.lockImage(path, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Unlock)
	}
	for _, tc := range []struct {
		what string
		held func(t *testing.T)
		run  func() error
		name string
	}{
		{"export of a machine in use", func(t *testing.T) { hold(t, m.Dir("web")) },
			func() error { return m.Export(ctx, "web", t.TempDir()+"/web.tar") }, "web"},
		{"read-only of a machine in use", func(t *testing.T) { hold(t, m.Dir("web")) },
			func() error { return m.SetReadOnly(ctx, "web", true) }, "web"},
		{"clone into a name being created", func(t *testing.T) { hold(t, m.Tree("copy")) },
			func() error { return m.Clone(ctx, "web", "copy") }, "copy"},
		{"rename to a name being created", func(t *testing.T) { hold(t, m.Tree("new")) },
			func() error { return m.Rename(ctx, "web", "new") }, "new"},
		{"limits of a machine being booted", func(t *testing.T) {
			l, err := m.bootLock("web")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Unlock)
		}, func() error { _, err := m.SetLimits(ctx, "web", LimitFlags{Tasks: "100"}); return err }, "web"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			tc.held(t)
			err := tc.run()
			if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), tc.name) {
				t.Errorf("%v; want ErrBusy naming %s", err, tc.name)
			}
		})
	}
}

// A backend's busy error (a machine between boots) is machine's ErrBusy,
// as its ErrNotRunning is machine's.
func TestBackendErrorsAreMachines(t *testing.T) {
	for _, tc := range []struct{ backend, machine error }{
		{backend.ErrBusy, ErrBusy},
		{backend.ErrNotRunning, ErrNotRunning},
		{backend.ErrInvalidOption, ErrInvalidOption},
	} {
		if err := fmt.Errorf("%w: the machine is between boots", tc.backend); !errors.Is(err, tc.machine) {
			t.Errorf("%v is not %v", err, tc.machine)
		}
	}
}

// failingTar is tar failing as GNU tar does, on stderr.
type failingTar struct{}

func (failingTar) Run(ctx context.Context, c *host.Cmd) error {
	return &host.ExitError{Cmd: c.Path, Status: 2, Tail: "tar: ./x: Cannot open: Permission denied"}
}

// main prefixes the command and the machine ("export web: "): what
// machine returns says neither again.
func TestErrorsSayTheCommandOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("export checks root first")
	}
	m, _ := newTestManager(t, &fakeMachined{machines: map[string]dbusapi.Machine{}})
	mkMachine(t, m, "web")
	m.Runner = failingTar{}
	err := m.Export(context.Background(), "web", t.TempDir()+"/web.tar")
	if want := "tar failed with exit status 2: tar: ./x: Cannot open: Permission denied"; err == nil || err.Error() != want {
		t.Errorf("export: %v; want %s", err, want)
	}
}
