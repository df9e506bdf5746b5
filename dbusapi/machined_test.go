package dbusapi

import (
	"errors"
	"fmt"
	"testing"

	"github.com/godbus/dbus/v5"
)

func TestMapErrGoneMachine(t *testing.T) {
	for _, tc := range []struct {
		err  error
		gone bool
	}{
		{dbus.Error{Name: "org.freedesktop.machine1.NoSuchMachine", Body: []any{"No machine 'web' known"}}, true},
		// DescribeMachine's GetAll on the path of a machine removed since
		// its GetMachine: status caught a restarting machine so.
		{dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownObject", Body: []any{"Unknown object '/org/freedesktop/machine1/machine/e2e_2dbw'."}}, true},
		{&dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownObject"}, true},
		{fmt.Errorf("wrapped: %w", dbus.Error{Name: "org.freedesktop.machine1.NoSuchMachine"}), true},
		{dbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied"}, false},
		{errors.New("connection closed"), false},
		{nil, false},
	} {
		got := mapErr(tc.err)
		if errors.Is(got, ErrNoSuchMachine) != tc.gone {
			t.Errorf("mapErr(%v) = %v; gone: want %v", tc.err, got, tc.gone)
		}
		if !tc.gone && fmt.Sprint(got) != fmt.Sprint(tc.err) {
			t.Errorf("mapErr(%v) changed the error to %v", tc.err, got)
		}
	}
}
