package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nsbox/nsbox/machine"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "bootstrap a new machine from a Debian or Ubuntu release, or make one from a container image",
		ArgsUsage: "NAME",
		Description: "Bootstraps a root file system into ROOT-DIR/NAME. When NAME is a release\n" +
			"codename (bookworm, trixie, jammy, noble, ...) that is the release. The\n" +
			"first create of a release bootstraps a base into /var/cache/nsbox/bases;\n" +
			"later ones copy it (see: nsbox cache).\n\n" +
			"   nsbox create bookworm\n   nsbox create web --release trixie --include nginx\n\n" +
			"With --from, the machine is made from a container image instead: from a\n" +
			"registry (docker://[REGISTRY/]REPO[:TAG|@DIGEST], credentials from the\n" +
			"Docker config and its credential helpers), an OCI image layout\n" +
			"(oci:DIR[:TAG]) or a docker save archive (docker-archive:FILE). Its\n" +
			"layers are kept by digest in CACHE/oci and shared between images, and the\n" +
			"image is flattened once into a base (CACHE/bases/image-DIGEST-PLATFORM)\n" +
			"that every machine from it is made over, as from a release's base. An\n" +
			"image with an init (systemd) boots it; one without is an app machine,\n" +
			"which runs the image's Entrypoint and Cmd with its Env, WorkingDir and\n" +
			"User under nspawn's stub init (--cmd replaces the Cmd, --boot asks for\n" +
			"the init).\n\n" +
			"   nsbox create deb --from docker://debian:bookworm\n   nsbox create pi --from docker://debian:bookworm --arch arm64\n" +
			"   nsbox create web --from docker://nginx:stable --cmd 'nginx -g \"daemon off;\"'\n\n" +
			"Or from a root file system tarball at an http(s) URL (.tar, .tar.gz,\n" +
			".tar.xz, .tar.zst), verified as importctl pull-tar verifies before a\n" +
			"byte of it is extracted: --verify=checksum (the default) checks its line\n" +
			"in SHA256SUMS beside it; --verify=signature first checks SHA256SUMS.gpg,\n" +
			"a detached signature of SHA256SUMS, with gpgv against --keyring (default:\n" +
			"/etc/systemd/import-pubring.gpg or /usr/lib/systemd/import-pubring.gpg,\n" +
			"and their .pgp names); --verify=no checks nothing, with a warning. Plain\n" +
			"http:// is taken only to loopback or with --verify=signature. Verified\n" +
			"downloads are kept in CACHE/downloads until prune.\n\n" +
			"   nsbox create box --from https://example.org/images/rootfs.tar.zst\n" +
			"   nsbox create box --from https://example.org/rootfs.tar.xz --verify=signature --keyring signer.gpg",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "release", Aliases: []string{"r"}, Usage: "release codename (default: NAME, if it is one)"},
			&cli.StringFlag{Name: "distro", Usage: "debian or ubuntu (default: follows from the release)"},
			&cli.StringFlag{Name: "mirror", Usage: "archive mirror URL (default: debootstrap's own)"},
			&cli.StringFlag{Name: "variant", Value: "minbase", Usage: "debootstrap variant"},
			&cli.StringFlag{Name: "include", Usage: "extra packages, comma-separated"},
			&cli.StringFlag{Name: "arch", Usage: "architecture (default: the host's)"},
			&cli.BoolFlag{Name: "no-cache", Usage: "bootstrap (or apply an image's layers) straight into the machine, not from a cached base"},
			&cli.StringFlag{Name: "storage", Value: "auto", Usage: "overlay (over the base: nothing copied), copy (of the base) or btrfs (a snapshot of it); auto: btrfs where the root and cache directories are on btrfs, overlay elsewhere, copy where overlayfs cannot serve"},
			&cli.StringFlag{Name: "bootstrapper", Usage: "debootstrap or mmdebstrap (default: mmdebstrap when installed)"},
			&cli.DurationFlag{Name: "refresh-older-than", Usage: "refresh a cached base older than this before use (e.g. 720h)"},
			&cli.StringFlag{Name: "from", Usage: "make the machine from a container image (docker://REF, oci:DIR[:TAG] or docker-archive:FILE) or a root file system tarball's http(s) URL"},
			&cli.StringFlag{Name: "platform", Usage: "with --from: the image's platform in an index, OS/ARCH[/VARIANT] (default: the host's; --arch says the architecture alone)"},
			&cli.StringFlag{Name: "max-size", Usage: "with --from: the most an image's layers, or a tarball and what it holds, may write (default 64G)"},
			&cli.StringFlag{Name: "verify", Usage: "with --from URL: checksum (SHA256SUMS beside it; the default), signature (and SHA256SUMS.gpg by a key of --keyring) or no"},
			&cli.StringFlag{Name: "keyring", Usage: "with --verify=signature: the OpenPGP public keys to trust (default: systemd's import-pubring.gpg)"},
			&cli.BoolFlag{Name: "boot", Usage: "with --from: boot the image's init (the default for an image that has one)"},
			&cli.StringFlag{Name: "cmd", Usage: "with --from: an app machine running `CMD` (words split as a shell would, nothing expanded) in place of the image's Cmd"},
			outputFlag,
		},
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			if err := checkOutput(c); err != nil {
				return err
			}
			kind, err := machine.ParseStorage(c.String("storage"))
			if err != nil {
				return usageError{err.Error()}
			}
			if kind == machine.StorageOverlay && c.Bool("no-cache") {
				return usagef("--storage overlay is made over a cached base: leave out --no-cache")
			}
			from := c.String("from")
			if err := checkFromFlags(c, from); err != nil {
				return err
			}
			var cmd []string
			if c.IsSet("cmd") {
				if cmd, err = machine.SplitCommand(c.String("cmd")); err != nil {
					return usagef("%v", err)
				}
			}
			var maxBytes int64
			if s := c.String("max-size"); s != "" {
				n, err := machine.ParseSize(s)
				if err != nil || n == 0 || n > 1<<62 {
					return usagef("--max-size %q: give a size, as 20G or 500M", s)
				}
				maxBytes = int64(n)
			}
			m, err := manager(c)
			if err != nil {
				return err
			}
			var include []string
			if s := c.String("include"); s != "" {
				include = strings.Split(s, ",")
			}
			p := newProgress(os.Stderr, quiet(c), logrus.IsLevelEnabled(logrus.InfoLevel))
			res, err := m.Create(c.Context, name, machine.CreateOptions{
				Release: c.String("release"), Distro: c.String("distro"), Mirror: c.String("mirror"),
				Variant: c.String("variant"), Include: include, Arch: c.String("arch"),
				NoCache: c.Bool("no-cache"), Bootstrapper: c.String("bootstrapper"), MaxAge: c.Duration("refresh-older-than"),
				Progress: p.stage, Storage: kind,
				From: from, Platform: c.String("platform"), MaxImageBytes: maxBytes,
				Init: c.Bool("boot"), Cmd: cmd,
				Verify: c.String("verify"), Keyring: c.String("keyring"), Notice: p.notice,
			})
			p.done()
			if err != nil {
				return fmt.Errorf("create %s: %w", name, err)
			}
			if c.String("output") == "json" {
				return writeJSON(os.Stdout, createResult{Name: name, Path: m.Path(name), Created: !res.Existed, Origin: originJSON(res.Origin)})
			}
			if quiet(c) {
				return nil
			}
			if res.Existed {
				fmt.Fprintf(os.Stderr, "%s exists already, made from %s: nothing changed\n", name, machine.Printable(res.Origin.String()))
			} else {
				fmt.Fprintf(os.Stderr, "created %s in %s (%s); boot it with: nsbox boot %s\n", name, m.Path(name), p.elapsed(), name)
			}
			return nil
		},
	}
}

