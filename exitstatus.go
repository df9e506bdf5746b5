package main

import "github.com/nsbox/nsbox/machine"

// Exit statuses that say why a command was refused, for scripts and
// orchestrators (README "Exit status", docs/remote.md "Fleets"): each is
// a state the caller can act on without reading the message. Every other
// failure is exitError.
const (
	// exitNotFound: there is no such machine (or snapshot, or
	// machinectl image to adopt).
	exitNotFound = 3
	// exitExists: the name is taken: create, clone, import, rename,
	// adopt or receive to a machine that exists (or to a name another
	// root directory has), a snapshot that exists; and create --from
	// of a machine made from another source.
	exitExists = 4
	// exitRunning: refused because the machine runs: boot of a running
	// machine, remove without --force, rename, clone, export, snapshot
	// without --live, run, adopt.
	exitRunning = 5
	// exitNotRunning: refused because the machine does not run: stop,
	// reboot, terminate, kill, bind, top of a stopped machine.
	exitNotRunning = 6
	// exitBusy: another nsbox or a systemd-nspawn holds the machine (it
	// is booting, being created, mounted or in use): try again later.
	exitBusy = 7
)

// statuses maps the Manager's sentinel errors to their exit statuses;
// the first that an error is, outermost first, decides.
var statuses = []struct {
	err    error
	status int
}{
	{machine.ErrNotFound, exitNotFound},
	{machine.ErrExists, exitExists},
	{machine.ErrOtherRoot, exitExists},
	{machine.ErrRunning, exitRunning},
	{machine.ErrNotRunning, exitNotRunning},
	{machine.ErrBusy, exitBusy},
}

// statusOf is the exit status of a command that failed with err (not
// nil): that of the first sentinel met walking err's chain from the
// outside in, exitError when none is. An error that joins several (two
// machines' failures, a sentinel joined with another error) has their
// common status, and exitError when they differ: a status never says
// more than every part of the error does.
func statusOf(err error) int {
	for err != nil {
		for _, s := range statuses {
			if err == s.err {
				return s.status
			}
			if is, ok := err.(interface{ Is(error) bool }); ok && is.Is(s.err) {
				return s.status
			}
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			return commonStatus(u.Unwrap())
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		default:
			err = nil
		}
	}
	return exitError
}

// commonStatus is the exit status of several failures (nil ones are
// left out): their common status, or exitError when they differ.
func commonStatus(errs []error) int {
	status := 0
	for _, err := range errs {
		if err == nil {
			continue
		}
		s := statusOf(err)
		if status != 0 && s != status {
			return exitError
		}
		status = s
	}
	if status == 0 {
		return exitError
	}
	return status
}
