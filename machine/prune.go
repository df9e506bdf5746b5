package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/machine/direct"
	"github.com/nsbox/nsbox/machine/host"
	"github.com/nsbox/nsbox/machine/storage"
)

// nsbox prune removes what nothing needs: what commands that were killed
// left, the records of machines that are gone, and what the base cache
// keeps for nothing. Each leftover is known by nsbox's own naming, and is
// taken only under the lock that the command which made it held (without
// waiting: one that is held is in use, and left). A machine that runs, is
// booting or is being made, and what it is over, are never touched.

// PruneItem is one leftover that prune removed, or would remove. The JSON
// shape is part of nsbox's interface (docs/json.md).
type PruneItem struct {
	// Kind is PruneStaging, PruneState, PruneEphemeral, PruneBase,
	// PrunePackages, PruneLayers or PruneDownloads.
	Kind  string `json:"kind"`
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
	// Removed is false for a dry run, and for a leftover whose removal
	// failed (Error says why).
	Removed bool   `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// The kinds of leftovers.
const (
	// PruneStaging is the tree of a create, clone, import, snapshot or
	// base bootstrap that was killed.
	PruneStaging = "staging"
	// PruneState is a record, lock, log or link of a machine that is gone,
	// or a lock file nobody holds.
	PruneState = "state"
	// PruneEphemeral is the throwaway upper of a boot --ephemeral that no
	// machine runs any more (the host died under it).
	PruneEphemeral = "ephemeral"
	// PruneBase is an earlier version of a cached base that no machine or
	// run is over, or a base made from an image that no machine was made
	// from.
	PruneBase = "base"
	// PrunePackages is a cached package no current base has installed.
	PrunePackages = "packages"
	// PruneLayers is a cached image layer no machine's image record and
	// no image base names (create --from), or what a pull cut short left
	// of one.
	PruneLayers = "layers"
	// PruneDownloads is a tarball create --from URL downloaded and keeps
	// for the next create of that URL, or what a download cut short by a
	// kill left.
	PruneDownloads = "downloads"
)

// ErrPruneFailed says that some leftovers could not be removed; the
// items say which.
var ErrPruneFailed = errors.New("could not remove every leftover")

// pruner collects what a prune finds, and removes it unless dryRun.
type pruner struct {
	dryRun bool
	items  []PruneItem
	failed []string
}

// found records a leftover and, unless dry, removes it.
func (p *pruner) found(kind, path string, size int64, remove func() error) {
	it := PruneItem{Kind: kind, Path: path, Bytes: size}
	if !p.dryRun {
		if err := remove(); err != nil {
			it.Error = err.Error()
			p.failed = append(p.failed, path)
		} else {
			it.Removed = true
		}
	}
	p.items = append(p.items, it)
}

// lock takes the lock on path without waiting; false when someone holds
// it. release leaves a lock file that was there before on a dry run, so
// that a dry run changes nothing.
func (p *pruner) lock(path string) (release func(), ok bool) {
	_, err := os.Lstat(path)
	existed := err == nil
	if !existed && errors.Is(err, fs.ErrNotExist) {
		if _, derr := os.Stat(filepath.Dir(path)); derr != nil {
			// No directory, so nobody can hold it.
			return func() {}, true
		}
	}
	l, err := host.LockFile(context.Background(), path, true, false)
	if err != nil {
		return nil, false
	}
	if existed && p.dryRun {
		return l.Release, true
	}
	return l.Unlock, true
}

// Prune finds every leftover and removes it, or with dryRun only says
// which. It goes on past a removal that fails, and returns ErrPruneFailed
// at the end then.
func (m *Manager) Prune(ctx context.Context, dryRun bool) ([]PruneItem, error) {
	if err := m.requireRoot(); err != nil {
		return nil, err
	}
	p := &pruner{dryRun: dryRun}
	staged := m.pruneStaging(p)
	m.pruneSnapshots(ctx, p)
	m.pruneEphemeral(ctx, p)
	m.pruneProbes(p)
	m.pruneRecords(ctx, p, staged)
	m.pruneLocks(p)
	// Bases first: a layer that only an unused image base names goes
	// with it (on a dry run too, where the base would go).
	gone := map[string]bool{}
	m.Bases().Leftovers(ctx, func(kind, path string, size int64, remove func() error) {
		p.found(kind, path, size, remove)
		if it := p.items[len(p.items)-1]; kind == PruneBase && (it.Removed || p.dryRun) {
			gone[path] = true
		}
	})
	m.pruneImageLayers(p, func(dir string) bool { return gone[dir] })
	m.pruneDownloads(p)
	if p.items == nil {
		p.items = []PruneItem{}
	}
	if len(p.failed) > 0 {
		return p.items, fmt.Errorf("%w: %s", ErrPruneFailed, strings.Join(p.failed, ", "))
	}
	return p.items, nil
}

// usage is what path takes on disk: a tree's blocks, as du counts them,
// or a file's.
func usage(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		n, _ := host.DiskUsage(path)
		return n
	}
	return st.Blocks * 512
}

// stagingTree matches the staging trees of every machine (stagingName
// matches one machine's).
var stagingTree = regexp.MustCompile(`^\.#(.+)\.([0-9a-f]{16}|[0-9]+)$`)

// pruneStaging finds the staging trees of creates, clones and imports that
// died: those whose lock nobody holds. It returns the names they were for.
func (m *Manager) pruneStaging(p *pruner) map[string]bool {
	names := map[string]bool{}
	for _, dir := range []string{m.Store(), m.RootDir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			sm := stagingTree.FindStringSubmatch(e.Name())
			if sm == nil || !e.IsDir() || ValidateName(sm[1]) != nil {
				continue
			}
			tree := filepath.Join(dir, e.Name())
			release, ok := p.lock(lockPath(tree))
			if !ok {
				continue // a create at work
			}
			names[sm[1]] = true
			p.found(PruneStaging, tree, usage(tree), func() error {
				// A create killed with SIGKILL leaves its debootstrap running.
				backend.KillWorkingIn(tree)
				host.UnmountUnder(tree)
				return host.RemoveTree(tree)
			})
			release()
		}
	}
	return names
}

