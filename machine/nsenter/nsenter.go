//go:build cgo

// Package nsenter holds nsbox's one piece of C: a constructor that runs
// before the Go runtime starts, when the process still has one thread, as
// setns into mount, user, pid and time namespaces requires. Importing the
// package links it in; it acts only when nsbox starts itself with the
// variable MoveMountEnv or EnterEnv names (see MoveMount and Enter), and
// then never returns to Go. nsenter.c dispatches to the bind helper
// (move_mount.c) or the shell helper (enter.c). runc's libcontainer/nsenter
// is the model.
package nsenter

import "C"

// Available reports whether this build has the constructor: false when
// nsbox was built with CGO_ENABLED=0.
const Available = true
