// Package dbusapi talks to systemd-machined and systemd over the system
// bus. It is the only package that imports godbus: thin typed methods named
// after the D-Bus methods they call, plain structs for results, no policy.
//
// A process opens one connection (Connect) and hands it to both clients
// (Bus.Machined, Bus.Systemd): one socket and one authentication, however
// many services it talks to. Calls that read many objects (GetMachines,
// GetUnitState) send their messages together and then
// collect the replies, so they cost one round trip, not one per object.
package dbusapi

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/godbus/dbus/v5"
)

// maxInFlight bounds the calls a batch keeps waiting for replies at once:
// dbus-daemon allows a connection 128 pending replies at most
// (max_replies_per_connection), and another batch, the signal matches and
// the job waits of the same process need some too.
const maxInFlight = 32

// Bus is a private connection to the system bus, shared by the machined and
// systemd clients of one process.
type Bus struct {
	conn     *dbus.Conn
	machined *Machined
	systemd  *Systemd
}

// Connect opens a private connection to the system bus: it dials, proves
// the caller's uid (EXTERNAL, the only mechanism the system bus offers
// local clients) and says Hello. ctx bounds the dial and the handshake, not
// the connection, which stays open until Close.
func Connect(ctx context.Context) (*Bus, error) {
	conn, err := dbus.SystemBusPrivate()
	if err != nil {
		return nil, fmt.Errorf("system bus: %w", err)
	}
	// godbus's handshake takes no context: closing the connection is what
	// ends a handshake that hangs.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = handshake(conn)
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("system bus: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("system bus: %w", err)
	}
	return newBus(conn), nil
}

// handshake authenticates with the caller's uid and says Hello: four round
// trips with godbus (AUTH for the mechanisms, AUTH EXTERNAL,
// NEGOTIATE_UNIX_FD, Hello).
func handshake(conn *dbus.Conn) error {
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Geteuid()))}); err != nil {
		return err
	}
	return conn.Hello()
}

// newBus wraps an authenticated connection.
func newBus(conn *dbus.Conn) *Bus {
	b := &Bus{conn: conn}
	b.machined = &Machined{conn: conn, manager: conn.Object(machinedDest, machinedPath)}
	b.systemd = &Systemd{conn: conn, manager: conn.Object(systemdDest, systemdPath), jobs: newJobs(conn)}
	return b
}

// Close closes the connection. Calls still waiting fail, and the channels
// of Subscribe close. Closing twice is harmless.
func (b *Bus) Close() error { return b.conn.Close() }

// Machined is the client of systemd-machined on this connection. It makes
// no call: whether machined answers shows at the first method called.
func (b *Bus) Machined() *Machined { return b.machined }

// Systemd is the client of the systemd manager on this connection. It
// makes no call; the first job waited for adds the one signal match jobs
// need.
func (b *Bus) Systemd() *Systemd { return b.systemd }

// batchCall is one method call of a batch.
type batchCall struct {
	obj    dbus.BusObject
	method string
	args   []any
}

// callAll makes calls with up to maxInFlight of them waiting for a reply at
// once, so a batch costs about one round trip, and returns them finished,
// in the order given. godbus matches replies to calls by serial, so the
// calls may share the connection with any other.
func callAll(ctx context.Context, calls []batchCall) []*dbus.Call {
	out := make([]*dbus.Call, len(calls))
	done := make(chan *dbus.Call, min(len(calls), maxInFlight))
	waiting := 0
	for i, c := range calls {
		if waiting == maxInFlight {
			<-done
			waiting--
		}
		out[i] = c.obj.GoWithContext(ctx, c.method, 0, done, c.args...)
		waiting++
	}
	for ; waiting > 0; waiting-- {
		<-done
	}
	return out
}