// pruneProbes finds the overlay tries of receives that were killed
// (probeOverlay's, whose lock nobody holds), and their mounts.
func (m *Manager) pruneProbes(p *pruner) {
	ents, _ := os.ReadDir(m.overlayDir())
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), probePrefix) {
			continue
		}
		dir := filepath.Join(m.overlayDir(), e.Name())
		release, ok := p.lock(dir + ".lck")
		if !ok {
			continue // a probe at work
		}
		p.found(PruneStaging, dir, usage(dir), func() error {
			host.UnmountUnder(dir)
			return host.RemoveTree(dir)
		})
		release()
	}
}

// pruneSnapshots finds what snapshot commands that were killed left
// (".#..." beside the snapshots), and the empty snapshot directories of
// machines that are gone. Snapshots themselves are never leftovers: those
// of a machine that is gone may be all that is left of it (a rename whose
// move of them failed leaves them under the old name).
func (m *Manager) pruneSnapshots(ctx context.Context, p *pruner) {
	ents, _ := os.ReadDir(m.snapshotsDir())
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || ValidateName(name) != nil {
			continue
		}
		release, ok := p.lock(filepath.Join(m.snapshotsDir(), "."+name+".lck"))
		if !ok {
			continue // a snapshot command at work
		}
		dir := m.snapshotDir(name)
		snaps, _ := os.ReadDir(dir)
		kept := 0
		for _, s := range snaps {
			if !strings.HasPrefix(s.Name(), ".#") {
				kept++
				continue
			}
			path := filepath.Join(dir, s.Name())
			p.found(PruneStaging, path, usage(path), func() error { return m.removeSnapshotDir(ctx, path) })
		}
		if kept == 0 && !m.exists(name) {
			p.found(PruneState, dir, 0, func() error { return os.Remove(dir) })
		}
		release()
	}
}

