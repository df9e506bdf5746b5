package direct

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/backend"
	"golang.org/x/sys/unix"
)

// cgroupHierarchies lists the hierarchies a machine of the direct backend
// gets a cgroup in: the unified one, and on a hybrid or legacy host the
// name=systemd one (systemd in the container needs both) and the v1
// controllers that carry resource limits.
func cgroupHierarchies() []string {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{"/sys/fs/cgroup"}
	}
	var out []string
	seen := map[string]bool{}
	for _, h := range []string{"systemd", "unified", "memory", "cpu", "cpuacct", "pids", "blkio"} {
		p, err := filepath.EvalSymlinks(filepath.Join("/sys/fs/cgroup", h))
		if err != nil || seen[p] {
			continue
		}
		if unix.Statfs(p, &st) == nil && (st.Type == unix.CGROUP2_SUPER_MAGIC || st.Type == unix.CGROUP_SUPER_MAGIC) {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// cgroupPath is the direct backend's cgroup of a machine, relative to each
// hierarchy. Where no systemd runs, nothing else owns this part of the tree.
func cgroupPath(name string) string { return filepath.Join("nsbox", name) }

// makeCgroup creates the machine's cgroups.
func makeCgroup(name string) error {
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, cgroupPath(name))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// joinCgroup moves the calling process into the machine's cgroups. nspawn
// hands the cgroup to the container (chowned to its root under
// --private-users), which it cannot do with the root cgroup.
func joinCgroup(name string) error {
	if err := makeCgroup(name); err != nil {
		return err
	}
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, cgroupPath(name))
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// removeCgroup removes the machine's cgroups, deepest first, once nothing
// runs in them. The caller has left them already.
func removeCgroup(name string) {
	for _, h := range cgroupHierarchies() {
		base := filepath.Join(h, cgroupPath(name))
		var dirs []string
		_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = unix.Rmdir(d)
		}
		_ = unix.Rmdir(filepath.Dir(base)) // the shared "nsbox" parent, once empty
	}
}

// leaveCgroup moves the calling process back to the root cgroups.
func leaveCgroup() {
	for _, h := range cgroupHierarchies() {
		_ = os.WriteFile(filepath.Join(h, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
}

// cgroupFile is one limit as a cgroup file and its value.
type cgroupFile struct{ file, value string }

// limitFiles lists, for each limit set in l, the files that can carry it
// (backend's limit table): cgroup v2 first, then v1. The first one that
// exists is written.
func limitFiles(l backend.Limits) [][]cgroupFile { return cgroupFiles(l.CgroupFiles()) }

// clearFiles lists, for each limit set in c, the cgroup files (v2, then
// v1) and the values that lift it.
func clearFiles(c backend.Limits) [][]cgroupFile { return cgroupFiles(c.LiftCgroupFiles()) }

// cgroupFiles converts backend's lists of cgroup files.
func cgroupFiles(in [][]backend.CgroupFile) [][]cgroupFile {
	out := make([][]cgroupFile, len(in))
	for i, choices := range in {
		for _, c := range choices {
			out[i] = append(out[i], cgroupFile{c.File, c.Value})
		}
	}
	return out
}

// applyLimits writes l into the machine's cgroups. A limit no hierarchy
// can carry (its controller is missing) is an error.
func applyLimits(name string, l backend.Limits) error {
	hs := cgroupHierarchies()
	for _, choices := range limitFiles(l) {
		done := false
		var lastErr error
		for _, c := range choices {
			for _, h := range hs {
				p := filepath.Join(h, cgroupPath(name), c.file)
				if _, err := os.Stat(p); err != nil {
					continue
				}
				if first, ok := backend.CgroupFileFirst(c.file); ok {
					_ = os.WriteFile(filepath.Join(h, cgroupPath(name), first.File), []byte(first.Value), 0o644)
				}
				if err := os.WriteFile(p, []byte(c.value), 0o644); err != nil {
					lastErr = fmt.Errorf("%s: %w", p, err)
					continue
				}
				done = true
			}
			if done {
				break
			}
		}
		if !done {
			if lastErr != nil {
				return lastErr
			}
			return fmt.Errorf("%w: this host's cgroups have no controller for %s", backend.ErrInvalidOption, choices[0].file)
		}
	}
	return nil
}

// readCgroupValue reads the first of files that exists in the machine's
// cgroups, as a number (cpu.stat: the usage_usec line).
func readCgroupValue(name string, files ...string) (uint64, bool) {
	for _, f := range files {
		for _, h := range cgroupHierarchies() {
			b, err := os.ReadFile(filepath.Join(h, cgroupPath(name), f))
			if err != nil {
				continue
			}
			s := strings.TrimSpace(string(b))
			if f == "cpu.stat" {
				for _, l := range strings.Split(s, "\n") {
					if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
						n, err := strconv.ParseUint(v, 10, 64)
						return n * 1000, err == nil
					}
				}
				continue
			}
			n, err := strconv.ParseUint(s, 10, 64)
			if err == nil {
				return n, true
			}
		}
	}
	return 0, false
}

// cgroupUsage reads the machine's current use.
func cgroupUsage(name string) (backend.Usage, error) {
	var u backend.Usage
	var ok bool
	if u.Memory, ok = readCgroupValue(name, "memory.current", "memory.usage_in_bytes"); !ok {
		return u, errors.New("no memory accounting")
	}
	u.Tasks, _ = readCgroupValue(name, "pids.current")
	ns, _ := readCgroupValue(name, "cpu.stat", "cpuacct.usage")
	u.CPUTime = timeDuration(ns)
	if r, w, ok := cgroupIO(name); ok {
		u.IORead, u.IOWrite = &r, &w
	}
	return u, nil
}

// cgroupIO reads the bytes the machine's processes read from and wrote
// to block devices, from io.stat of the unified hierarchy (its own cgroup
// and those below). A hybrid or legacy host has no count to give: v1's
// blkio.throttle files count only I/O a limit throttled on current
// kernels, and its bfq files only under the bfq scheduler.
func cgroupIO(name string) (read, written uint64, ok bool) {
	for _, h := range cgroupHierarchies() {
		if b, err := os.ReadFile(filepath.Join(h, cgroupPath(name), "io.stat")); err == nil {
			read, written = parseIOStat(string(b))
			return read, written, true
		}
	}
	return 0, 0, false
}

// parseIOStat sums the rbytes and wbytes of every device in an io.stat
// ("8:0 rbytes=4096 wbytes=0 rios=1 ...").
func parseIOStat(s string) (read, written uint64) {
	for _, l := range strings.Split(s, "\n") {
		for _, f := range strings.Fields(l) {
			k, v, _ := strings.Cut(f, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				read += n
			case "wbytes":
				written += n
			}
		}
	}
	return read, written
}

// execCgroup prepares the leaf cgroup "exec" of a machine, where commands
// run by nsbox shell go so that the machine's limits cover them, and
// returns the cgroup.procs files to join.
func execCgroup(name string) []string {
	var out []string
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, cgroupPath(name))); err != nil {
			continue
		}
		dir := filepath.Join(h, cgroupPath(name), "exec")
		if err := os.MkdirAll(dir, 0o755); err == nil {
			out = append(out, filepath.Join(dir, "cgroup.procs"))
		}
	}
	return out
}

