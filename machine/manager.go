package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/dbusapi"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/machined"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/network"
	"github.com/sirupsen/logrus"
)

// Paths are where nsbox keeps machines and its own files.
type Paths struct {
	RootDir     string // machine roots: RootDir/NAME (default /srv)
	SettingsDir string // remembered boot options, NAME.nspawn (/etc/systemd/nspawn)
	ImagesDir   string // where machinectl looks for images (/var/lib/machines)
	// ImageSearchPath is every directory machined finds images in, in its
	// order, ImagesDir among them; nil is ImagesDir alone.
	ImageSearchPath []string
	RunDir          string // runtime state (/run/nsbox)
	LogDir          string // console logs of the direct backend (/var/log/nsbox)
	CacheDir        string // debootstrap's package cache (/var/cache/nsbox)
	StateDir        string // what nsbox remembers of machines (/var/lib/nsbox)
	// LockDir holds systemd's image locks by inode
	// (/run/systemd/nspawn/locks); empty takes only the lock beside each
	// image, as tests do.
	LockDir string
}

// DefaultPaths are the standard locations.
func DefaultPaths() Paths {
	return Paths{
		RootDir:         "/srv",
		SettingsDir:     "/etc/systemd/nspawn",
		ImagesDir:       "/var/lib/machines",
		ImageSearchPath: defaultImageSearchPath,
		RunDir:          "/run/nsbox",
		LogDir:          "/var/log/nsbox",
		CacheDir:        "/var/cache/nsbox",
		StateDir:        "/var/lib/nsbox",
		LockDir:         "/run/systemd/nspawn/locks",
	}
}

// Manager runs the lifecycle of machines over one Backend.
type Manager struct {
	Paths
	Backend backend.Backend
	// Why says why this backend was chosen, for --verbose and doctor.
	Why    string
	Runner host.Runner
	// Pool is the IPv4 prefix machine veth subnets are taken from.
	Pool string
	// Self is the path of this nsbox binary that units run to call back
	// into it: one only root can change (TrustedExecutable).
	Self func() (string, error)
	// Euid is the caller's effective user id (os.Geteuid in Open): what
	// needs root is refused without it. A field, so that tests run the
	// lifecycle against fakes without root.
	Euid int

	// Whether the host's networkd serves veths, asked once per Manager so
	// that one boot acts on one answer.
	networkdOnce   sync.Once
	networkdServes bool

	// bus is the system bus connection of the machined backend.
	bus *dbusapi.Bus
}

// Close releases the backend's connection to the system bus, if it has
// one.
func (m *Manager) Close() error {
	if m.bus != nil {
		return m.bus.Close()
	}
	return nil
}

// Config chooses and configures a Manager.
type Config struct {
	Paths
	// Backend is "auto", "machined" or "direct".
	Backend string
	// Self is the nsbox binary that units and the supervisor run; nil
	// makes no unit call back into nsbox.
	Self func() (string, error)
	// Supervisor is the arguments that make Self "nsbox __supervise", for
	// the direct backend.
	Supervisor []string
	// Pool is the address pool for veth links ("" means network.DefaultPool).
	Pool string
}

// Booted reports whether systemd is PID 1 (sd_booted).
func Booted() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// machinedService is the bus's activation file of machined, there when
// systemd-container is installed.
const machinedService = "/usr/share/dbus-1/system-services/org.freedesktop.machine1.service"