// pruneEphemeral finds the throwaway uppers and records of ephemeral boots
// that nothing runs: the host died under them, and the machine has not
// booted since. One that runs, boots, or whose tree is mounted (about to
// start) is left, as is a record of a machine under another root.
func (m *Manager) pruneEphemeral(ctx context.Context, p *pruner) {
	names := map[string]bool{}
	ents, _ := os.ReadDir(filepath.Join(m.Store(), ".ephemeral"))
	for _, e := range ents {
		if e.IsDir() && ValidateName(e.Name()) == nil {
			names[e.Name()] = true
		}
	}
	recs, _ := os.ReadDir(filepath.Dir(m.ephemeralPath("x")))
	for _, e := range recs {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && ValidateName(name) == nil && m.owner(name) == "" {
			names[name] = true
		}
	}
	for _, name := range sortedKeys(names) {
		if m.inUse(ctx, name) {
			continue
		}
		release, ok := p.lock(filepath.Join(m.overlayDir(), "."+name+".lck"))
		if !ok {
			continue
		}
		if !m.inUse(ctx, name) && !storage.Mounted(m.Tree(name)) {
			path := m.ephemeralDir(name)
			if _, err := os.Lstat(path); err != nil {
				path = m.ephemeralPath(name)
			}
			size := usage(m.ephemeralDir(name)) + usage(m.ephemeralPath(name))
			p.found(PruneEphemeral, path, size, func() error { return m.dropEphemeral(name) })
		}
		release()
	}
}

// inUse reports whether machine name runs (on this backend: a direct
// machine's state file whose supervisor or container lives, or machined's
// registration), or is being booted.
func (m *Manager) inUse(ctx context.Context, name string) bool {
	if host.Held(filepath.Join(m.RunDir, "boot", name+".lck")) {
		return true
	}
	d := m.direct()
	if _, err := os.Lstat(d.StatePath(name)); err == nil && !d.StaleState(name) {
		return true
	}
	if m.Backend.Name() == "direct" {
		// That was its answer: its Get would say the same, and remove a
		// stale state file as it read it, which a dry run must not.
		return false
	}
	_, err := m.Backend.Get(ctx, name)
	return err == nil || !errors.Is(err, ErrNotRunning)
}

// direct is the direct backend's view of RunDir, for its state files
// whatever backend this Manager has.
func (m *Manager) direct() *direct.Backend {
	return &direct.Backend{RunDir: m.RunDir, LogDir: m.LogDir}
}

// pruneRecords finds what nsbox keeps of machines that are gone: the
// records that name them (storage, name, limits, address, the direct
// backend's state, console log) and nsbox's links to their trees. A name
// whose tree is here, that another root directory owns, that runs, or
// whose image lock is held (a create, rename or remove at work) is left.
// staged names the creates prune found killed: the storage record and
// overlay upper such a create made before its tree existed go with it;
// an upper is otherwise never taken (a rename cut short leaves a renamed
// machine's under its old name).
func (m *Manager) pruneRecords(ctx context.Context, p *pruner, staged map[string]bool) {
	names := map[string]bool{}
	add := func(dir, suffix string) {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if name, ok := strings.CutSuffix(e.Name(), suffix); ok && ValidateName(name) == nil {
				names[name] = true
			}
		}
	}
	add(filepath.Join(m.StateDir, "storage"), ".json")
	add(filepath.Join(m.StateDir, "names"), "")
	add(filepath.Dir(m.limitsPath("x")), ".json")
	add(filepath.Dir(m.imagePath("x")), ".json")
	add(filepath.Dir(m.linkPath("x")), "")
	add(filepath.Join(m.RunDir, "machines"), ".json")
	add(m.LogDir, ".log")
	add(m.LogDir, ".log.1")
	add(m.RootDir, "")
	if m.ImagesDir != "" {
		add(m.ImagesDir, "")
	}
	d := m.direct()
	for _, name := range sortedKeys(names) {
		if m.exists(name) {
			continue
		}
		release, ok := p.lock(lockPath(m.Tree(name)))
		if !ok {
			continue
		}
		if !m.exists(name) && !m.inUse(ctx, name) && !m.foreignImage(name) {
			m.pruneRecordsOf(p, name, staged[name])
		}
		release()
	}
	// The direct backend's state of a machine that is gone (supervisor
	// and container dead) goes whatever the name, as a read of it does.
	for _, f := range listDir(filepath.Join(m.RunDir, "machines")) {
		name, ok := strings.CutSuffix(f, ".json")
		if !ok || ValidateName(name) != nil || !d.StaleState(name) || host.Held(filepath.Join(m.RunDir, "boot", name+".lck")) {
			continue
		}
		path := d.StatePath(name)
		p.found(PruneState, path, usage(path), func() error {
			if !d.StaleState(name) {
				return fmt.Errorf("%s: the machine started again", path)
			}
			return removeFile(path)
		})
	}
}

