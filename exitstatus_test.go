package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nsbox/nsbox/machine"
	"github.com/nsbox/nsbox/remote"
)

// sentinelOf is an error of its own type that says which sentinel it is
// through Unwrap, as machine's snapshot errors do.
type sentinelOf struct{ is error }

func (e *sentinelOf) Error() string { return "no snapshot s of web" }
func (e *sentinelOf) Unwrap() error { return e.is }

// isOnly matches a sentinel through an Is method, with no Unwrap.
type isOnly struct{ is error }

func (e isOnly) Error() string        { return "custom" }
func (e isOnly) Is(target error) bool { return target == e.is }

// isAndWraps is one sentinel through Is and wraps an error that is
// another.
type isAndWraps struct{ is, inner error }

func (e *isAndWraps) Error() string        { return "both" }
func (e *isAndWraps) Is(target error) bool { return target == e.is }
func (e *isAndWraps) Unwrap() error        { return e.inner }

func TestExitStatuses(t *testing.T) {
	wrap := func(verb string, sentinel error, detail string) error {
		return fmt.Errorf("%s web: %w", verb, fmt.Errorf("%w: %s", sentinel, detail))
	}
	for _, tc := range []struct {
		what string
		err  error
		want int
	}{
		{"success", nil, 0},
		{"a plain failure", errors.New("debootstrap failed"), exitError},
		{"usage", usagef("unknown command %q", "x"), exitUsage},
		{"usage wrapped", fmt.Errorf("create: %w", usagef("bad")), exitUsage},
		{"no such machine", wrap("boot", machine.ErrNotFound, `"web" (see: nsbox list)`), exitNotFound},
		{"no such snapshot", fmt.Errorf("snapshot restore web: %w", &sentinelOf{machine.ErrNotFound}), exitNotFound},
		{"exists", wrap("create", machine.ErrExists, "/srv/web (remove it first)"), exitExists},
		{"name of another root", wrap("create", machine.ErrOtherRoot, "web is under /srv2"), exitExists},
		{"snapshot exists", &sentinelOf{machine.ErrExists}, exitExists},
		{"running", wrap("boot", machine.ErrRunning, "web (stop it first)"), exitRunning},
		{"not running", wrap("stop", machine.ErrNotRunning, "web (start it)"), exitNotRunning},
		{"busy", wrap("boot", machine.ErrBusy, "web is being booted by another nsbox"), exitBusy},
		{"through Is alone", fmt.Errorf("x: %w", isOnly{machine.ErrRunning}), exitRunning},
		// The outermost sentinel decides.
		{"outermost first", fmt.Errorf("x: %w", &isAndWraps{machine.ErrBusy, fmt.Errorf("inner: %w", machine.ErrExists)}), exitBusy},
		// Two errors in one (two %w): the status of both, or a failure.
		{"two %w that differ", fmt.Errorf("%w: %w", machine.ErrBusy, fmt.Errorf("inner: %w", machine.ErrExists)), exitError},
		{"two %w that agree", fmt.Errorf("%w: %w", machine.ErrBusy, fmt.Errorf("inner: %w", machine.ErrBusy)), exitBusy},
		{"joined, one kind", errors.Join(wrap("boot", machine.ErrRunning, "a"), wrap("boot", machine.ErrRunning, "b")), exitRunning},
		{"joined, two kinds", errors.Join(wrap("boot", machine.ErrRunning, "a"), errors.New("b failed")), exitError},
		{"joined, a plain one", errors.Join(errors.New("a"), errors.New("b")), exitError},
		{"other sentinels are failures", fmt.Errorf("%w: --network wifi", machine.ErrInvalidOption), exitError},
		{"not root", fmt.Errorf("%w (try: sudo)", machine.ErrNotRoot), exitError},
		{"boot failed", fmt.Errorf("%w: web", machine.ErrBootFailed), exitError},
		// shell -- CMD: the command's own status, whatever it is.
		{"a command's status", exitCode(4), 4},
		{"a command's 1", exitCode(1), 1},
		{"a command's 0", fmt.Errorf("x: %w", exitCode(0)), 0},
		// -H: nsbox's own statuses for the connection.
		{"remote", &remote.Error{Status: remote.ExitConnect, Msg: "web1: ssh could not connect"}, remote.ExitConnect},
	} {
		var w bytes.Buffer
		got := reportTo(&w, tc.err)
		if got != tc.want {
			t.Errorf("%s: exit %d, want %d (%v)", tc.what, got, tc.want, tc.err)
		}
		if tc.err != nil && tc.want != 0 && !errors.As(tc.err, new(exitCode)) && strings.Count(w.String(), "\n") != 1 {
			t.Errorf("%s: not one line:\n%s", tc.what, w.String())
		}
	}
}

// The statuses are nsbox's own: none is another meaning's.
func TestExitStatusesDistinct(t *testing.T) {
	seen := map[int]string{}
	for what, s := range map[string]int{"error": exitError, "usage": exitUsage, "not found": exitNotFound, "exists": exitExists,
		"running": exitRunning, "not running": exitNotRunning, "busy": exitBusy, "hangup": exitHangup, "interrupted": exitInterrupted,
		"terminated": exitTerminated, "ssh": remote.ExitConnect, "missing": remote.ExitMissing, "protocol": remote.ExitProtocol} {
		if other, ok := seen[s]; ok {
			t.Errorf("%s and %s are both %d", what, other, s)
		}
		seen[s] = what
	}
	for _, s := range []int{exitNotFound, exitExists, exitRunning, exitNotRunning, exitBusy} {
		if s < 3 || s > 125 {
			t.Errorf("status %d is not a small status of nsbox's own", s)
		}
	}
}

// Commands on several machines: the common status of their failures.
func TestCommonStatus(t *testing.T) {
	running := fmt.Errorf("%w: a", machine.ErrRunning)
	for _, tc := range []struct {
		errs []error
		want int
	}{
		{[]error{nil, running, nil, fmt.Errorf("%w: c", machine.ErrRunning)}, exitRunning},
		{[]error{running, fmt.Errorf("%w: b", machine.ErrNotRunning)}, exitError},
		{[]error{running, errors.New("b: boot failed")}, exitError},
		{[]error{nil, errors.New("x")}, exitError},
	} {
		if got := commonStatus(tc.errs); got != tc.want {
			t.Errorf("%v: %d, want %d", tc.errs, got, tc.want)
		}
	}
}
