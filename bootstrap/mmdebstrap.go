package bootstrap

import (
	"context"
	"fmt"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
)

// MmdebstrapArgs builds mmdebstrap's command line for o into target. It
// installs what debootstrap would: the variant, BasePackages and o.Include.
func MmdebstrapArgs(o Options, target string) []string {
	args := []string{
		"--mode=root",
		"--variant=" + o.variant(),
		"--include=" + strings.Join(o.Packages(), ","),
		"--components=" + strings.Join(o.Release.Distro.Components, ","),
		"--keyring=" + o.keyring(),
	}
	if o.Arch != "" {
		args = append(args, "--architectures="+o.Arch)
	}
	args = append(args, o.Release.Name, target)
	if o.Mirror != "" {
		args = append(args, o.Mirror)
	}
	return args
}

// Mmdebstrap bootstraps o into the empty directory target with mmdebstrap.
func Mmdebstrap(ctx context.Context, r host.Runner, o Options, target string, progress func(Stage)) error {
	p := newProgressParser(progress)
	err := r.Run(ctx, &host.Cmd{Path: "mmdebstrap", Args: MmdebstrapArgs(o, target), Lines: p.line})
	host.UnmountUnder(target)
	if err != nil {
		return fmt.Errorf("mmdebstrap %s: %w", o.Release.Name, err)
	}
	return nil
}

// Bootstrap runs the bootstrapper o names ("" picks mmdebstrap when it is
// installed, as it is faster, and debootstrap otherwise), verifying the
// archive against the keyring ResolveKeyring finds.
func Bootstrap(ctx context.Context, r host.Runner, o Options, target string, progress func(Stage), lookPath func(string) (string, error)) error {
	keyring, err := ResolveKeyring(ctx, o)
	if err != nil {
		return err
	}
	o.Keyring = keyring
	switch tool := chooseBootstrapper(o, lookPath); tool {
	case "debootstrap":
		return Debootstrap(ctx, r, o, target, progress)
	case "mmdebstrap":
		if _, err := lookPath("mmdebstrap"); err != nil {
			return fmt.Errorf("mmdebstrap %w (install it: apt-get install mmdebstrap)", host.ErrToolMissing)
		}
		return Mmdebstrap(ctx, r, o, target, progress)
	default:
		return fmt.Errorf("unknown bootstrapper %q (use debootstrap or mmdebstrap)", tool)
	}
}

// chooseBootstrapper is the one o names, or mmdebstrap when it is
// installed (it is faster), or debootstrap.
func chooseBootstrapper(o Options, lookPath func(string) (string, error)) string {
	if o.Bootstrapper != "" {
		return o.Bootstrapper
	}
	if _, err := lookPath("mmdebstrap"); err == nil {
		return "mmdebstrap"
	}
	return "debootstrap"
}
