package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nsbox/nsbox/bootstrap"
	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
	"github.com/nsbox/nsbox/network"
	"golang.org/x/sys/unix"
)

// Info is what list and status report of one machine. The JSON shape is
// part of nsbox's interface (docs/json.md).
type Info struct {
	Name       string     `json:"name"`
	State      string     `json:"state"` // "running" or "stopped"
	OS         string     `json:"os"`
	Version    string     `json:"version"`
	Addresses  []string   `json:"addresses"`
	Root       string     `json:"root"`
	Since      *time.Time `json:"since,omitempty"`
	Managed    bool       `json:"managed"` // false: known to machined, not an nsbox machine
	Leader     int        `json:"leader,omitempty"`
	Unit       string     `json:"unit,omitempty"`
	Service    string     `json:"service,omitempty"`
	Interfaces []string   `json:"interfaces"`
	Backend    string     `json:"backend"`
	Usage      int64      `json:"usage_bytes,omitempty"` // disk usage of the tree, with ListOptions.Usage
	ReadOnly   bool       `json:"read_only"`
	// ImageDir is the directory of machinectl's images a machine that is
	// not nsbox's is in (/var/lib/machines), and ImageType what its image
	// is there: "directory", "subvolume" or "raw".
	ImageDir  string `json:"image_dir,omitempty"`
	ImageType string `json:"image_type,omitempty"`
	// Storage is how the tree is kept: "copy", "btrfs" or "overlay"
	// (nsbox's machines only), and Base the cached base the machine was
	// made from (an overlay machine is over it), whose size BaseUsage is
	// for an overlay machine (with ListOptions.Usage).
	Storage   string `json:"storage,omitempty"`
	Base      string `json:"base,omitempty"`
	BaseUsage int64  `json:"base_usage_bytes,omitempty"`
	// Snapshots are the names of the machine's snapshots ([] when none).
	Snapshots []string `json:"snapshots"`
	// Status only.
	Autostart string `json:"autostart,omitempty"` // "enabled", "disabled"
	// Sockets are the host ports that boot it on a connection
	// ("tcp:8080:80"; enable --socket).
	Sockets []string        `json:"sockets,omitempty"`
	Limits  *backend.Limits `json:"limits,omitempty"`
	Use     *backend.Usage  `json:"use,omitempty"` // current resource use of a running machine
	Options *BootOptions    `json:"boot_options,omitempty"`
	// App is what an app machine runs in place of an init (nsbox's
	// machines only; nil for one that boots).
	App *App `json:"app,omitempty"`
}

