package dbusapi

import (
	"errors"
	"fmt"

	"github.com/godbus/dbus/v5"
)

var (
	// ErrNoSuchMachine is machined's answer for a machine it does not know,
	// or no longer knows.
	ErrNoSuchMachine = errors.New("machined has no such machine")
	// ErrNoSuchUnit is systemd's answer for a unit it has not loaded.
	ErrNoSuchUnit = errors.New("systemd has no such unit")
	// ErrAccessDenied is the bus's or the service's refusal of a call to a
	// caller without the privilege (polkit, or the bus policy).
	ErrAccessDenied = errors.New("access denied")
	// ErrNoService is the bus's answer for a service that neither runs nor
	// can be started: machined not installed, for one.
	ErrNoService = errors.New("no such service on the system bus")
)

// commonErrors are the D-Bus errors any service's calls may answer.
var commonErrors = map[string]error{
	"org.freedesktop.DBus.Error.AccessDenied":                     ErrAccessDenied,
	"org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": ErrAccessDenied,
	"org.freedesktop.DBus.Error.ServiceUnknown":                   ErrNoService,
	"org.freedesktop.DBus.Error.NameHasNoOwner":                   ErrNoService,
}

// machinedErrors adds machined's own. UnknownObject is the answer of a call
// on the object path of a machine that is not (or no longer) registered.
var machinedErrors = withCommon(map[string]error{
	"org.freedesktop.machine1.NoSuchMachine":   ErrNoSuchMachine,
	"org.freedesktop.DBus.Error.UnknownObject": ErrNoSuchMachine,
})

// systemdErrors adds systemd's own.
var systemdErrors = withCommon(map[string]error{
	"org.freedesktop.systemd1.NoSuchUnit": ErrNoSuchUnit,
})

func withCommon(m map[string]error) map[string]error {
	for k, v := range commonErrors {
		m[k] = v
	}
	return m
}

// mapErr wraps a D-Bus error that table names in its sentinel, keeping the
// service's text ("machined has no such machine: No machine 'web' known")
// and the dbus.Error itself for errors.As. Other errors, nil included, come
// back unchanged.
func mapErr(err error, table map[string]error) error {
	if sentinel, ok := table[dbusErrorName(err)]; ok {
		return fmt.Errorf("%w: %w", sentinel, err)
	}
	return err
}

// mapMachinedErr is mapErr for machined's calls.
func mapMachinedErr(err error) error { return mapErr(err, machinedErrors) }

// mapSystemdErr is mapErr for systemd's calls.
func mapSystemdErr(err error) error { return mapErr(err, systemdErrors) }

// dbusErrorName is the D-Bus name of the error in err's chain ("" for
// none). godbus returns dbus.Error by value; a pointer is accepted too.
func dbusErrorName(err error) string {
	var de dbus.Error
	if errors.As(err, &de) {
		return de.Name
	}
	var dp *dbus.Error
	if errors.As(err, &dp) && dp != nil {
		return dp.Name
	}
	return ""
}