// createResult is create -o json (docs/json.md).
type createResult struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Created is false when the machine was there already, made from
	// the same source, and nothing changed.
	Created bool            `json:"created"`
	Origin  *machine.Origin `json:"origin"`
}

// originJSON is o for JSON: null when nothing was recorded.
func originJSON(o machine.Origin) *machine.Origin {
	if o.Kind == "" {
		return nil
	}
	return &o
}

// progress shows a bootstrap's stage: one live line on a terminal, a line
// per phase otherwise, debootstrap's own lines with --verbose.
type progress struct {
	f       *os.File
	tty     bool
	quiet   bool
	verbose bool
	start   time.Time
	phase   string
	drawn   bool
	said    map[string]bool
}

func newProgress(f *os.File, quiet, verbose bool) *progress {
	return &progress{f: f, tty: term.IsTerminal(int(f.Fd())), quiet: quiet, verbose: verbose, start: time.Now()}
}

func (p *progress) elapsed() string { return time.Since(p.start).Round(time.Second).String() }

func (p *progress) stage(s machine.Stage) {
	switch {
	case p.quiet:
	case p.verbose:
		fmt.Fprintln(p.f, s.Line)
	case p.tty:
		if s.Phase == "" {
			return
		}
		line := fmt.Sprintf("[%5s] %s", p.elapsed(), s.Phase)
		if s.Packages > 0 {
			line += fmt.Sprintf(" %d packages", s.Packages)
		}
		if s.Package != "" {
			line += ": " + s.Package
		}
		fmt.Fprintf(p.f, "\r\033[K%s", line)
		p.drawn = true
	default:
		// debootstrap goes back and forth between phases; say each once.
		if s.Phase != "" && !p.said[s.Phase] {
			if p.said == nil {
				p.said = map[string]bool{}
			}
			p.said[s.Phase] = true
			fmt.Fprintf(p.f, "[%5s] %s\n", p.elapsed(), s.Phase)
		}
	}
	if s.Phase != "" {
		p.phase = s.Phase
	}
}

