//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBenchmark measures nsbox side by side with the tools people use
// today, in one run on one machine, and prints ratios. It runs only with
// NSBOX_BENCH=1 (just bench): it takes minutes and needs the network.
func TestBenchmark(t *testing.T) {
	runs, e := benchSetup(t)
	var rows [][3]string
	ratio := func(what string, a, b time.Duration, target string) {
		rows = append(rows, ratioRow(what, a, b, "%.2f", target))
	}

	// The base is the suite's own (suiteBase): this create copies it.
	e.mustNsb(t, "create", "bench-seed", "--release", "bookworm", "--storage", "copy")
	base := e.cacheDir + "/bases/" + suiteBaseKey + "/root"

	// 1. Warm create (cache hit) vs cp -a of the same base.
	var warm, cp []time.Duration
	for i := 0; i < runs; i++ {
		e.mustSh(t, "sync")
		warm = append(warm, timed(t, e.argv("-q", "create", "bench-w", "--release", "bookworm", "--storage", "copy")...))
		e.mustNsb(t, "remove", "bench-w")
		e.mustSh(t, "sync")
		cp = append(cp, timed(t, "cp", "-a", base, e.rootDir+"/bench-cp"))
		e.mustSh(t, "rm -rf "+e.rootDir+"/bench-cp")
	}
	ratio("warm create of a copy vs cp -a of the base", median(warm), median(cp), " (target <= 1.2)")

	// 2. nsbox boot until running vs a bare systemd-nspawn --boot until
	// its systemd says running (both without machined, here).
	var nb, bare []time.Duration
	for i := 0; i < runs; i++ {
		nb = append(nb, timed(t, e.argv("-q", "boot", "bench-seed")...))
		e.mustNsb(t, "stop", "bench-seed")
		bare = append(bare, bareBoot(t, e.rootDir+"/bench-seed"))
	}
	ratio("boot to running: nsbox vs bare systemd-nspawn", median(nb), median(bare), " (target <= 1.15)")

	// 3. list with 20 machines: nsbox's time per machine.
	for i := 0; i < 19; i++ {
		e.mustNsb(t, "clone", "bench-seed", fmt.Sprintf("bench-%02d", i))
	}
	var ls, lu []time.Duration
	for i := 0; i < runs; i++ {
		ls = append(ls, timed(t, e.argv("list")...))
		lu = append(lu, timed(t, e.argv("list", "--usage")...))
	}
	rows = append(rows, [3]string{"nsbox list, 20 stopped machines", median(ls).Round(time.Millisecond).String(),
		(median(ls) / 20).Round(100*time.Microsecond).String() + " a machine"})
	rows = append(rows, [3]string{"nsbox list --usage (a walk of every tree), 20 stopped machines", median(lu).Round(time.Millisecond).String(),
		(median(lu) / 20).Round(100*time.Microsecond).String() + " a machine"})
	for i := 0; i < 19; i++ {
		e.mustNsb(t, "remove", fmt.Sprintf("bench-%02d", i))
	}

	// 4. Peak memory of nsbox itself during a create.
	rss := peakRSS(t, e.argv("-q", "create", "bench-m", "--release", "bookworm")...)
	e.mustNsb(t, "remove", "bench-m")
	rows = append(rows, [3]string{"peak RSS of nsbox during create", fmt.Sprintf("%.1f MB", float64(rss)/1024), "(target < 30 MB)"})

	// 5. Cold create vs plain debootstrap with the same packages, and
	// mmdebstrap. Network-bound: fewer runs.
	cold := (runs + 1) / 2
	var nc, db, mm []time.Duration
	_, haveMM := exec.LookPath("mmdebstrap")
	type side struct {
		times *[]time.Duration
		run   func() time.Duration
	}
	sides := []side{
		{&nc, func() time.Duration {
			d := timed(t, e.argv("-q", "create", "bench-c", "--release", "bookworm", "--no-cache", "--bootstrapper", "debootstrap")...)
			e.mustNsb(t, "remove", "bench-c")
			return d
		}},
		{&db, func() time.Duration {
			// debootstrap with the arguments nsbox gives it.
			d := timed(t, "debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,iproute2", "--components=main",
				"--keyring=/usr/share/keyrings/debian-archive-keyring.gpg", "--cache-dir="+e.cacheDir+"/debs/debian-bookworm", "bookworm", e.rootDir+"/bench-db")
			e.mustSh(t, "rm -rf --one-file-system "+e.rootDir+"/bench-db")
			return d
		}},
	}
	if haveMM == nil {
		sides = append(sides, side{&mm, func() time.Duration {
			d := timed(t, "mmdebstrap", "--mode=root", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,iproute2", "bookworm", e.rootDir+"/bench-mm")
			e.mustSh(t, "rm -rf --one-file-system "+e.rootDir+"/bench-mm")
			return d
		}})
	}
	for i := 0; i < cold; i++ {
		// Each side leads in turn, after a sync, so neither pays for the
		// other's writeback or profits from its warm page cache.
		for k := range sides {
			s := sides[(i+k)%len(sides)]
			e.mustSh(t, "sync")
			*s.times = append(*s.times, s.run())
		}
	}
	ratio("cold create (debootstrap) vs plain debootstrap", median(nc), median(db), " (target <= 1.05)")
	if len(mm) > 0 {
		ratio("plain mmdebstrap vs plain debootstrap", median(mm), median(db), "")
	}
	e.mustNsb(t, "remove", "bench-seed")

	printRows(t, e, fmt.Sprintf("medians of %d runs (%d for cold creates)", runs, cold), rows)
}

// benchSetup skips a benchmark unless NSBOX_BENCH=1 (just bench), and
// gives its number of runs (NSBOX_BENCH_RUNS, default 5) and the direct
// backend on this host.
func benchSetup(t *testing.T) (int, *env) {
	if os.Getenv("NSBOX_BENCH") != "1" {
		t.Skip("set NSBOX_BENCH=1 (just bench)")
	}
	runs := 5
	if n, err := strconv.Atoi(os.Getenv("NSBOX_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	return runs, hostEnv(t, "direct")
}

// ratioRow is a row of a against b: both medians, and a/b printed with
// format, then the target.
func ratioRow(what string, a, b time.Duration, format, target string) [3]string {
	return [3]string{what, fmt.Sprintf("%s vs %s", a.Round(time.Millisecond), b.Round(time.Millisecond)),
		fmt.Sprintf(format, float64(a)/float64(b)) + target}
}

// printRows prints a benchmark's table, headed by the machine it ran on.
func printRows(t *testing.T, e *env, how string, rows [][3]string) {
	host, _ := os.Hostname()
	cpu := strings.TrimSpace(e.mustSh(t, "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"))
	fmt.Printf("\nnsbox benchmark, %s, %s, %d cores (%s), %s, %s\n\n",
		time.Now().Format("2006-01-02"), host, runtime.NumCPU(), cpu, strings.TrimSpace(e.mustSh(t, "uname -r")), how)
	fmt.Println("| what | times | ratio |\n| --- | --- | --- |")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s |\n", r[0], r[1], r[2])
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration{}, d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func timed(t *testing.T, argv ...string) time.Duration {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return time.Since(start)
}

// bareBoot boots root with plain systemd-nspawn (in a cgroup of its own, as
// it needs on a host without systemd) and times it until the container's
// systemd reports running; then powers it off.
func bareBoot(t *testing.T, root string) time.Duration {
	t.Helper()
	script := "for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do mkdir -p $h/bench && echo $$ > $h/bench/cgroup.procs; done; " +
		"exec systemd-nspawn --quiet --boot --directory=" + root + " --machine=bench-bare --keep-unit --register=no --settings=no " +
		"--console=read-only --private-users=pick --private-users-ownership=auto --network-veth"
	start := time.Now()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		leader := containerChild(cmd.Process.Pid)
		if leader == 0 {
			continue
		}
		out, _ := exec.Command("nsenter", "-t", fmt.Sprint(leader), "-a", "systemctl", "is-system-running").Output()
		if s := strings.TrimSpace(string(out)); s == "running" || s == "degraded" {
			took = time.Since(start)
			syscall.Kill(leader, syscall.Signal(34+4))
			break
		}
	}
	cmd.Wait()
	exec.Command("sh", "-c", "rmdir /sys/fs/cgroup/*/bench/* /sys/fs/cgroup/*/bench 2>/dev/null; true").Run()
	if took == 0 {
		t.Fatal("bare nspawn did not reach running")
	}
	return took
}

// peakRSS runs argv and returns the highest VmHWM (KiB) its own process
// reached, sampled from /proc while it runs.
func peakRSS(t *testing.T, argv ...string) int {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	peak := 0
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
				if n, _ := strconv.Atoi(f[1]); n > peak {
					peak = n
				}
			}
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", strings.Join(argv, " "), err)
			}
			return peak
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// raiseInotify makes room for 20 running machines: each machine's systemd
// holds inotify instances, all counted against root, and 20 machines need
// more than the kernel's default of 128. The limit is put back after.
func raiseInotify(t *testing.T) {
	const limit = "/proc/sys/fs/inotify/max_user_instances"
	b, err := os.ReadFile(limit)
	if err != nil {
		return
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n < 1024 {
		if err := os.WriteFile(limit, []byte("1024"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(limit, b, 0o644) })
		fmt.Printf("bench: fs.inotify.max_user_instances is 1024 for the run (was %d)\n", n)
	}
}