// onDisk lists the machines under RootDir: the trees in the store with
// valid names, and the trees of an earlier nsbox not moved into it yet.
// Staging trees (".#...") and anything else are passed over.
func (m *Manager) onDisk() []string {
	var out []string
	seen := map[string]bool{}
	ents, _ := os.ReadDir(m.Store())
	for _, e := range ents {
		if e.IsDir() && ValidateName(e.Name()) == nil {
			out = append(out, e.Name())
			seen[e.Name()] = true
		}
	}
	ents, _ = os.ReadDir(m.RootDir)
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() && !seen[n] && !strings.HasPrefix(n, ".") && ValidateName(n) == nil && isLegacy(m.Path(n)) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// mergeList joins the machines on disk with the running ones. A running
// machine whose root is not RootDir/NAME (or its ImagesDir link) is
// foreign: listed, marked unmanaged, and never touched unless named.
func mergeList(p Paths, disk []string, running []backend.Running, backend string) []Info {
	byName := map[string]*Info{}
	var out []*Info
	for _, n := range disk {
		i := &Info{Name: n, State: "stopped", Root: p.Path(n), Managed: true, Backend: backend}
		byName[n] = i
		out = append(out, i)
	}
	for _, r := range running {
		i, ok := byName[r.Name]
		ours := ok && (r.RootDirectory == "" || r.RootDirectory == i.Root || r.RootDirectory == p.Tree(r.Name) ||
			r.RootDirectory == filepath.Join(p.ImagesDir, r.Name))
		if !ours {
			i = &Info{Name: r.Name, Root: r.RootDirectory, Backend: backend}
			out = append(out, i)
			if ok {
				// Same name, other tree: show both, the foreign one marked.
				i.Name = r.Name
			}
		}
		i.State = "running"
		i.Leader = r.Leader
		i.Unit = r.Unit
		i.Service = r.Service
		i.Addresses = r.Addresses
		if !r.Since.IsZero() {
			since := r.Since
			i.Since = &since
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	res := make([]Info, len(out))
	for k, i := range out {
		if i.Addresses == nil {
			i.Addresses = []string{}
		}
		if i.Interfaces == nil {
			i.Interfaces = []string{}
		}
		if i.Snapshots == nil {
			i.Snapshots = []string{}
		}
		res[k] = *i
	}
	return res
}

// withImages adds machinectl's images to infos: a running machine started
// from one (its root is the image) says so, the others are listed
// stopped. All are foreign (Managed false).
func withImages(infos []Info, images []MachinectlImage, backend string) []Info {
	for _, img := range images {
		found := false
		for k := range infos {
			i := &infos[k]
			if !i.Managed && i.Name == img.Name && i.Root == img.Path {
				i.ImageDir, i.ImageType, i.ReadOnly = img.Dir, img.Type, img.ReadOnly
				found = true
			}
		}
		if !found {
			infos = append(infos, Info{Name: img.Name, State: "stopped", Root: img.Path, Backend: backend,
				ImageDir: img.Dir, ImageType: img.Type, ReadOnly: img.ReadOnly,
				Addresses: []string{}, Interfaces: []string{}, Snapshots: []string{}})
		}
	}
	sort.SliceStable(infos, func(a, b int) bool { return infos[a].Name < infos[b].Name })
	return infos
}

// ListOptions choose what List and Status read beyond what the backend
// and the tree's os-release say.
type ListOptions struct {
	// Usage walks each tree for its disk usage: a second or more for a
	// big tree, so only when asked (list --usage).
	Usage bool
}

// List reports every nsbox machine, running or not, and the other
// machines the backend knows.
func (m *Manager) List(ctx context.Context, o ListOptions) ([]Info, error) {
	running, err := m.Backend.List(ctx)
	if err != nil {
		return nil, err
	}
	infos := mergeList(m.Paths, m.onDisk(), running, m.Backend.Name())
	infos = withImages(infos, m.machinectlImages(), m.Backend.Name())
	m.fill(infos, o)
	return infos, nil
}

// fill adds what is read from each tree and each running machine's
// network namespace: the trees side by side (a walk for the disk usage
// takes a while), the namespaces in one pass over the host's links.
func (m *Manager) fill(infos []Info, o ListOptions) {
	var leaders []int
	for _, i := range infos {
		if i.State == "running" && i.Leader > 0 {
			leaders = append(leaders, i.Leader)
		}
	}
	var wg sync.WaitGroup
	for k := range infos {
		i := &infos[k]
		if i.Root == "" && !i.Managed {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rec storage.Record
			if i.Managed {
				rec = m.storageOf(i.Name)
			}
			if i.Root != "" {
				if osr, ok := m.readOSReleaseOf(i.Name, i.Root, rec); ok {
					i.OS, i.Version = osr.ID, osr.Version
				}
			}
			if i.ImageType != "" && o.Usage {
				i.Usage = imageUsage(i.Root, i.ImageType)
			}
			if i.Managed {
				if opts, err := m.Options(i.Name); err == nil {
					i.App = opts.App
				}
				i.ReadOnly = m.ReadOnly(i.Name)
				i.Storage = string(rec.Kind)
				if rec.Kind == storage.Copy && bootstrap.IsSubvolume(m.Dir(i.Name)) {
					i.Storage = string(storage.Btrfs)
				}
				i.Base = rec.Base
				i.Snapshots = m.SnapshotNames(i.Name)
				if o.Usage {
					// The tree itself: Root is the link users know it by.
					// An overlay machine's own bytes are its upper's.
					if rec.Kind == storage.Overlay {
						i.Usage, _ = host.DiskUsage(m.layout(i.Name).Upper())
						if lower, err := m.lowerOf(rec); err == nil {
							i.BaseUsage, _ = host.DiskUsage(lower)
						}
					} else {
						i.Usage, _ = host.DiskUsage(m.Dir(i.Name))
					}
				}
			}
		}()
	}
	seen := network.Inspect(leaders)
	for k := range infos {
		i := &infos[k]
		s, ok := seen[i.Leader]
		if i.State != "running" || i.Leader <= 0 || !ok {
			continue
		}
		if len(i.Addresses) == 0 && s.Addresses != nil {
			i.Addresses = s.Addresses
		}
		for _, p := range s.Peers {
			i.Interfaces = append(i.Interfaces, p.Name)
		}
	}
	wg.Wait()
}

// imageUsage is the disk usage of one of machinectl's images at path.
func imageUsage(path, typ string) int64 {
	if typ != ImageRaw {
		u, _ := host.DiskUsage(path)
		return u
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// Status reports one machine, nsbox's or foreign.
func (m *Manager) Status(ctx context.Context, name string, o ListOptions) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	var running []backend.Running
	// A machine that goes away while it is asked (machined dropped it, its
	// leader died, its unit starts it again) is reported stopped.
	if r, err := m.Backend.Get(ctx, name); err == nil {
		running = append(running, r)
	} else if !errors.Is(err, ErrNotRunning) {
		return Info{}, err
	}
	var disk []string
	if m.exists(name) {
		disk = append(disk, name)
	}
	infos := mergeList(m.Paths, disk, running, m.Backend.Name())
	if img, ok := m.machinectlImage(name); ok && len(disk) == 0 {
		infos = withImages(infos, []MachinectlImage{img}, m.Backend.Name())
	}
	if len(infos) == 0 {
		return Info{}, m.checkName(name, true)
	}
	m.fill(infos[:1], o)
	i := infos[0]
	if i.Managed {
		if o, err := m.Options(name); err == nil {
			// docs/json.md: empty lists are [], never left out or null.
			if o.Binds == nil {
				o.Binds = []Bind{}
			}
			if o.Ports == nil {
				o.Ports = []string{}
			}
			if o.BindUsers == nil {
				o.BindUsers = []string{}
			}
			i.Options = &o
		}
		if l, err := m.Limits(name); err == nil && !l.IsZero() {
			i.Limits = &l
		}
		i.Autostart = m.AutostartState(ctx, name)
		i.Sockets = m.Sockets(name)
	}
	if i.State == "running" {
		if u, err := m.Backend.Usage(ctx, name); err == nil {
			i.Use = &u
		}
	}
	return i, nil
}
