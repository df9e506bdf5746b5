package dbusapi

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/godbus/dbus/v5"
)

func TestMapErr(t *testing.T) {
	noMachine := dbus.Error{Name: "org.freedesktop.machine1.NoSuchMachine", Body: []any{"No machine 'web' known"}}
	// The GetAll on the path of a machine removed since it was listed:
	// status caught a restarting machine so.
	unknownObject := dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownObject", Body: []any{"Unknown object '/org/freedesktop/machine1/machine/e2e_2dbw'."}}
	noUnit := dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit nsbox-web.service not loaded."}}
	denied := dbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied", Body: []any{"Permission denied"}}
	polkit := dbus.Error{Name: "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", Body: []any{"Interactive authentication required."}}
	noService := dbus.Error{Name: "org.freedesktop.DBus.Error.ServiceUnknown", Body: []any{"The name org.freedesktop.machine1 was not provided by any .service files"}}
	noOwner := dbus.Error{Name: "org.freedesktop.DBus.Error.NameHasNoOwner"}
	loadFailed := dbus.Error{Name: "org.freedesktop.systemd1.LoadFailed", Body: []any{"Unit x.service failed to load"}}
	plain := errors.New("dbus: connection closed by user")

	for _, tc := range []struct {
		name string
		mapf func(error) error
		err  error
		want error // the sentinel; nil: the error comes back unchanged
		text string
	}{
		{"machined: no such machine", mapMachinedErr, noMachine, ErrNoSuchMachine, "machined has no such machine: No machine 'web' known"},
		{"machined: unknown object", mapMachinedErr, unknownObject, ErrNoSuchMachine, "machined has no such machine: Unknown object '/org/freedesktop/machine1/machine/e2e_2dbw'."},
		{"machined: pointer error", mapMachinedErr, &dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownObject"}, ErrNoSuchMachine, "machined has no such machine: org.freedesktop.DBus.Error.UnknownObject"},
		{"machined: wrapped", mapMachinedErr, fmt.Errorf("call: %w", noMachine), ErrNoSuchMachine, "machined has no such machine: call: No machine 'web' known"},
		{"machined: access denied", mapMachinedErr, denied, ErrAccessDenied, "access denied: Permission denied"},
		{"machined: polkit", mapMachinedErr, polkit, ErrAccessDenied, "access denied: Interactive authentication required."},
		{"machined: not installed", mapMachinedErr, noService, ErrNoService, "no such service on the system bus: The name org.freedesktop.machine1 was not provided by any .service files"},
		{"machined: no owner", mapMachinedErr, noOwner, ErrNoService, "no such service on the system bus: org.freedesktop.DBus.Error.NameHasNoOwner"},
		{"machined: a unit error is not its own", mapMachinedErr, noUnit, nil, ""},
		{"machined: plain error", mapMachinedErr, plain, nil, ""},
		{"machined: nil", mapMachinedErr, nil, nil, ""},
		{"systemd: no such unit", mapSystemdErr, noUnit, ErrNoSuchUnit, "systemd has no such unit: Unit nsbox-web.service not loaded."},
		{"systemd: access denied", mapSystemdErr, denied, ErrAccessDenied, "access denied: Permission denied"},
		{"systemd: polkit", mapSystemdErr, polkit, ErrAccessDenied, "access denied: Interactive authentication required."},
		// Units have paths whatever their state: an unknown object there is
		// not a missing machine.
		{"systemd: unknown object", mapSystemdErr, unknownObject, nil, ""},
		{"systemd: no such machine", mapSystemdErr, noMachine, nil, ""},
		{"systemd: load failed", mapSystemdErr, loadFailed, nil, ""},
		{"systemd: plain error", mapSystemdErr, plain, nil, ""},
		{"systemd: nil", mapSystemdErr, nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.mapf(tc.err)
			if tc.want == nil {
				if !reflect.DeepEqual(got, tc.err) {
					t.Fatalf("got %v, want the error unchanged (%v)", got, tc.err)
				}
				return
			}
			for _, s := range []error{ErrNoSuchMachine, ErrNoSuchUnit, ErrAccessDenied, ErrNoService} {
				if errors.Is(got, s) != (s == tc.want) {
					t.Errorf("errors.Is(%v, %v) = %v", got, s, !(s == tc.want))
				}
			}
			if got.Error() != tc.text {
				t.Errorf("text %q, want %q", got.Error(), tc.text)
			}
			// The D-Bus error stays in the chain for its name.
			if dbusErrorName(got) != dbusErrorName(tc.err) {
				t.Errorf("D-Bus name %q, want %q", dbusErrorName(got), dbusErrorName(tc.err))
			}
		})
	}
}
