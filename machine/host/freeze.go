package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Frozen is a cgroup frozen by FreezeCgroupOf: every process in it and
// below it is stopped until Thaw.
type Frozen struct {
	// Dir is the cgroup's directory, and Cgroup its path in its
	// hierarchy (the v1 freezer's when V1).
	Dir    string
	Cgroup string
	V1     bool
	// file and thawed are what Thaw writes: cgroup.freeze and "0" on
	// cgroup v2, freezer.state and "THAWED" on the v1 freezer; file is
	// empty when the cgroup was frozen already and is left so.
	file, thawed string
}

// Thaw lets the cgroup run again.
func (f *Frozen) Thaw() error {
	if f == nil || f.file == "" {
		return nil
	}
	if err := os.WriteFile(f.file, []byte(f.thawed), 0o644); err != nil {
		return fmt.Errorf("thaw %s: %w (thaw it by hand: echo %s > %s)", f.Dir, err, f.thawed, f.file)
	}
	return nil
}

// FreezeMachine freezes the whole machine whose PID 1 is leader: the
// cgroup of its systemd-nspawn (the leader's parent, which the machine
// cannot change), or the one above it when nspawn sits in its
// "supervisor" child, as it does under --keep-unit. That holds the
// machine's payload wherever its root moved its processes within it, and
// the commands nsbox started in it (the direct backend's exec cgroup). The
// leader must be in what is frozen.
func FreezeMachine(ctx context.Context, leader int, timeout time.Duration) (*Frozen, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", leader))
	if err != nil {
		return nil, err
	}
	ppid := 0
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			ppid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if ppid <= 1 {
		return nil, fmt.Errorf("the machine's PID 1 (%d) has no systemd-nspawn above it", leader)
	}
	f, err := FreezeCgroupOf(ctx, ppid, timeout)
	if err != nil {
		return nil, err
	}
	// The leader's cgroup, as this host sees it, is inside what froze.
	theirs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", leader))
	if err == nil {
		v2, v1 := procCgroups(string(theirs))
		p := v2
		if f.V1 {
			p = v1
		}
		if p == "" || !strings.HasPrefix(p+"/", f.Cgroup+"/") {
			err = fmt.Errorf("the machine's PID 1 is in cgroup %q, outside %s", p, f.Cgroup)
		}
	}
	if err != nil {
		f.Thaw()
		return nil, err
	}
	return f, nil
}

// FreezeCgroupOf freezes the cgroup of process pid, a machine's leader,
// and waits up to timeout until the kernel reports it frozen. A leader in
// an "init.scope" (systemd's place for PID 1) stands for the cgroup above
// it, so the whole machine stops. cgroup v2 is used where the process has
// a cgroup of its own there (cgroup.freeze, "frozen 1" in cgroup.events),
// the v1 freezer otherwise. The root cgroup and a cgroup nsbox itself runs
// in are refused.
func FreezeCgroupOf(ctx context.Context, pid int, timeout time.Duration) (*Frozen, error) {
	theirs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	ours, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	v2, freezer := cgroupMounts(string(mounts))
	tv2, tv1 := procCgroups(string(theirs))
	ov2, ov1 := procCgroups(string(ours))
	var why []string
	if v2 != "" && tv2 != "" {
		dir, err := freezeTarget(v2, tv2, ov2)
		if err == nil {
			if _, serr := os.Stat(filepath.Join(dir, "cgroup.freeze")); serr == nil {
				f, err := freezeV2(ctx, dir, timeout)
				if f != nil {
					f.Cgroup = strings.TrimPrefix(dir, strings.TrimSuffix(v2, "/"))
				}
				return f, err
			}
			err = fmt.Errorf("%s has no cgroup.freeze (Linux 5.2 or later has it)", dir)
		}
		why = append(why, err.Error())
	}
	if freezer != "" && tv1 != "" {
		dir, err := freezeTarget(freezer, tv1, ov1)
		if err == nil {
			f, err := freezeV1(ctx, dir, timeout)
			if f != nil {
				f.Cgroup, f.V1 = strings.TrimPrefix(dir, strings.TrimSuffix(freezer, "/")), true
			}
			return f, err
		}
		why = append(why, err.Error())
	}
	if len(why) == 0 {
		why = append(why, "neither cgroup v2 nor the v1 freezer is mounted")
	}
	return nil, fmt.Errorf("cannot freeze the cgroup of process %d: %s", pid, strings.Join(why, "; "))
}