// notice says a line of its own, over the live line.
func (p *progress) notice(line string) {
	if p.quiet {
		return
	}
	if p.drawn {
		fmt.Fprint(p.f, "\r\033[K")
		p.drawn = false
	}
	fmt.Fprintln(p.f, line)
}

func (p *progress) done() {
	if p.drawn {
		fmt.Fprint(p.f, "\r\033[K")
	}
}

// checkFromFlags refuses what does not go with --from (the release's
// flags), and --from's own flags without it or with the other kind of
// source.
func checkFromFlags(c *cli.Context, from string) error {
	if from == "" {
		for _, f := range []string{"platform", "max-size", "verify", "keyring", "boot", "cmd"} {
			if c.IsSet(f) {
				return usagef("--%s goes with --from (a container image or a URL)", f)
			}
		}
		return nil
	}
	if c.IsSet("boot") && c.IsSet("cmd") {
		return usagef("--boot boots the image's init and --cmd runs a command instead: give one")
	}
	url := machine.IsURLSource(from)
	if !url && !machine.IsImageSource(from) {
		return usagef("--from %q: give docker://[REGISTRY/]REPO[:TAG|@DIGEST], oci:DIR[:TAG], docker-archive:FILE or an http(s) URL of a tarball", from)
	}
	for _, f := range []string{"release", "distro", "mirror", "variant", "include", "bootstrapper", "refresh-older-than"} {
		if c.IsSet(f) {
			return usagef("--%s is for a machine bootstrapped from a release; --from makes it from an image or a tarball", f)
		}
	}
	if url {
		for _, f := range []string{"platform", "arch"} {
			if c.IsSet(f) {
				return usagef("--%s picks an image from an index: a tarball from a URL is what it is", f)
			}
		}
		for _, f := range []string{"boot", "cmd"} {
			if c.IsSet(f) {
				return usagef("--%s is for a machine from a container image: a tarball's machine boots its init (boot --cmd runs a command in it)", f)
			}
		}
		switch v := c.String("verify"); v {
		case "", machine.VerifyChecksum, machine.VerifySignature, machine.VerifyNo:
			if c.IsSet("keyring") && v != machine.VerifySignature {
				return usagef("--keyring goes with --verify=signature")
			}
		default:
			return usagef("--verify %q: give checksum, signature or no", v)
		}
		return nil
	}
	for _, f := range []string{"verify", "keyring"} {
		if c.IsSet(f) {
			return usagef("--%s goes with --from URL (a tarball over http or https)", f)
		}
	}
	return nil
}
