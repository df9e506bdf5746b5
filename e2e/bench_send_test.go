//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchmarkSend measures nsbox send between the two hosts of the
// remote lab (startRemoteLab, host B with a base cache of its own), run
// on host A through -H as the send scenario runs it:
//
//  1. a send of a copy machine of about 260 MB (the suite's bookworm base
//     and 12 MiB of random data) against tar | ssh | tar of the same
//     tree, and tar | zstd | ssh | zstd -d | tar, through the same ssh
//     config from host A to host B, the sides taking turns to lead;
//     then the first two again on a link of 100 Mbit/s;
//  2. two overlay machines on one base, each booted once and given
//     10 MiB of random data of its own, sent one after the other to a
//     host B whose cache is empty: the first brings its base version
//     (send's mode base), the second finds it there and sends its upper
//     alone (mode upper); a send of another mode fails the benchmark.
//
// Besides the time (from the client, ssh to host A included on every
// side) it reports bytes: send's own count (-o json "bytes") and those
// that crossed from host A to host B, counted on the server's loopback
// (both sshd listen on the server's address, so A's connection to B is
// local there; the client reaches A through the veth). NSBOX_BENCH=1
// (just bench).
func TestBenchmarkSend(t *testing.T) {
	runs, e := benchSetup(t)
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Fatal("zstd is not installed (just deps)")
	}
	l := startRemoteLab(t, e, labOwnCacheB)
	A, B := l.hostA, l.hostB
	const (
		full  = "bench-send"
		recv  = "bench-send-b"
		ov1   = "bench-send-ov1"
		ov2   = "bench-send-ov2"
		tarTo = "bench-send-tar"
	)
	toB := func(n string) []string { return []string{"root@" + labServerAddr + ":" + n, "--port", "2202"} }
	defer func() {
		for _, n := range []string{recv, ov1 + "-b", ov2 + "-b"} {
			l.run(t, "", nil, "-H", B, "remove", "--force", n)
		}
		for _, n := range []string{full, ov1, ov2} {
			e.nsb(t, "remove", "--force", n)
		}
	}()
	// The same GNU tar options nsbox's own tar gets (image.TarArgs), on
	// both ends, so that both sides carry owners, modes, capabilities
	// and ACLs alike.
	const tarOpts = "--numeric-owner --xattrs --xattrs-include='*' --acls --one-file-system"
	sshB := "ssh -F " + l.sdir + "/ssh_config.srv -p 2202 root@" + labServerAddr
	onA := func(script string) []string {
		return []string{"nsenter", "--net=/run/netns/" + l.client, "--", "ssh", "-F", l.sshConfig, "-p", "2201", "root@" + labServerAddr, script}
	}
	// linkBytes is what crossed the server's loopback: A to B and back.
	linkBytes := func() int64 {
		out, err := l.srv("ip -j -s link show dev lo")
		if err != nil {
			t.Fatalf("the server's loopback counters: %v\n%s", err, out)
		}
		var links []struct {
			Stats struct {
				TX struct{ Bytes int64 } `json:"tx"`
			} `json:"stats64"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			t.Fatalf("the server's loopback counters: %v\n%s", err, out)
		}
		return links[0].Stats.TX.Bytes
	}
	type sent struct {
		took                   time.Duration
		onA                    time.Duration // send's time_ns: nsbox on host A, from its start to B's confirmation
		mode                   string        // send's: tree, base or upper
		bytes, baseBytes, wire int64
		json                   string
	}
	send := func(name, as, mode string) sent {
		t.Helper()
		e.mustSh(t, "sync")
		before := linkBytes()
		start := time.Now()
		r := l.run(t, "", nil, append([]string{"-H", A, "send", "-o", "json", name}, toB(as)...)...)
		took := time.Since(start)
		if r.code != 0 {
			t.Fatalf("send:\n%s", r)
		}
		res := sendJSON(t, r)
		if res.Bytes <= 0 || res.Mode != mode {
			t.Fatalf("send -o json, not a send of mode %s:\n%s", mode, r.stdout)
		}
		var ns struct {
			TimeNs int64 `json:"time_ns"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &ns); err != nil || ns.TimeNs <= 0 {
			t.Fatalf("send -o json, time_ns: %v\n%s", err, r.stdout)
		}
		return sent{took, time.Duration(ns.TimeNs), res.Mode, res.Bytes, res.BaseBytes, linkBytes() - before, strings.TrimSpace(r.stdout)}
	}
	piped := func(script string) sent {
		t.Helper()
		e.mustSh(t, "sync")
		before := linkBytes()
		took := timed(t, onA(script)...)
		return sent{took: took, wire: linkBytes() - before}
	}

	mb := func(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
	times := func(s []sent) []time.Duration {
		var d []time.Duration
		for _, x := range s {
			d = append(d, x.took)
		}
		return d
	}
	onAs := func(s []sent) []time.Duration {
		var d []time.Duration
		for _, x := range s {
			d = append(d, x.onA)
		}
		return d
	}
	// Every run's time, for the spread.
	each := func(what string, s []sent) {
		var w []string
		for _, x := range s {
			w = append(w, x.took.Round(10*time.Millisecond).String())
		}
		fmt.Printf("bench: %s: %s\n", what, strings.Join(w, " "))
	}
	medianOf := func(s []sent, f func(sent) int64) int64 {
		var d []time.Duration
		for _, x := range s {
			d = append(d, time.Duration(f(x)))
		}
		return int64(median(d))
	}
	wire := func(x sent) int64 { return x.wire }
	stream := func(x sent) int64 { return x.bytes }
	bytesRow := func(what string, a, b int64) [3]string {
		return [3]string{what, mb(a) + " vs " + mb(b), fmt.Sprintf("%.3f", float64(a)/float64(b))}
	}

	// What any side pays before a byte of the tree: ssh to host A, and
	// from there to host B.
	var floor []time.Duration
	for i := 0; i < runs; i++ {
		floor = append(floor, timed(t, onA(sshB+" true")...))
	}

	// 2 (run first: the shorter part, and the one that fails if send's
	// modes change). Two overlay machines on one base, sent one after
	// the other to a host B whose cache is empty, in each round.
	for _, n := range []string{ov1, ov2} {
		e.mustNsb(t, "create", n, "--release", "bookworm", "--storage", "overlay")
		e.mustNsb(t, "boot", n, "--network", "none")
		e.mustNsb(t, "stop", n)
		e.mustNsb(t, "shell", n, "--", "sh", "-c", "head -c 10M /dev/urandom > /root/own")
	}
	upper := status(t, e, ov1, "--usage")
	var first, second []sent
	for i := 0; i < runs; i++ {
		a, b := ov1, ov2
		if i%2 == 1 {
			a, b = b, a
		}
		// Names are the host's (both hosts are this one): another there.
		first = append(first, send(a, a+"-b", "base"))
		second = append(second, send(b, b+"-b", "upper"))
		if i == 0 {
			fmt.Printf("bench: send -o json of the first overlay machine: %s\nbench: of the second: %s\n", first[0].json, second[0].json)
			fmt.Printf("bench: host B's cache after both:\n%s", e.mustSh(t, "ls -l "+l.cacheB+"/bases 2>&1 || true"))
		}
		for _, n := range []string{a, b} {
			l.must(t, "-H", B, "remove", n+"-b")
		}
		e.mustSh(t, "rm -rf "+l.cacheB+"/* && sync")
	}
	rows2 := [][3]string{
		{"send of the first overlay machine on a base, host B's cache empty (mode base: the base version's tree, then the upper)",
			fmt.Sprintf("%s; %s on the link, %s in send's streams (%s of them the base's)", median(times(first)).Round(time.Millisecond),
				mb(medianOf(first, wire)), mb(medianOf(first, stream)), mb(medianOf(first, func(x sent) int64 { return x.baseBytes }))), ""},
		{"send of the second on the same base, next (mode upper: the upper alone)",
			fmt.Sprintf("%s; %s on the link, %s in send's stream", median(times(second)).Round(time.Millisecond), mb(medianOf(second, wire)), mb(medianOf(second, stream))), ""},
		{"of which nsbox on host A (send's time_ns), first and second", median(onAs(first)).Round(time.Millisecond).String() + ", " + median(onAs(second)).Round(time.Millisecond).String(), ""},
		ratioRow("the second send vs the first: time", median(times(second)), median(times(first)), "%.3f", ""),
		bytesRow("the second send vs the first: bytes on the link", medianOf(second, wire), medianOf(first, wire)),
		bytesRow("the second send vs the first: send's streams", medianOf(second, stream), medianOf(first, stream)),
	}

	// 1. A copy machine of about 260 MB.
	e.mustNsb(t, "create", full, "--release", "bookworm", "--storage", "copy")
	tree := e.rootDir + "/.nsbox/" + full
	e.mustSh(t, "head -c 12M /dev/urandom > "+tree+"/root/random")
	size := strings.Fields(e.mustSh(t, "du -sb --apparent-size "+tree+" && du -sk "+tree+" && find "+tree+" | wc -l"))
	// Beside host B's root directory, not in it (a tree with os-release
	// there would be a machine of an earlier nsbox to nsbox).
	dir := l.sdir + "/" + tarTo
	// What the piped sides made is the tree: checked after each, untimed
	// (sh on host A has no pipefail).
	check := func() {
		t.Helper()
		e.mustSh(t, "cmp "+tree+"/root/random "+dir+"/root/random && test \"$(find "+dir+" | wc -l)\" = \"$(find "+tree+" | wc -l)\"")
	}
	tarSide := "set -e; mkdir " + dir + "; tar " + tarOpts + " -C " + tree + " -c . | " + sshB + " \"tar " + tarOpts + " --same-permissions --same-owner -C " + dir + " -x\""
	zstdSide := "set -e; mkdir " + dir + "; tar " + tarOpts + " -C " + tree + " -c . | zstd -q -3 | " + sshB + " \"zstd -q -d | tar " + tarOpts + " --same-permissions --same-owner -C " + dir + " -x\""
	var ns, ts, zs []sent
	for i := 0; i < runs; i++ {
		sides := []func(){
			func() {
				ns = append(ns, send(full, recv, "tree"))
				l.must(t, "-H", B, "remove", recv)
			},
			func() {
				ts = append(ts, piped(tarSide))
				check()
				e.mustSh(t, "rm -rf "+dir)
			},
			func() {
				zs = append(zs, piped(zstdSide))
				check()
				e.mustSh(t, "rm -rf "+dir)
			},
		}
		for k := range sides {
			sides[(i+k)%len(sides)]()
		}
	}
	fmt.Printf("bench: send -o json of the copy machine: %s\n", ns[0].json)
	rows := [][3]string{
		ratioRow("send of a copy machine vs tar | ssh | tar of its tree", median(times(ns)), median(times(ts)), "%.2f", ""),
		ratioRow("send of a copy machine vs tar | zstd -3 | ssh | zstd -d | tar of its tree", median(times(ns)), median(times(zs)), "%.2f", ""),
		bytesRow("bytes from host A to host B (TCP, both ways): send vs tar | ssh | tar", medianOf(ns, wire), medianOf(ts, wire)),
		bytesRow("the same, send vs tar | zstd -3 | ssh | zstd -d | tar", medianOf(ns, wire), medianOf(zs, wire)),
		{"send's stream (-o json bytes); send's time on host A (time_ns)", mb(medianOf(ns, stream)) + "; " + median(onAs(ns)).Round(time.Millisecond).String(), ""},
	}

	// 1b. The same on a link of 100 Mbit/s (a token bucket on the
	// server's loopback, which carries A's connection to B), where the
	// bytes on the wire tell: nsbox against tar | ssh | tar.
	if out, err := l.srv("tc qdisc add dev lo root tbf rate 100mbit burst 256kb latency 50ms"); err != nil {
		t.Fatalf("a 100 Mbit/s link: %v\n%s", err, out)
	}
	slow := (runs + 1) / 2
	var nsSlow, tsSlow []sent
	for i := 0; i < slow; i++ {
		sides := []func(){
			func() {
				nsSlow = append(nsSlow, send(full, recv, "tree"))
				l.must(t, "-H", B, "remove", recv)
			},
			func() {
				tsSlow = append(tsSlow, piped(tarSide))
				check()
				e.mustSh(t, "rm -rf "+dir)
			},
		}
		for k := range sides {
			sides[(i+k)%len(sides)]()
		}
	}
	if out, err := l.srv("tc qdisc del dev lo root"); err != nil {
		t.Fatalf("the 100 Mbit/s link back to loopback's own: %v\n%s", err, out)
	}
	rows = append(rows, ratioRow(fmt.Sprintf("the same on a link of 100 Mbit/s (medians of %d): send vs tar | ssh | tar", slow), median(times(nsSlow)), median(times(tsSlow)), "%.2f", ""))
	e.mustNsb(t, "remove", full)
	rows = append(rows, rows2...)
	rows = append(rows, [3]string{"ssh to host A, and from there to host B: true (what every side pays first)", median(floor).Round(time.Millisecond).String(), ""})
	each("send of the copy machine", ns)
	each("tar | ssh | tar", ts)
	each("tar | zstd | ssh | zstd -d | tar", zs)
	each("send, 100 Mbit/s", nsSlow)
	each("tar | ssh | tar, 100 Mbit/s", tsSlow)
	each("first overlay send", first)
	each("second overlay send", second)

	apparent, _ := strconv.ParseInt(size[0], 10, 64)
	onDisk, _ := strconv.ParseInt(size[2], 10, 64)
	printRows(t, e, fmt.Sprintf("medians of %d runs; the copy machine: %s of files (%s on disk, %s names); an overlay machine's own: %s, its base's %s",
		runs, mb(apparent), mb(onDisk<<10), size[4], mb(upper.Usage), mb(upper.BaseUsage)), rows)
}
