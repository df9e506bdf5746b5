// Package names keeps machine names resolvable: a record for each running
// machine (its name, its address, its PID 1), and from them a block of
// lines in the host's /etc/hosts (where no machined answers for them) and
// in each running machine's own /etc/hosts, so that machines reach each
// other by name. nsbox writes only the lines between its markers; every
// other line, and the file's owner and mode, stay as they were.
package names

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/nsbox/nsbox/machine/host"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Record is one running machine's name and address.
type Record struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Leader is the machine's PID 1, and Start its start time (clock
	// ticks after boot, /proc/PID/stat): the record holds while that
	// process lives.
	Leader int    `json:"leader"`
	Start  uint64 `json:"start"`
}

// Table is the records and the files made from them.
type Table struct {
	// Dir holds a record per machine (RunDir/names).
	Dir string
	// HostsFile is the host's hosts file (/etc/hosts), or "" where the
	// host resolves machine names itself (machined and nss-mymachines).
	HostsFile string
}

// HostsFile is the host's hosts file.
var HostsFile = "/etc/hosts"

// Begin and End mark nsbox's block in a hosts file.
const (
	Begin = "# BEGIN nsbox machines: nsbox rewrites these lines as machines start and stop"
	End   = "# END nsbox machines"
)

// ProcStart is the start time of process pid (field 22 of its stat), 0
// when it is gone.
func ProcStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command may hold spaces and ")": the fields follow the last ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// alive reports whether r's machine still runs: its PID 1 is the same
// process.
func (r Record) alive() bool { return r.Leader > 0 && r.Start != 0 && ProcStart(r.Leader) == r.Start }

// Publish records r (replacing the machine's earlier record) and
// rewrites the files.
func (t Table) Publish(r Record) error {
	if _, err := netip.ParseAddr(r.Address); err != nil || !validName(r.Name) {
		return fmt.Errorf("name record %q %q: not a name and an address", r.Name, r.Address)
	}
	if err := os.MkdirAll(t.Dir, 0o755); err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	if err := host.WriteFileAtomic(filepath.Join(t.Dir, r.Name+".json"), b, 0o644); err != nil {
		return err
	}
	return t.Refresh()
}

