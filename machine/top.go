package machine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsbox/nsbox/machine/backend"
	"github.com/nsbox/nsbox/network"
)

// Use is one running machine's resource use at one moment: the figures
// top turns into rates between two of them.
type Use struct {
	Name    string
	Managed bool // an nsbox machine (not one only the backend knows)
	At      time.Time
	// Accounted is false where the backend counts nothing for it.
	Accounted bool
	backend.Usage
	// Net is false for a machine on the host's network, which has no
	// links of its own; RxBytes and TxBytes are what it received and sent
	// through its veths (the host's ends, read the other way round).
	Net              bool
	RxBytes, TxBytes uint64
}

// Sampler takes samples of the running machines' use. It keeps what does
// not change while a machine runs (its host links), so that a sample
// costs a list of the machines, their accounting and one netlink dump.
type Sampler struct {
	m     *Manager
	peers map[int][]network.Interface // by leader; nil: on the host's network
}

// NewSampler returns a Sampler of m's machines.
func (m *Manager) NewSampler() *Sampler {
	return &Sampler{m: m, peers: map[int][]network.Interface{}}
}

// Sample reads the use of every running machine, nsbox's and others the
// backend knows.
func (s *Sampler) Sample(ctx context.Context) ([]Use, error) {
	running, err := s.m.Backend.List(ctx)
	if err != nil {
		return nil, err
	}
	var fresh []int
	alive := map[int]bool{}
	for _, r := range running {
		alive[r.Leader] = true
		if _, ok := s.peers[r.Leader]; !ok && r.Leader > 0 {
			fresh = append(fresh, r.Leader)
		}
	}
	for pid := range s.peers {
		if !alive[pid] {
			delete(s.peers, pid)
		}
	}
	for pid, seen := range network.Inspect(fresh) {
		s.peers[pid] = seen.Peers
	}
	links, _ := network.LinkCounters()
	out := make([]Use, len(running))
	var wg sync.WaitGroup
	for k, r := range running {
		u := &out[k]
		u.Name, u.Managed = r.Name, s.m.exists(r.Name)
		peers, ok := s.peers[r.Leader]
		if ok && peers != nil && links != nil {
			u.Net = true
			for _, p := range peers {
				// The host's end: what it sent, the machine received.
				if c, ok := links[p.Index]; ok && c.Name == p.Name {
					u.RxBytes += c.TxBytes
					u.TxBytes += c.RxBytes
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			use, err := s.m.Backend.Usage(ctx, r.Name)
			u.At = time.Now()
			u.Accounted = err == nil
			u.Usage = use
		}()
	}
	wg.Wait()
	return out, nil
}

// TopRow is a machine's line in top: its use now and its rates since the
// sample before. The JSON shape is part of nsbox's interface
// (docs/json.md).
type TopRow struct {
	Name    string `json:"name"`
	Managed bool   `json:"managed"`
	// Accounted is false where the backend counts nothing: the figures
	// are then 0 and the table shows "-".
	Accounted bool `json:"accounted"`
	// CPU is the share of one CPU used since the last sample, in percent
	// (200 is two CPUs' worth), as top and systemd-cgtop show it.
	CPU    float64 `json:"cpu_percent"`
	Memory uint64  `json:"memory_bytes"`
	Tasks  uint64  `json:"tasks"`
	// IO is false where the host does not count block I/O (cgroup v1):
	// the figures are then 0 and the table shows "-".
	IO      bool    `json:"io"`
	IORead  float64 `json:"io_read_bytes_per_second"`
	IOWrite float64 `json:"io_write_bytes_per_second"`
	// Net is false for a machine on the host's network (no links of its
	// own): the rates are then 0 and the table shows "-".
	Net   bool    `json:"network"`
	NetRx float64 `json:"net_rx_bytes_per_second"`
	NetTx float64 `json:"net_tx_bytes_per_second"`
	// The totals since the machine started.
	CPUTime      time.Duration `json:"cpu_time_ns"`
	IOReadTotal  uint64        `json:"io_read_bytes"`
	IOWriteTotal uint64        `json:"io_write_bytes"`
	NetRxTotal   uint64        `json:"net_rx_bytes"`
	NetTxTotal   uint64        `json:"net_tx_bytes"`
}

// TopRows turns two samples into top's rows: rates for the machines in
// both (a machine new in now, or restarted since, has none yet).
func TopRows(before, now []Use) []TopRow {
	prev := map[string]Use{}
	for _, u := range before {
		prev[u.Name] = u
	}
	rows := make([]TopRow, 0, len(now))
	for _, u := range now {
		r := TopRow{Name: u.Name, Managed: u.Managed, Accounted: u.Accounted, Net: u.Net,
			Memory: u.Memory, Tasks: u.Tasks, CPUTime: u.CPUTime, NetRxTotal: u.RxBytes, NetTxTotal: u.TxBytes}
		ioRead, ioWrite, io := u.io()
		if io {
			r.IO, r.IOReadTotal, r.IOWriteTotal = true, ioRead, ioWrite
		}
		p, ok := prev[u.Name]
		secs := u.At.Sub(p.At).Seconds()
		// Counters only grow while a machine runs: one that went down
		// restarted in between, and its figures start again.
		if !ok || secs <= 0 || u.CPUTime < p.CPUTime || u.RxBytes < p.RxBytes || u.TxBytes < p.TxBytes {
			rows = append(rows, r)
			continue
		}
		rate := func(a, b uint64) float64 { return float64(a-b) / secs }
		if u.Accounted && p.Accounted {
			r.CPU = 100 * (u.CPUTime - p.CPUTime).Seconds() / secs
		}
		if pRead, pWrite, pIO := p.io(); io && pIO && ioRead >= pRead && ioWrite >= pWrite {
			r.IORead, r.IOWrite = rate(ioRead, pRead), rate(ioWrite, pWrite)
		}
		if u.Net && p.Net {
			r.NetRx, r.NetTx = rate(u.RxBytes, p.RxBytes), rate(u.TxBytes, p.TxBytes)
		}
		rows = append(rows, r)
	}
	return rows
}

// io is u's block I/O, and whether the host counts it.
func (u Use) io() (read, written uint64, ok bool) {
	if !u.Accounted || u.IORead == nil || u.IOWrite == nil {
		return 0, 0, false
	}
	return *u.IORead, *u.IOWrite, true
}

// TopColumns are the columns top sorts by, and what each compares.
var TopColumns = map[string]func(a, b TopRow) int{
	"name":   func(a, b TopRow) int { return strings.Compare(a.Name, b.Name) },
	"cpu":    func(a, b TopRow) int { return cmp.Compare(b.CPU, a.CPU) },
	"memory": func(a, b TopRow) int { return cmp.Compare(b.Memory, a.Memory) },
	"tasks":  func(a, b TopRow) int { return cmp.Compare(b.Tasks, a.Tasks) },
	"io":     func(a, b TopRow) int { return cmp.Compare(b.IORead+b.IOWrite, a.IORead+a.IOWrite) },
	"net":    func(a, b TopRow) int { return cmp.Compare(b.NetRx+b.NetTx, a.NetRx+a.NetTx) },
}

// SortTop sorts rows by column (TopColumns), the largest first, ties by
// name.
func SortTop(rows []TopRow, column string) error {
	by, ok := TopColumns[column]
	if !ok {
		names := make([]string, 0, len(TopColumns))
		for n := range TopColumns {
			names = append(names, n)
		}
		slices.Sort(names)
		return fmt.Errorf("%w: --sort %q: use one of %s", ErrInvalidOption, column, strings.Join(names, ", "))
	}
	slices.SortStableFunc(rows, func(a, b TopRow) int {
		if c := by(a, b); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return nil
}