// cgroupMounts finds, in /proc/self/mountinfo text, where the cgroup v2
// hierarchy and the v1 freezer are mounted whole ("" where they are not).
func cgroupMounts(mountinfo string) (v2, freezer string) {
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[3] != "/" || strings.Contains(f[4], `\`) {
			continue
		}
		switch {
		case g[0] == "cgroup2" && v2 == "":
			v2 = f[4]
		case g[0] == "cgroup" && freezer == "" && hasOption(g[2], "freezer"):
			freezer = f[4]
		}
	}
	return v2, freezer
}

func hasOption(opts, name string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// procCgroups reads /proc/PID/cgroup text: the process's cgroup v2 path
// and its v1 freezer path ("" where it has none). A text with more than
// one line for either (a cgroup name with a newline in it, made to
// mislead) gives neither.
func procCgroups(text string) (v2, freezer string) {
	var n2, n1 int
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, n2 = parts[2], n2+1
		case hasOption(parts[1], "freezer"):
			freezer, n1 = parts[2], n1+1
		}
	}
	if n2 != 1 {
		v2 = ""
	}
	if n1 != 1 {
		freezer = ""
	}
	return v2, freezer
}

// freezeTarget is the directory under the hierarchy mounted at root to
// freeze for a process in cgroup p, while nsbox runs in cgroup self.
func freezeTarget(root, p, self string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return "", fmt.Errorf("cgroup %q is no plain path", p)
	}
	if b := path.Base(p); b == "init.scope" || b == "supervisor" {
		p = path.Dir(p)
	}
	if p == "/" {
		return "", errors.New("the process is in the root cgroup, which cannot be frozen")
	}
	if self == p || strings.HasPrefix(self, p+"/") {
		return "", fmt.Errorf("nsbox itself runs in cgroup %s", p)
	}
	return filepath.Join(root, p), nil
}

// freezeV2 freezes the cgroup v2 directory dir.
func freezeV2(ctx context.Context, dir string, timeout time.Duration) (*Frozen, error) {
	file := filepath.Join(dir, "cgroup.freeze")
	if b, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(b)) == "1" {
		// Frozen by someone else: it stays so.
		return &Frozen{Dir: dir}, nil
	}
	f := &Frozen{Dir: dir, file: file, thawed: "0"}
	return f.freeze(ctx, "1", timeout, func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return false, err.Error()
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, _ := strings.Cut(l, " "); k == "frozen" {
				return v == "1", l
			}
		}
		return false, "no frozen line in cgroup.events"
	})
}

// freezeV1 freezes the v1 freezer directory dir.
func freezeV1(ctx context.Context, dir string, timeout time.Duration) (*Frozen, error) {
	file := filepath.Join(dir, "freezer.state")
	state := func() (bool, string) {
		b, err := os.ReadFile(file)
		if err != nil {
			return false, err.Error()
		}
		s := strings.TrimSpace(string(b))
		return s == "FROZEN", s
	}
	if frozen, _ := state(); frozen {
		return &Frozen{Dir: dir}, nil
	}
	f := &Frozen{Dir: dir, file: file, thawed: "THAWED"}
	return f.freeze(ctx, "FROZEN", timeout, state)
}

// freeze writes value and polls frozen until it holds, and returns f;
// on failure the cgroup is thawed again.
func (f *Frozen) freeze(ctx context.Context, value string, timeout time.Duration, frozen func() (bool, string)) (*Frozen, error) {
	if err := os.WriteFile(f.file, []byte(value), 0o644); err != nil {
		return nil, fmt.Errorf("freeze %s: %w", f.Dir, err)
	}
	wait, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	err := Poll(wait, Every(10*time.Millisecond), func() (bool, error) {
		ok, seen := frozen()
		last = seen
		return ok, nil
	})
	if err != nil {
		_ = f.Thaw()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("freeze %s: not frozen within %s (last seen: %s)", f.Dir, timeout, strconv.Quote(last))
	}
	return f, nil
}
