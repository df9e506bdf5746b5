package machined

import (
	"context"
	"io"

	"github.com/nsbox/nsbox/machine/backend"
)

// HostLogs implements Backend: the unit's journal.
func (m *Backend) HostLogs(ctx context.Context, name string, o backend.LogOptions, w io.Writer) error {
	return backend.Journal(ctx, m.Runner, []string{"--unit=" + UnitName(name), "--unit=" + AutostartUnitName(name)}, o, w)
}