// inCgroup wraps argv so that it runs in the cgroups whose cgroup.procs
// files are given: a shell joins them, then execs argv.
func inCgroup(procs []string, path string, args []string) (string, []string) {
	if len(procs) == 0 {
		return path, args
	}
	script := `n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" 2>/dev/null; shift; n=$((n-1)); done; exec "$@"`
	out := append([]string{"-c", script, "sh", strconv.Itoa(len(procs))}, procs...)
	return "/bin/sh", append(append(out, path), args...)
}

// LiftLimits lifts, on running machine name, the limits set in c: the
// cgroup files of each, in every hierarchy that has them.
func (d *Backend) LiftLimits(ctx context.Context, name string, c backend.Limits) error {
	var errs []error
	for _, choices := range clearFiles(c) {
		for _, f := range choices {
			for _, h := range cgroupHierarchies() {
				p := filepath.Join(h, cgroupPath(name), f.file)
				if _, err := os.Stat(p); err != nil {
					continue
				}
				if err := os.WriteFile(p, []byte(f.value), 0o644); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", p, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// CheckLimits refuses limits this host cannot apply (a limit whose cgroup
// controller it lacks: the boot would fail). A cgroup of its own is made
// to try them in, and removed.
func (d *Backend) CheckLimits(l backend.Limits) error {
	trial := fmt.Sprintf(".#limits-%d", os.Getpid())
	if err := makeCgroup(trial); err != nil {
		return err
	}
	defer removeCgroup(trial)
	return applyLimits(trial, l)
}