// Open picks the backend: machined where systemd is PID 1 and machined
// is installed, direct otherwise, unless cfg.Backend names one.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	m := &Manager{Paths: cfg.Paths, Runner: host.ExecRunner{}, Pool: cfg.Pool, Self: cfg.Self, Euid: os.Geteuid()}
	if m.Pool == "" {
		m.Pool = network.DefaultPool
	}
	db := &direct.Backend{RunDir: cfg.RunDir, LogDir: cfg.LogDir, Runner: m.Runner, Self: cfg.Self, Supervisor: cfg.Supervisor}
	useMachined := func() error {
		if !Booted() {
			return fmt.Errorf("%w: machined: systemd is not PID 1 on this host (use --backend direct)", ErrNoBackend)
		}
		// machined is started on demand by the bus: that it is installed
		// is what there is to check, and a file says so without the round
		// trip a call costs every command.
		if _, err := os.Stat(machinedService); err != nil {
			return fmt.Errorf("%w: machined is not installed (apt-get install systemd-container)", ErrNoBackend)
		}
		bus, err := dbusapi.Connect(ctx)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNoBackend, err)
		}
		md := bus.Machined()
		m.bus = bus
		m.Backend = &machined.Backend{Machines: md, Systemd: bus.Systemd(), Runner: m.Runner, UnitDir: "/etc/systemd/system"}
		return nil
	}
	switch cfg.Backend {
	case "", "auto":
		if !Booted() {
			m.Backend, m.Why = db, "systemd is not PID 1 (no /run/systemd/system)"
		} else if err := useMachined(); err != nil {
			m.Backend, m.Why = db, "machined is not available: "+err.Error()
		} else {
			m.Why = "systemd is PID 1 and machined is installed"
		}
	case "machined":
		if err := useMachined(); err != nil {
			return nil, err
		}
		m.Why = "chosen with --backend"
	case "direct":
		m.Backend, m.Why = db, "chosen with --backend"
	default:
		return nil, fmt.Errorf("%w: backend %q (use auto, machined or direct)", ErrInvalidOption, cfg.Backend)
	}
	logrus.Debugf("backend %s: %s", m.Backend.Name(), m.Why)
	m.migrateLegacy()
	return m, nil
}

func (m *Manager) settingsPath(name string) string {
	return filepath.Join(m.SettingsDir, name+".nspawn")
}

// requireRoot fails unless running as root.
func (m *Manager) requireRoot() error {
	if m.Euid != 0 {
		return fmt.Errorf("%w (try: sudo nsbox ...)", ErrNotRoot)
	}
	return nil
}

// Exists reports whether name is a machine on disk: a directory in the
// store (whole or not: a remove cut short is still a machine that remove
// can finish), or a tree of an earlier nsbox at RootDir/NAME.
func (m *Manager) exists(name string) bool {
	if fi, err := os.Lstat(m.Tree(name)); err == nil && fi.IsDir() {
		return true
	}
	return isLegacy(m.Path(name))
}

// Known checks that name is valid and names a machine: one of nsbox's
// under RootDir, or one the backend runs. Commands on several machines
// check every name with it before they act on any. Like every command
// that changes a machine, it requires root first, so a user hears that,
// not what an unreadable root directory hides.
func (m *Manager) Known(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	if err := m.checkOwner(name); err != nil {
		return err
	}
	if m.exists(name) {
		return nil
	}
	if _, err := m.Backend.Get(ctx, name); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotRunning) {
		return err
	}
	return m.notNsboxs(name, fmt.Errorf("%w %q (see: nsbox list)", ErrNotFound, name))
}

// checkName validates name and, with mustExist, that it is a machine.
func (m *Manager) checkName(name string, mustExist bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := m.checkOwner(name); err != nil {
		return err
	}
	if mustExist && !m.exists(name) {
		return m.notNsboxs(name, fmt.Errorf("%w %q under %s (see: nsbox list)", ErrNotFound, name, m.RootDir))
	}
	return nil
}

// checkRootAndName validates name, then requires root (so a user gets
// "must be run as root", not what an unreadable root directory hides),
// then, with mustExist, that the machine exists.
func (m *Manager) checkRootAndName(name string, mustExist bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	return m.checkName(name, mustExist)
}

// CreateOptions say what to bootstrap.
type CreateOptions struct {
	Release string
	Distro  string
	Mirror  string
	Variant string
	Include []string
	Arch    string
	// NoCache bootstraps straight into the machine instead of copying a
	// cached base.
	NoCache bool
	// Bootstrapper is "debootstrap", "mmdebstrap" or "" (the fastest one
	// installed).
	Bootstrapper string
	// MaxAge is the age past which a cached base is refreshed before use;
	// zero never refreshes (nsbox only warns).
	MaxAge   time.Duration
	Progress func(bootstrap.Stage)
	// Storage is how the machine's tree is kept; "" is a copy.
	Storage StorageKind
	// From, when set, names a container image to make the machine from
	// (docker://REF, oci:DIR[:TAG], docker-archive:FILE) instead of a
	// release; Platform (OS/ARCH[/VARIANT]) or Arch picks it from an
	// index, and MaxImageBytes caps what its layers write (0:
	// DefaultImageCap).
	From          string
	Platform      string
	MaxImageBytes int64
	// Init makes a machine from an image one that boots the image's init
	// (create --boot); Cmd, when not nil, an app machine running Cmd in
	// place of the image's Cmd (create --cmd). By default an image with
	// an init boots it, and one without is an app machine running its
	// Entrypoint and Cmd.
	Init bool
	Cmd  []string
	// Verify says how a tarball from a URL (From http:// or https://) is
	// verified: VerifyChecksum ("" too), VerifySignature against Keyring
	// ("": download.DefaultKeyrings), or VerifyNo. Stall is how long its
	// server may send nothing (0: a minute).
	Verify  string
	Keyring string
	Stall   time.Duration
	// Notice, when set, is told a line the user should see (what was
	// downloaded, how fast, how verified).
	Notice func(string)
}

