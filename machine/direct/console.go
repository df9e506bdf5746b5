package direct

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// consoleLog, as the supervisor's log, says that nspawn runs on the
// supervisor's own terminal (boot --console), with no log file.
const consoleLog = "-"

// Console runs the machine in the foreground on the caller's terminal
// under the supervisor, as Start does in the background: in the machine's
// own cgroup with its limits (nspawn cannot hand the caller's cgroup, the
// root one here, to the container's systemd: "Failed to create /init.scope
// control group"), recorded in the state file so that list, shell and stop
// see it, and started again when it reboots. The supervisor removes its
// state and cgroup when the machine is gone; what a killed supervisor left
// is removed here.
func (d *Backend) Console(ctx context.Context, spec backend.StartSpec) error {
	for _, dir := range []string{filepath.Join(d.RunDir, "machines"), d.LogDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if d.Self == nil {
		return fmt.Errorf("no nsbox binary to supervise the machine")
	}
	self, err := d.Self()
	if err != nil {
		return err
	}
	if err := makeCgroup(spec.Name); err != nil {
		return err
	}
	defer removeCgroup(spec.Name)
	if err := applyLimits(spec.Name, spec.Limits); err != nil {
		return err
	}
	// The console is the terminal, not the log file; the file keeps no
	// earlier boot's lines to be shown as this one's (as Start does).
	if f, err := os.OpenFile(d.logPath(spec.Name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o640); err == nil {
		f.Close()
	}
	args := append(append([]string{}, d.Supervisor...), d.statePath(spec.Name), consoleLog, "--")
	args = append(args, spec.Argv...)
	c := &host.Cmd{Path: self, Args: args, Foreground: true,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		// Interrupted, the supervisor passes SIGTERM on to nspawn, which
		// shuts the machine down: give it the time to.
		KillGrace: 30 * time.Second,
		Env:       hookEnv(backend.StartSpec{Companion: spec.Companion})}
	err = d.Runner.Run(ctx, c)
	d.Cleanup(context.WithoutCancel(ctx), spec.Name)
	if err != nil {
		logrus.Debugf("console of %s: %v", spec.Name, err)
	}
	return err
}
