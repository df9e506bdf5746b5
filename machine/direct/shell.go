package direct

import (
	"context"

	"github.com/nsbox/nsbox/machine/backend"
)

// LoginShell runs user's login shell with runuser -l and returns its exit
// status. On a terminal it gets a pseudo terminal of the machine's own
// (tty names it inside).
func (d *Backend) LoginShell(ctx context.Context, name, user string) (int, error) {
	if user == "" {
		user = "root"
	}
	return d.Exec(ctx, name, backend.LoginShellSpec([]string{"/usr/sbin/runuser", "-l", user}))
}
