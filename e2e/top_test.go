//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// topRow is what the suite reads of a machine in top's JSON.
type topRow struct {
	Name      string  `json:"name"`
	Managed   bool    `json:"managed"`
	Accounted bool    `json:"accounted"`
	CPU       float64 `json:"cpu_percent"`
	Memory    uint64  `json:"memory_bytes"`
	Tasks     uint64  `json:"tasks"`
	Net       bool    `json:"network"`
	NetRx     uint64  `json:"net_rx_bytes"`
	NetTx     uint64  `json:"net_tx_bytes"`
}

// topScenario checks top with running machines busy (a CPU burner in
// it) and idle, both on veths.
func topScenario(t *testing.T, e *env, busy, idle string) {
	// The burner runs in the machine's own session, ended after.
	e.mustSh(t, "("+e.cmdline("shell", busy, "--", "timeout", "8", "sh", "-c", "'while :; do :; done'")+" >/dev/null 2>&1 &) ; sleep 1")
	defer e.nsb(t, "shell", busy, "--", "pkill", "-f", "while :; do :; done")
	r := e.mustNsb(t, "top", "--once", "--sort", "cpu", "-o", "json", "--interval", "2s")
	var out struct {
		Interval int64    `json:"interval_ms"`
		Machines []topRow `json:"machines"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Interval != 2000 || len(out.Machines) < 2 {
		t.Fatalf("top -o json: %v\n%s", err, r)
	}
	rows := map[string]topRow{}
	for _, m := range out.Machines {
		rows[m.Name] = m
	}
	b, i := rows[busy], rows[idle]
	// top counts what status does: the test host's systemd accounts for
	// nothing (its cgroups are a hybrid host's, seen from a container),
	// and top then says so rather than show zeros as measured.
	accounted := status(t, e, busy).Use != nil
	if e.name == "direct" && !accounted {
		t.Fatalf("the direct backend accounts for %s's use, but status shows none", busy)
	}
	if accounted && (out.Machines[0].Name != busy || b.CPU < 40 || i.CPU > 30) {
		t.Errorf("by cpu, %s (burning one CPU) first at 40%% or more, %s under 30%%: %+v", busy, idle, out.Machines)
	}
	for _, m := range []topRow{b, i} {
		// A machine's veth carried its DHCP lease at least.
		if !m.Managed || m.Accounted != accounted || accounted && (m.Memory < 1<<20 || m.Tasks < 2) || !m.Net || m.NetRx == 0 || m.NetTx == 0 {
			t.Errorf("top's figures for %s (accounted as status says: %v): %+v", m.Name, accounted, m)
		}
	}
	// The table, once; without a terminal and without --once, one table
	// an interval until interrupted.
	table := e.mustNsb(t, "top", "--once", "--sort", "name", "--interval", "200ms").stdout
	lines := strings.Split(table, "\n")
	if len(lines) < 5 || !strings.HasPrefix(lines[2], "NAME") || !strings.Contains(lines[2], "NET RX/TX") || !strings.HasPrefix(lines[3], busy+" ") && !strings.HasPrefix(lines[3], idle+" ") {
		t.Errorf("top --once table:\n%s", table)
	}
	if r := e.run(t, append([]string{"timeout", "-s", "INT", "1.8"}, e.argv("top", "--interval", "500ms")...)...); strings.Count(r.stdout, "nsbox top: ") < 2 {
		t.Errorf("top without a terminal printed no table a refresh:\n%s", r)
	}
	wantFail(t, e.nsb(t, "top", "--sort", "pid"), 2, `--sort "pid"`)
	wantFail(t, e.nsb(t, "top", "--interval", "10ms"), 2, "at least 100ms")
	wantFail(t, e.nsb(t, "top", busy), 2, "takes no arguments")
	wantFail(t, e.nsb(t, "top", "-o", "yaml"), 2, "--output")
}