// StaleBaseAge is the age after which nsbox tells the user a base is old.
const StaleBaseAge = 30 * 24 * time.Hour

// Bases is the base cache under CacheDir.
func (m *Manager) Bases() *bootstrap.BaseCache {
	return m.basesIn(filepath.Join(m.CacheDir, "bases"))
}

// basesIn is the base cache in dir.
func (m *Manager) basesIn(dir string) *bootstrap.BaseCache {
	return &bootstrap.BaseCache{Dir: dir, Runner: m.Runner, LookPath: exec.LookPath,
		Users: func(key, version string) []string { return m.baseUsers(dir, key, version) }}
}

// ResolveRelease decides the release of a new machine: the given one, or
// the machine's own name when that is a known codename.
func ResolveRelease(name string, o CreateOptions) (bootstrap.Release, error) {
	rel := o.Release
	if rel == "" {
		if !bootstrap.IsRelease(name) {
			return bootstrap.Release{}, fmt.Errorf("%w: %q is not a release name, so --release is needed (known: %s)",
				ErrInvalidOption, name, strings.Join(bootstrap.KnownReleases(o.Distro), ", "))
		}
		rel = name
	}
	return bootstrap.LookupRelease(rel, o.Distro)
}

// Create makes machine name from a release, an image or a tarball's URL
// (create), under the create lock of name (createLock). When the machine
// exists already, made from the same source (Origin.Same), it changes
// nothing and says so (Created.Existed); made from another source, or
// from none nsbox recorded, it is ErrExists, saying what it was made
// from.
func (m *Manager) Create(ctx context.Context, name string, o CreateOptions) (Created, error) {
	if err := m.checkName(name, false); err != nil {
		return Created{}, err
	}
	want, err := wantOrigin(name, o)
	if err != nil {
		return Created{}, err
	}
	if m.Euid == 0 {
		// (Without root, the create says so after its own checks.)
		lock, err := m.createLock(ctx, name, o.Notice)
		if err != nil {
			return Created{}, err
		}
		defer lock.Unlock()
		if m.exists(name) {
			return m.keepOrRefuse(name, want)
		}
	}
	if err := m.create(ctx, name, o); err != nil {
		return Created{}, err
	}
	return Created{Origin: m.OriginOf(name)}, nil
}

