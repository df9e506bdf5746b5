//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestBenchmarkStorage measures overlay machines, throwaway runs and
// snapshots side by side with what they replace, in one run on this
// host's disk (ext4 here): NSBOX_BENCH=1 (just bench).
func TestBenchmarkStorage(t *testing.T) {
	runs, e := benchSetup(t)
	var rows [][3]string
	ratio := func(what string, a, b time.Duration, target string) {
		rows = append(rows, ratioRow(what, a, b, "%.3f", target))
	}
	base := e.cacheDir + "/bases/" + suiteBaseKey + "/root"
	e.mustNsb(t, "create", "bench-copy", "--release", "bookworm", "--storage", "copy")
	copyTree := e.rootDir + "/.nsbox/bench-copy"

	// 1. A warm create of an overlay machine vs cp -a of the base, each
	// after a sync so that neither pays the other's writeback.
	var ov, cp []time.Duration
	for i := 0; i < runs; i++ {
		e.mustSh(t, "sync")
		ov = append(ov, timed(t, e.argv("-q", "create", "bench-ov", "--release", "bookworm", "--storage", "overlay")...))
		e.mustNsb(t, "remove", "bench-ov")
		e.mustSh(t, "sync")
		cp = append(cp, timed(t, "cp", "-a", base, e.rootDir+"/bench-cp"))
		e.mustSh(t, "rm -rf "+e.rootDir+"/bench-cp")
	}
	ratio("overlay create vs cp -a of the base", median(ov), median(cp), " (target <= 0.05)")

	// 2. A throwaway run of true vs nspawn's own throwaway runs: an
	// --ephemeral copy of a copy machine (a full copy on ext4), and
	// --volatile=overlay over the base, without and with the user
	// namespace nsbox gives every run.
	nspawn := "systemd-nspawn --quiet --register=no --keep-unit --settings=no --pipe "
	var run, eph, vol, volU []time.Duration
	for i := 0; i < runs; i++ {
		run = append(run, timed(t, e.argv("-q", "run", "--release", "bookworm", "--", "true")...))
		eph = append(eph, timed(t, "sh", "-c", nspawn+"--ephemeral --directory="+copyTree+" true"))
		vol = append(vol, timed(t, "sh", "-c", nspawn+"--volatile=overlay --directory="+base+" true"))
		volU = append(volU, timed(t, "sh", "-c", nspawn+"--volatile=overlay --private-users=pick --private-users-ownership=auto --directory="+base+" true"))
	}
	ratio("run -- true vs nspawn --ephemeral of a copy machine", median(run), median(eph), " (target <= 0.1)")
	ratio("run -- true vs nspawn --volatile=overlay over the base", median(run), median(vol), " (target <= 1.3)")
	ratio("run -- true vs nspawn --volatile=overlay over the base, user namespace as nsbox's", median(run), median(volU), "")

	// 3. A throwaway run that boots: to running, plus the command, vs a
	// bare nspawn boot to running of a copy machine.
	var rb, bare []time.Duration
	for i := 0; i < (runs+1)/2; i++ {
		rb = append(rb, timed(t, e.argv("-q", "run", "--release", "bookworm", "--boot", "--", "true")...))
		bare = append(bare, bareBoot(t, copyTree))
	}
	ratio("run --boot -- true vs bare nspawn boot to running", median(rb), median(bare), "")

	// 4. The upper after a first boot, against the base.
	e.mustNsb(t, "create", "bench-ov", "--release", "bookworm", "--storage", "overlay")
	e.mustNsb(t, "boot", "bench-ov")
	e.mustNsb(t, "stop", "bench-ov")
	i := status(t, e, "bench-ov", "--usage")
	rows = append(rows, [3]string{"overlay machine's own disk use after its first boot vs its base",
		fmt.Sprintf("%.1f MB vs %.0f MB", float64(i.Usage)/(1<<20), float64(i.BaseUsage)/(1<<20)),
		fmt.Sprintf("%.3f (target < 0.1)", float64(i.Usage)/float64(i.BaseUsage))})

	// 5. Snapshot and restore of machines that changed 10 MB, overlay
	// and copy.
	for _, n := range []string{"bench-ov", "bench-copy"} {
		e.mustNsb(t, "shell", n, "--", "sh", "-c", "head -c 10M /dev/urandom > /root/10m")
		var snap, restore []time.Duration
		for k := 0; k < runs; k++ {
			s := fmt.Sprintf("s%d", k)
			snap = append(snap, timed(t, e.argv("-q", "snapshot", n, s)...))
			restore = append(restore, timed(t, e.argv("-q", "snapshot", "restore", n, s)...))
			e.mustNsb(t, "snapshot", "remove", n, s)
		}
		rows = append(rows, [3]string{"snapshot, then restore, of a " + map[string]string{"bench-ov": "overlay", "bench-copy": "copy"}[n] + " machine that changed 10 MB",
			fmt.Sprintf("%s, %s", median(snap).Round(time.Millisecond), median(restore).Round(time.Millisecond)), ""})
	}
	// 6. nsbox cp of the base's tree (260 MB) into a stopped machine vs
	// cp -a of it beside, on the same file system, each after a sync.
	var ncp, acp []time.Duration
	for i := 0; i < runs; i++ {
		e.mustSh(t, "sync")
		ncp = append(ncp, timed(t, e.argv("-q", "cp", base, "bench-copy:/root/tree")...))
		e.mustSh(t, "rm -rf "+copyTree+"/root/tree && sync")
		acp = append(acp, timed(t, "cp", "-a", base, e.rootDir+"/bench-cp"))
		e.mustSh(t, "rm -rf "+e.rootDir+"/bench-cp")
	}
	ratio("cp of the base's tree into a machine vs cp -a of it", median(ncp), median(acp), " (target <= 1.2)")

	e.mustNsb(t, "remove", "bench-ov")
	e.mustNsb(t, "remove", "bench-copy")
	printRows(t, e, fmt.Sprintf("storage, medians of %d runs (%d for boots)", runs, (runs+1)/2), rows)
}
