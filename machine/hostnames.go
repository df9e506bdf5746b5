package machine

import (
	"context"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/names"
	"github.com/sirupsen/logrus"
)

// NameTable is where running machines' names are kept: records under
// RunDir/names, and the hosts files made from them. The host's own file
// is written only where the backend does not register machines with
// machined, which answers for their names itself (nss-mymachines).
func NameTable(runDir string, registered bool) names.Table {
	t := names.Table{Dir: filepath.Join(runDir, "names")}
	if !registered {
		t.HostsFile = names.HostsFile
	}
	return t
}

func (m *Manager) names() names.Table { return NameTable(m.RunDir, m.Backend.Registered()) }

// publishName makes running machine name resolvable by its address: the
// one nsbox gave its veth, or on a veth networkd serves the one in the
// subnet of the host's end (waited for a few seconds). A machine on the
// host's network, or on none, has no address of its own to publish; one
// on a bridge or zone gets its name where its address can be told.
func (m *Manager) publishName(ctx context.Context, name string) {
	opts, err := m.Options(name)
	if err != nil || opts.Network == "host" || opts.Network == "none" {
		return
	}
	r, err := m.Backend.Get(ctx, name)
	if err != nil || r.Leader <= 0 {
		return
	}
	var addr netip.Addr
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	_ = host.Poll(wait, host.Every(200*time.Millisecond), func() (bool, error) {
		a, err := m.machineAddress(wait, name, opts)
		addr = a
		return err == nil, nil
	})
	cancel()
	if !addr.IsValid() {
		logrus.Debugf("%s: no address to publish its name with", name)
		return
	}
	rec := names.Record{Name: name, Address: addr.String(), Leader: r.Leader, Start: names.ProcStart(r.Leader)}
	if err := m.names().Publish(rec); err != nil {
		logrus.Warnf("%s runs, but its name could not be published: %v", name, err)
	}
}

// withdrawName drops stopped machine name from the hosts files.
func (m *Manager) withdrawName(name string) {
	if err := m.names().Withdraw(name); err != nil {
		logrus.Warnf("drop the name of %s: %v", name, err)
	}
}
