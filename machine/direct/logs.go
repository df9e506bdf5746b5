package direct

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
)

// HostLogs implements Backend: the console log nspawn wrote.
func (d *Backend) HostLogs(ctx context.Context, name string, o backend.LogOptions, w io.Writer) error {
	args := []string{}
	if o.Lines > 0 {
		args = append(args, fmt.Sprintf("--lines=%d", o.Lines))
	} else {
		args = append(args, "--lines=+1")
	}
	if o.Follow {
		args = append(args, "--follow=name", "--retry")
	}
	if o.Since != "" {
		return fmt.Errorf("%w: --since needs a journal; the console log has no times", backend.ErrInvalidOption)
	}
	if _, err := os.Stat(d.logPath(name)); err != nil {
		return fmt.Errorf("%s has no console log yet (boot it once: nsbox boot %s)", name, name)
	}
	return d.Runner.Run(ctx, &host.Cmd{Path: "tail", Args: append(args, d.logPath(name)), Stdout: w, Foreground: o.Follow})
}