// create bootstraps a new machine into RootDir/name, or copies the cached
// base of its release: in a staging tree that becomes the machine only
// when whole (newTree), so an interrupted or failed create leaves nothing.
func (m *Manager) create(ctx context.Context, name string, o CreateOptions) error {
	if IsURLSource(o.From) {
		return m.createFromURL(ctx, name, o)
	}
	if o.From != "" {
		return m.createFromImage(ctx, name, o)
	}
	rel, err := ResolveRelease(name, o)
	if err != nil {
		return err
	}
	if err := m.requireRoot(); err != nil {
		return err
	}
	bo := bootstrap.Options{
		Release: rel, Mirror: o.Mirror, Variant: o.Variant, Include: o.Include, Arch: o.Arch,
		CacheDir:     filepath.Join(m.CacheDir, "debs", rel.Distro.Name+"-"+rel.Name),
		Bootstrapper: o.Bootstrapper, KeyringDir: bootstrap.KeyringsDir(m.CacheDir),
	}
	if err := bootstrap.Check(bo, exec.LookPath); err != nil {
		return err
	}
	switch o.Storage {
	case "":
		// auto: a snapshot where the base and the machine share btrfs,
		// an overlay elsewhere, a copy where overlayfs cannot serve.
		if o.NoCache || (bootstrap.OnBtrfs(m.RootDir) && bootstrap.OnBtrfs(m.CacheDir)) {
			break
		}
		err := m.createOverlay(ctx, name, bo, o)
		if !errors.Is(err, storage.ErrUnsupported) {
			return err
		}
		logrus.Warnf("%v: made %s a copy of its base instead (--storage copy does so without trying)", err, name)
	case storage.Overlay:
		return m.createOverlay(ctx, name, bo, o)
	case storage.Btrfs:
		if !bootstrap.OnBtrfs(m.RootDir) || !bootstrap.OnBtrfs(m.CacheDir) {
			return fmt.Errorf("%w: --storage btrfs needs the root directory (%s) and the cache (%s) on btrfs", ErrInvalidOption, m.RootDir, m.CacheDir)
		}
	}
	var from bootstrap.BaseInfo
	err = m.newTree(ctx, name, func(tmp string) error {
		if o.NoCache {
			// 0755 whatever the umask, as a machine's root is.
			if err := os.Mkdir(tmp, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(tmp, 0o755); err != nil {
				return err
			}
			return bootstrap.Bootstrap(ctx, m.Runner, bo, tmp, o.Progress, exec.LookPath)
		}
		var err error
		from, err = m.cloneBase(ctx, bo, o, tmp)
		return err
	})
	if err == nil && !o.NoCache {
		m.recordBase(name, storage.Record{Base: from.Key, Version: from.Version, Bases: m.Bases().Dir})
	}
	return err
}

// cloneBase copies the cached base for bo into staging (which does not
// exist yet), bootstrapping the base first when it is not cached yet.
func (m *Manager) cloneBase(ctx context.Context, bo bootstrap.Options, o CreateOptions, staging string) (bootstrap.BaseInfo, error) {
	bases := m.Bases()
	root, info, unlock, err := bases.Get(ctx, bo, o.Progress)
	if err != nil {
		return info, err
	}
	if age := info.Age(); o.MaxAge > 0 && age > o.MaxAge {
		unlock()
		logrus.Warnf("base %s is %s old: refreshing it", info.Key, age.Round(time.Hour))
		if _, err := bases.Refresh(ctx, info, o.Progress); err != nil {
			return info, err
		}
		root, info, unlock, err = bases.Get(ctx, bo, o.Progress)
		if err != nil {
			return info, err
		}
	} else if age > StaleBaseAge {
		logrus.Warnf("base %s is %d days old (refresh it: nsbox cache refresh %s)", info.Key, int(age.Hours()/24), info.Key)
	}
	defer unlock()
	if o.Progress != nil {
		o.Progress(bootstrap.Stage{Phase: "copying base " + info.Key})
	}
	return info, bootstrap.CopyTree(ctx, m.Runner, root, staging)
}

// linkImage makes the machine visible to machinectl and
// systemd-nspawn@.service, which look in ImagesDir only.
func (m *Manager) linkImage(name string) {
	if m.storageOf(name).Kind == storage.Overlay {
		m.startHooks(name, false)
	}
	if m.ImagesDir == "" || filepath.Clean(m.ImagesDir) == filepath.Clean(m.RootDir) {
		return
	}
	link := filepath.Join(m.ImagesDir, name)
	if cur, err := os.Readlink(link); err == nil && cur == m.Tree(name) {
		return
	}
	if _, err := os.Lstat(link); err == nil {
		logrus.Warnf("%s exists and is not nsbox's: machinectl will not see %s", link, name)
		return
	}
	if err := os.MkdirAll(m.ImagesDir, 0o700); err != nil {
		logrus.Warnf("link %s: %v", link, err)
		return
	}
	if err := os.Symlink(m.Tree(name), link); err != nil {
		logrus.Warnf("link %s: %v", link, err)
	}
}

// startHooks gives the host's own way to start machine name (machinectl
// start) what an overlay machine needs around its start, or takes it away
// (gone).
func (m *Manager) startHooks(name string, gone bool) {
	sh, ok := m.Backend.(backend.StartHooks)
	if !ok || m.Euid != 0 {
		return
	}
	var pre, post []string
	if !gone {
		var err error
		if pre, post, err = m.storageHooks(name); err != nil {
			logrus.Warnf("%s: %v", name, err)
			return
		}
	}
	if err := sh.SetStartHooks(context.Background(), name, pre, post); err != nil {
		logrus.Warnf("machinectl start %s: %v", name, err)
	}
}

// unlinkImage removes the ImagesDir link, only if it is nsbox's.
func (m *Manager) unlinkImage(name string) {
	m.startHooks(name, true)
	link := filepath.Join(m.ImagesDir, name)
	if cur, err := os.Readlink(link); err == nil && (cur == m.Tree(name) || cur == m.Path(name)) {
		_ = os.Remove(link)
	}
}