// foreignImage reports whether ImagesDir holds an image of name that is
// not nsbox's link (machinectl's own): nsbox may have booted it, and what
// it keeps of it by name is not a leftover.
func (m *Manager) foreignImage(name string) bool {
	if m.ImagesDir == "" || filepath.Clean(m.ImagesDir) == filepath.Clean(m.RootDir) {
		return false
	}
	link := filepath.Join(m.ImagesDir, name)
	if _, err := os.Lstat(link); err != nil {
		return false
	}
	cur, err := os.Readlink(link)
	return err != nil || cur != m.Tree(name) && cur != m.Path(name)
}

// listDir names what dir holds ([] when it cannot be read).
func listDir(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// pruneRecordsOf finds the records of machine name, which is gone; the
// caller holds its image lock.
func (m *Manager) pruneRecordsOf(p *pruner, name string, staged bool) {
	file := func(path string) {
		if fi, err := os.Lstat(path); err == nil && !fi.IsDir() {
			p.found(PruneState, path, usage(path), func() error { return removeFile(path) })
		}
	}
	link := func(path string, targets ...string) {
		cur, err := os.Readlink(path)
		if err != nil {
			return
		}
		for _, t := range targets {
			if cur == t {
				file(path)
				return
			}
		}
	}
	var rec storage.Record
	if r := m.storageOf(name); r.Tree == m.Tree(name) {
		rec = r
	}
	lay := m.layout(name)
	_, upperErr := os.Lstat(lay.Dir)
	if rec.Tree != "" && staged && upperErr == nil {
		// A killed create's upper: it went into the overlay directory
		// before the tree was made.
		p.found(PruneStaging, lay.Dir, usage(lay.Dir), func() error {
			host.UnmountUnder(lay.Dir)
			return host.RemoveTree(lay.Dir)
		})
		upperErr = fs.ErrNotExist
	}
	if rec.Tree != "" && errors.Is(upperErr, fs.ErrNotExist) {
		file(m.storagePath(name))
	}
	link(m.namePath(name), m.RootDir)
	link(m.Path(name), storeLink(name))
	if m.ImagesDir != "" && filepath.Clean(m.ImagesDir) != filepath.Clean(m.RootDir) {
		link(filepath.Join(m.ImagesDir, name), m.Tree(name), m.Path(name))
	}
	// What is kept by name alone (limits, address, console log) is this
	// root's when no other root directory owns the name.
	if m.owner(name) != "" {
		return
	}
	file(m.limitsPath(name))
	file(m.imagePath(name))
	file(m.linkPath(name))
	file(filepath.Join(m.LogDir, name+".log"))
	file(filepath.Join(m.LogDir, name+".log.1"))
}

// pruneLocks finds the lock files of boots and throwaway runs that nobody
// holds (their nsbox was killed).
func (m *Manager) pruneLocks(p *pruner) {
	for _, dir := range []struct {
		path string
		name *regexp.Regexp
	}{
		{filepath.Join(m.RunDir, "boot"), regexp.MustCompile(`^[^.].*\.lck$`)},
		{filepath.Join(m.RunDir, "uids"), regexp.MustCompile(`^[0-9]+\.lck$`)},
	} {
		ents, _ := os.ReadDir(dir.path)
		for _, e := range ents {
			if !e.Type().IsRegular() || !dir.name.MatchString(e.Name()) {
				continue
			}
			path := filepath.Join(dir.path, e.Name())
			if host.Held(path) {
				continue
			}
			p.found(PruneState, path, usage(path), func() error {
				l, err := host.LockFile(context.Background(), path, true, false)
				if err != nil {
					return err
				}
				l.Unlock() // removes it, as nobody else holds it
				return nil
			})
		}
	}
}

// removeFile removes path; gone already is no failure.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// pruneImageLayers removes the cached image layers that no machine's image
// record and no image base names (gone says which bases this prune
// removed, or would), and the temporary files of pulls cut short, under
// the image cache's lock taken without waiting: while a create from an
// image holds it, nothing there is touched. A record that cannot be read
// keeps every layer.
func (m *Manager) pruneImageLayers(p *pruner, gone func(dir string) bool) {
	c := m.ImageCache()
	dir := filepath.Join(c.Dir, "blobs", "sha256")
	blobs := listDir(dir)
	if len(blobs) == 0 {
		return
	}
	release, ok := p.lock(c.LockPath())
	if !ok {
		return
	}
	defer release()
	users, ok := m.layerUsers(gone)
	if !ok {
		return
	}
	// The layers of base versions (export --format oci, push) stay while
	// their version does; a record of one that is gone goes, and its
	// layers with it.
	for _, f := range listDir(m.baseLayersDir()) {
		if !strings.HasSuffix(f, ".json") || strings.HasPrefix(f, ".") {
			continue
		}
		path := filepath.Join(m.baseLayersDir(), f)
		var r baseLayerRecord
		b, err := os.ReadFile(path)
		if err != nil || json.Unmarshal(b, &r) != nil {
			return
		}
		if _, err := m.basesIn(r.Bases).VersionRoot(r.Base, r.Version); err != nil {
			p.found(PruneLayers, path, usage(path), func() error { return removeFile(path) })
			continue
		}
		for _, l := range r.Layers {
			d := "sha256:" + strings.TrimPrefix(l.Digest, "sha256:")
			if users[d] == nil {
				users[d] = &LayerInfo{Digest: d}
			}
			users[d].Bases = appendNew(users[d].Bases, r.Base)
		}
	}
	for _, n := range blobs {
		if !strings.HasPrefix(n, ".#") && (!isSHA256Hex(n) || users["sha256:"+n] != nil) {
			continue
		}
		path := filepath.Join(dir, n)
		p.found(PruneLayers, path, usage(path), func() error { return removeFile(path) })
	}
}

// pruneDownloads removes the tarballs create --from URL kept (no machine
// needs them: each is a copy) and what downloads cut short left, under
// the downloads' lock taken without waiting: while a create from a URL
// holds it, nothing there is touched.
func (m *Manager) pruneDownloads(p *pruner) {
	dir := m.DownloadsDir()
	var found []string
	for _, n := range listDir(dir) {
		if n != ".lck" {
			found = append(found, n)
		}
	}
	if len(found) == 0 {
		return
	}
	release, ok := p.lock(filepath.Join(dir, ".lck"))
	if !ok {
		return
	}
	defer release()
	for _, n := range found {
		path := filepath.Join(dir, n)
		p.found(PruneDownloads, path, usage(path), func() error { return removeFile(path) })
	}
}

// isSHA256Hex reports whether s is a sha256 digest's hex, as the cache
// names its blobs.
func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