// Withdraw drops machine name's record and rewrites the files.
func (t Table) Withdraw(name string) error {
	if !validName(name) {
		return nil
	}
	if err := os.Remove(filepath.Join(t.Dir, name+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return t.Refresh()
}

// validName reports whether s can be a line's name: a host name's
// letters (machine names are checked where they are made; this is the
// last guard before a file).
func validName(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// live reads the records of machines still running, sorted by name; a
// record of one that is gone is removed.
func (t Table) live() []Record {
	ents, _ := os.ReadDir(t.Dir)
	var out []Record
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validName(name) {
			continue
		}
		p := filepath.Join(t.Dir, e.Name())
		b, err := os.ReadFile(p)
		var r Record
		if err != nil || json.Unmarshal(b, &r) != nil || r.Name != name {
			continue
		}
		if _, err := netip.ParseAddr(r.Address); err != nil {
			continue
		}
		if !r.alive() {
			_ = os.Remove(p)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// Refresh rewrites nsbox's block in the host's hosts file (all running
// machines) and in each running machine's (the others), under a lock so
// that two refreshes do not interleave.
func (t Table) Refresh() error {
	if err := os.MkdirAll(t.Dir, 0o755); err != nil {
		return err
	}
	lock, err := host.LockFile(context.Background(), filepath.Join(t.Dir, ".lck"), true, true)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	recs := t.live()
	var errs []error
	if t.HostsFile != "" {
		errs = append(errs, rewriteHostFile(t.HostsFile, recs))
	}
	for _, r := range recs {
		if err := rewriteMachineFile(r, recs); err != nil {
			logrus.Debugf("the hosts file of %s: %v", r.Name, err)
		}
	}
	return errors.Join(errs...)
}

// Block replaces nsbox's block in hosts text with lines for recs (but
// the one named skip), or removes it when there are none. Everything
// outside the markers is kept byte for byte; a new block goes at the end.
func Block(text []byte, recs []Record, skip string) []byte {
	var lines []string
	for _, r := range recs {
		if r.Name != skip {
			lines = append(lines, r.Address+"\t"+r.Name)
		}
	}
	var block string
	if len(lines) > 0 {
		block = Begin + "\n" + strings.Join(lines, "\n") + "\n" + End + "\n"
	}
	s := string(text)
	if i := strings.Index(s, Begin+"\n"); i >= 0 && (i == 0 || s[i-1] == '\n') {
		if j := strings.Index(s[i:], "\n"+End+"\n"); j >= 0 {
			return []byte(s[:i] + block + s[i+j+len("\n"+End+"\n"):])
		}
		if strings.HasSuffix(s[i:], "\n"+End) {
			return []byte(s[:i] + block)
		}
	}
	if block == "" {
		return text
	}
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return []byte(s + block)
}

// maxHosts bounds what is read of a hosts file.
const maxHosts = 1 << 20

// rewriteHostFile puts recs in the host's hosts file, atomically (a new
// file beside it, renamed over it), with its owner and mode.
func rewriteHostFile(path string, recs []Record) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	var old []byte
	mode, uid, gid := os.FileMode(0o644), 0, 0
	switch {
	case err == nil:
		defer f.Close()
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > maxHosts {
			return fmt.Errorf("%s is not a regular file nsbox rewrites", path)
		}
		mode, uid, gid = os.FileMode(st.Mode&0o7777), int(st.Uid), int(st.Gid)
		if old, err = readAll(f); err != nil {
			return err
		}
	case errors.Is(err, os.ErrNotExist):
		if len(recs) == 0 {
			return nil
		}
	default:
		return err
	}
	text := Block(old, recs, "")
	if bytes.Equal(text, old) {
		return nil
	}
	return host.WriteFileAtomicOwned(path, text, mode, uid, gid)
}

// rewriteMachineFile puts the other machines of recs in r's machine's
// /etc/hosts, reached through its PID 1's root, every step inside it: a
// link the machine made there is not followed (its file is left alone).
func rewriteMachineFile(r Record, recs []Record) error {
	root, err := unix.Open("/proc/"+strconv.Itoa(r.Leader)+"/root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if !r.alive() {
		return errors.New("stopped meanwhile")
	}
	etc, err := unix.Openat2(root, "etc", &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return err
	}
	defer unix.Close(etc)
	var old []byte
	var st unix.Stat_t
	fd, err := unix.Openat(etc, "hosts", unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		f := os.NewFile(uintptr(fd), "hosts")
		defer f.Close()
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > maxHosts {
			return errors.New("its /etc/hosts is not a regular file nsbox rewrites")
		}
		if old, err = readAll(f); err != nil {
			return err
		}
	case errors.Is(err, unix.ENOENT):
		// None yet: made as its /etc is owned.
		if err := unix.Fstat(etc, &st); err != nil {
			return err
		}
		st.Mode = 0o644
	default:
		return err
	}
	text := Block(old, recs, r.Name)
	if bytes.Equal(text, old) {
		return nil
	}
	const tmp = ".#hosts.nsbox"
	_ = unix.Unlinkat(etc, tmp, 0)
	nfd, err := unix.Openat(etc, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	nf := os.NewFile(uintptr(nfd), tmp)
	err = func() error {
		defer nf.Close()
		if err := unix.Fchown(nfd, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if err := unix.Fchmod(nfd, st.Mode&0o7777); err != nil {
			return err
		}
		if _, err := nf.Write(text); err != nil {
			return err
		}
		return nf.Sync()
	}()
	if err == nil {
		err = unix.Renameat(etc, tmp, etc, "hosts")
	}
	if err != nil {
		_ = unix.Unlinkat(etc, tmp, 0)
	}
	return err
}

// readAll reads f to its end, at most maxHosts bytes.
func readAll(f *os.File) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, maxHosts+1))
	if err == nil && len(b) > maxHosts {
		err = errors.New("larger than a hosts file")
	}
	return b, err
}
