package machine

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// cgroupHierarchies lists the hierarchies that systemd in a container
// needs a cgroup of its own in: the unified one, and on a hybrid host the
// name=systemd one too.
func cgroupHierarchies() []string {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{"/sys/fs/cgroup"}
	}
	var out []string
	for _, h := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"} {
		if unix.Statfs(h, &st) == nil && (st.Type == unix.CGROUP2_SUPER_MAGIC || st.Type == unix.CGROUP_SUPER_MAGIC) {
			out = append(out, h)
		}
	}
	return out
}

// cgroupPath is the direct backend's cgroup of a machine, relative to each
// hierarchy. Where no systemd runs, nothing else owns this part of the tree.
func cgroupPath(name string) string { return filepath.Join("nsbox", name) }

// joinCgroup moves the calling process into a fresh cgroup for machine
// name. nspawn hands that cgroup to the container (chowned to its root
// under --private-users), which it cannot do with the root cgroup.
func joinCgroup(name string) error {
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, cgroupPath(name))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
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
